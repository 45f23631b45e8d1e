//! The wire protocol: versioned, postcard-encoded [`Message`]s in
//! length-delimited frames. docs/gensync-wire.md describes it for
//! implementers; this module is the one place that encodes and decodes it.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one byte of
//! protocol version, then the postcard encoding of a [`Message`]. Frames are
//! capped at [`MAX_FRAME_LEN`]; every decoding failure is a typed
//! [`WireError`] that ends the connection and nothing else.

use bytes::{BufMut, Bytes, BytesMut};
use flotilla_core_types::DeviceId;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::{GenVector, LogRecord};

/// The protocol version this crate speaks, the first byte of every frame.
pub const PROTOCOL_VERSION: u8 = 2;

/// The largest frame accepted or sent: room for the largest record
/// ([`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) plus its key and bookkeeping),
/// small enough that a peer cannot make us buffer much on a lie.
pub const MAX_FRAME_LEN: usize = 2 * 1024 * 1024;

/// One message between two replicas. A sync round is: both sides send
/// [`Message::Hello`]; the initiator sends [`Message::GetDeltas`]; the
/// responder streams [`Message::Record`]s, oldest first, then
/// [`Message::Known`]s, and ends with [`Message::Done`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Who is speaking.
    Hello {
        /// The sender's device.
        device: DeviceId,
    },
    /// The initiator's vector: send me what it does not cover.
    GetDeltas {
        /// The initiator's generation vector.
        vector: GenVector,
    },
    /// One missing record.
    Record(LogRecord),
    /// The end of the round: the responder's vector, which the initiator
    /// holds once it has replayed every record sent.
    Done {
        /// The responder's generation vector.
        vector: GenVector,
    },
    /// The sender gives up on the round, and says why.
    Abort {
        /// Why.
        reason: String,
    },
    /// Sent by a responder before its records when it has collected
    /// generations the initiator lacks: those generations come only as the
    /// records still in its log (every current value among them), parents
    /// may be missing, and the initiator holds them as collected too.
    Collected {
        /// The generations the responder has collected.
        vector: GenVector,
    },
    /// Sent by a responder after its records: what it knows of other
    /// devices' vectors, so that garbage collection can count devices the
    /// initiator never met. At most [`MAX_KNOWN_PER_MESSAGE`] entries;
    /// there may be several.
    Known {
        /// The devices, each with the vector last heard of it.
        peers: Vec<KnownPeer>,
    },
}

/// The most [`KnownPeer`]s one [`Message::Known`] carries.
pub const MAX_KNOWN_PER_MESSAGE: usize = 64;

/// What a replica knows of another device, relayed to a peer: the
/// device's vector as last heard (directly or second-hand) and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// The device.
    pub device: DeviceId,
    /// The newest vector heard of it: it held at least these generations.
    pub vector: GenVector,
    /// How long before this message it was last heard of, in
    /// milliseconds: an age rather than a time, so that the two replicas'
    /// clocks need not agree.
    pub heard_ms_ago: u64,
}

impl Message {
    /// The message's type, as a short name ("hello", "get-deltas",
    /// "record", "done", "abort", "collected", "known"): what an error says came
    /// out of turn, without the message's contents (a record's value may
    /// be a mebibyte).
    ///
    /// ```
    /// use flotilla_gensync::wire::Message;
    ///
    /// let abort = Message::Abort { reason: String::from("busy") };
    /// assert_eq!(abort.kind(), "abort");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::GetDeltas { .. } => "get-deltas",
            Message::Record(_) => "record",
            Message::Done { .. } => "done",
            Message::Abort { .. } => "abort",
            Message::Collected { .. } => "collected",
            Message::Known { .. } => "known",
        }
    }
}

/// What can be wrong with what a peer sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame is longer than [`MAX_FRAME_LEN`].
    #[error("frame longer than {MAX_FRAME_LEN} bytes")]
    Oversized,
    /// The connection ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    /// The frame is empty: not even a version byte.
    #[error("empty frame")]
    Empty,
    /// The frame's protocol version is not one this crate speaks.
    #[error("unknown protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u8),
    /// The frame does not decode to a message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// Reading or writing the connection failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` into one frame's body (version byte and message).
///
/// # Errors
///
/// [`WireError::Oversized`] when it would not fit in a frame.
pub fn encode(message: &Message) -> Result<Bytes, WireError> {
    let mut body = BytesMut::with_capacity(64);
    body.put_u8(PROTOCOL_VERSION);
    let body = postcard::to_extend(message, body)?.freeze();
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized);
    }
    Ok(body)
}

/// Decodes one frame's body.
///
/// # Errors
///
/// [`WireError::Empty`], [`WireError::UnknownVersion`] or
/// [`WireError::Malformed`]; never panics, whatever the bytes.
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    let (&version, message) = body.split_first().ok_or(WireError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (message, rest) = postcard::take_from_bytes(message)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(message)
}

/// A connection carrying frames of messages.
#[derive(Debug)]
pub struct Connection<T> {
    frames: Framed<T, LengthDelimitedCodec>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Frames `io`.
    pub fn new(io: T) -> Connection<T> {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        Connection {
            frames: Framed::new(io, codec),
        }
    }

    /// Sends one message.
    ///
    /// # Errors
    ///
    /// [`WireError::Oversized`] or [`WireError::Io`].
    pub async fn send(&mut self, message: &Message) -> Result<(), WireError> {
        self.frames.send(encode(message)?).await?;
        Ok(())
    }

    /// Queues one message without flushing; [`flush`](Self::flush) sends
    /// what is queued. Streams of records go out in few system calls.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    pub async fn feed(&mut self, message: &Message) -> Result<(), WireError> {
        self.frames.feed(encode(message)?).await?;
        Ok(())
    }

    /// Sends whatever [`feed`](Self::feed) queued.
    ///
    /// # Errors
    ///
    /// [`WireError::Io`].
    pub async fn flush(&mut self) -> Result<(), WireError> {
        SinkExt::<Bytes>::flush(&mut self.frames).await?;
        Ok(())
    }

    /// The next message, or `None` when the peer closed the connection
    /// between frames.
    ///
    /// # Errors
    ///
    /// Any [`WireError`] but `Oversized` on sending.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a partly read frame stays buffered for the next call.
    pub async fn recv(&mut self) -> Result<Option<Message>, WireError> {
        Ok(self.recv_frame().await?.map(|(message, _)| message))
    }

    /// [`recv`](Self::recv), with the frame the message came in: a record's
    /// encoding is in it as the store keeps it, so that it need not be
    /// encoded again.
    pub(crate) async fn recv_frame(&mut self) -> Result<Option<(Message, Bytes)>, WireError> {
        match self.frames.next().await {
            None => Ok(None),
            Some(Ok(frame)) => {
                let frame = frame.freeze();
                decode(&frame).map(|message| Some((message, frame)))
            }
            // A TLS peer that went away without closing its session: at a
            // frame boundary that is a close like any other (the protocol
            // says itself when it is done), inside a frame a truncation.
            Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                if self.frames.read_buffer().is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                }
            }
            Some(Err(error)) => Err(classify_io(error)),
        }
    }
}

/// Sorts the codec's I/O errors into the frame errors they stand for.
fn classify_io(error: std::io::Error) -> WireError {
    let text = error.to_string();
    if text.contains("frame size too big") {
        WireError::Oversized
    } else if text.contains("bytes remaining on stream") {
        WireError::Truncated
    } else {
        WireError::Io(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VersionId;
    use proptest::prelude::*;

    fn record() -> LogRecord {
        let device = DeviceId::new("a").expect("valid");
        LogRecord {
            version: VersionId::of_write(&device, 1, 1),
            device: device.clone(),
            generation: 1,
            sequence: 1,
            key: b"k".to_vec(),
            parents: Vec::new(),
            value: Some(b"v".to_vec()),
            writer: device,
            timestamp_ms: 7,
        }
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        let mut vector = GenVector::new();
        vector.raise(&DeviceId::new("a").expect("valid"), 3);
        let messages = [
            Message::Hello {
                device: DeviceId::new("a").expect("valid"),
            },
            Message::GetDeltas {
                vector: vector.clone(),
            },
            Message::Record(record()),
            Message::Done {
                vector: vector.clone(),
            },
            Message::Abort {
                reason: String::from("no"),
            },
            Message::Collected {
                vector: GenVector::new(),
            },
            Message::Known {
                peers: vec![KnownPeer {
                    device: DeviceId::new("c").expect("valid"),
                    vector: vector.clone(),
                    heard_ms_ago: 60_000,
                }],
            },
        ];
        for message in messages {
            let body = encode(&message).expect("encodes");
            assert_eq!(body[0], PROTOCOL_VERSION);
            assert_eq!(decode(&body).expect("decodes"), message);
        }
    }

    #[test]
    fn bad_frames_get_typed_errors() {
        assert!(matches!(decode(&[]), Err(WireError::Empty)));
        assert!(matches!(decode(&[9, 0]), Err(WireError::UnknownVersion(9))));
        assert!(matches!(
            decode(&[PROTOCOL_VERSION, 200]),
            Err(WireError::Malformed(_))
        ));
        let mut body = encode(&Message::Record(record()))
            .expect("encodes")
            .to_vec();
        body.push(0);
        assert!(
            matches!(decode(&body), Err(WireError::Malformed(_))),
            "trailing bytes"
        );
        body.truncate(body.len() - 3);
        assert!(
            matches!(decode(&body), Err(WireError::Malformed(_))),
            "cut short"
        );
    }

    #[test]
    fn a_device_id_that_does_not_validate_is_malformed() {
        // Hello with the device id "a/b", which DeviceId rejects.
        let body = [PROTOCOL_VERSION, 0, 3, b'a', b'/', b'b'];
        assert!(matches!(decode(&body), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_mutated_records_never_panics(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8)) {
            let mut body = encode(&Message::Record(record())).expect("encodes").to_vec();
            for (at, byte) in flips {
                let len = body.len();
                body[at % len] = byte;
            }
            let _ = decode(&body);
        }
    }
}
