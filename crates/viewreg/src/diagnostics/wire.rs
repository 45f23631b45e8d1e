//! The diagnostics protocol's bytes: frames, the request, the answers, and
//! their strict decoders. `docs/diagnostics.md` is the same description for
//! implementers in other languages.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many
//! bytes (at most [`MAX_FRAME_LEN`]). Every body starts with [`MAGIC`] and
//! the protocol version. The decoders take untrusted bytes: anything that is
//! not exactly a message of this version is a typed [`WireError`], never a
//! panic, and no length read from the wire is trusted before it is checked.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::Partition;
use crate::diagnostics::DiagnosticsStatus;

/// The four bytes that open every message, so that a stray client or
/// server of another protocol is told apart from a broken one.
pub const MAGIC: [u8; 4] = *b"FLDG";

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The longest frame body either side accepts: far above the largest
/// status ([`MAX_FEATURES`] names of [`MAX_FEATURE_LEN`] bytes are 65 KiB),
/// small enough that a hostile peer cannot make a reader hold much.
pub const MAX_FRAME_LEN: usize = 128 * 1024;

/// The most features one status may carry.
pub const MAX_FEATURES: usize = 256;

/// The longest feature name, in bytes of UTF-8.
pub const MAX_FEATURE_LEN: usize = 255;

/// What a request asks.
const KIND_STATUS: u8 = 1;

/// What an answer is.
const ANSWER_STATUS: u8 = 1;
const ANSWER_UNSUPPORTED: u8 = 2;

/// A request, as a server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// "Are you serving, with what features and partition?"
    Status,
    /// A request this server cannot answer (a later version, or a kind it
    /// does not know). It is answered with [`Answer::Unsupported`].
    Unsupported {
        /// The version the request was written in.
        version: u8,
    },
}

/// An answer, as a prober reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// The server's status.
    Status(DiagnosticsStatus),
    /// The server speaks the protocol but not this request; `version` is
    /// the highest version it speaks.
    Unsupported {
        /// The server's version.
        version: u8,
    },
}

/// Bytes that are not a message of the diagnostics protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The body does not start with [`MAGIC`]: the peer speaks another
    /// protocol.
    #[error("not a diagnostics message (no FLDG magic)")]
    NotDiagnostics,
    /// The body ended before the message did.
    #[error("message ends early: {0}")]
    Truncated(&'static str),
    /// Bytes follow the end of the message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A field holds a value the protocol does not allow.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The connection failed, closed in the middle of a frame, or carried
    /// a frame longer than [`MAX_FRAME_LEN`].
    #[error("connection failed: {0}")]
    Transport(String),
}

/// The one request of version 1, encoded.
pub fn encode_status_request() -> Bytes {
    let mut body = BytesMut::with_capacity(6);
    body.put_slice(&MAGIC);
    body.put_u8(PROTOCOL_VERSION);
    body.put_u8(KIND_STATUS);
    body.freeze()
}

/// Decodes a request body. A request of a later version, or of an unknown
/// kind, decodes to [`Request::Unsupported`], which the server answers.
///
/// # Errors
///
/// [`WireError::NotDiagnostics`] without the magic; [`WireError::Truncated`]
/// or [`WireError::TrailingBytes`] for a version-1 request of the wrong
/// length.
pub fn decode_request(body: &[u8]) -> Result<Request, WireError> {
    let mut reader = Reader::new(body);
    let version = reader.header()?;
    if version != PROTOCOL_VERSION {
        return Ok(Request::Unsupported { version });
    }
    let kind = reader.u8("request kind")?;
    if kind != KIND_STATUS {
        return Ok(Request::Unsupported { version });
    }
    reader.finish()?;
    Ok(Request::Status)
}

/// Encodes an answer body.
///
/// # Errors
///
/// [`WireError::Malformed`] when the status breaks the protocol's limits
/// (more than [`MAX_FEATURES`] features, an empty name or one longer than
/// [`MAX_FEATURE_LEN`] bytes): a server must not send what a prober would
/// refuse.
pub fn encode_answer(answer: &Answer) -> Result<Bytes, WireError> {
    let mut body = BytesMut::with_capacity(64);
    body.put_slice(&MAGIC);
    body.put_u8(PROTOCOL_VERSION);
    match answer {
        Answer::Unsupported { version } => {
            body.put_u8(ANSWER_UNSUPPORTED);
            body.put_u8(*version);
        }
        Answer::Status(status) => {
            check_features(status.features())?;
            body.put_u8(ANSWER_STATUS);
            body.put_u8(u8::from(status.is_serving()));
            match status.partition() {
                None => body.put_u8(0),
                Some(partition) => {
                    body.put_u8(1);
                    body.put_u32(partition.index());
                    body.put_u32(partition.count());
                }
            }
            let count = u16::try_from(status.features().len())
                .map_err(|_| WireError::Malformed("too many features".to_owned()))?;
            body.put_u16(count);
            for name in status.features() {
                let len = u8::try_from(name.len()).map_err(|_| {
                    WireError::Malformed(format!("feature name of {} bytes", name.len()))
                })?;
                body.put_u8(len);
                body.put_slice(name.as_bytes());
            }
        }
    }
    Ok(body.freeze())
}

/// Decodes an answer body.
///
/// # Errors
///
/// [`WireError::NotDiagnostics`] without the magic; [`WireError::Malformed`]
/// for a later version, an unknown answer, a flag other than 0 or 1, a
/// partition whose index is not below its count, too many features, an
/// empty, repeated or non-UTF-8 name; [`WireError::Truncated`] or
/// [`WireError::TrailingBytes`] for the wrong length.
pub fn decode_answer(body: &[u8]) -> Result<Answer, WireError> {
    let mut reader = Reader::new(body);
    let version = reader.header()?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Malformed(format!(
            "answer in version {version}; this side speaks {PROTOCOL_VERSION}"
        )));
    }
    let answer = match reader.u8("answer kind")? {
        ANSWER_UNSUPPORTED => Answer::Unsupported {
            version: reader.u8("server version")?,
        },
        ANSWER_STATUS => {
            let serving = reader.flag("serving")?;
            let partition =
                if reader.flag("has partition")? {
                    let index = reader.u32("partition index")?;
                    let count = reader.u32("partition count")?;
                    Some(Partition::new(index, count).ok_or_else(|| {
                        WireError::Malformed(format!("partition {index} of {count}"))
                    })?)
                } else {
                    None
                };
            let count = usize::from(reader.u16("feature count")?);
            if count > MAX_FEATURES {
                return Err(WireError::Malformed(format!(
                    "{count} features, more than {MAX_FEATURES}"
                )));
            }
            let mut features = BTreeSet::new();
            for _ in 0..count {
                let len = usize::from(reader.u8("feature length")?);
                let bytes = reader.take(len, "feature name")?;
                let name = std::str::from_utf8(bytes)
                    .map_err(|_| WireError::Malformed("a feature name is not UTF-8".to_owned()))?;
                if name.is_empty() {
                    return Err(WireError::Malformed("an empty feature name".to_owned()));
                }
                if !features.insert(name.to_owned()) {
                    return Err(WireError::Malformed(format!("feature {name:?} repeated")));
                }
            }
            let mut status = if serving {
                DiagnosticsStatus::serving(features)
            } else {
                DiagnosticsStatus::not_serving().with_features(features)
            };
            if let Some(partition) = partition {
                status = status.with_partition(partition);
            }
            Answer::Status(status)
        }
        other => return Err(WireError::Malformed(format!("unknown answer kind {other}"))),
    };
    reader.finish()?;
    Ok(answer)
}

/// Whether `features` fit the protocol's limits.
pub(crate) fn check_features(features: &BTreeSet<String>) -> Result<(), WireError> {
    if features.len() > MAX_FEATURES {
        return Err(WireError::Malformed(format!(
            "{} features, more than {MAX_FEATURES}",
            features.len()
        )));
    }
    if let Some(bad) = features
        .iter()
        .find(|name| name.is_empty() || name.len() > MAX_FEATURE_LEN)
    {
        return Err(WireError::Malformed(format!(
            "feature name of {} bytes (1 to {MAX_FEATURE_LEN} allowed)",
            bad.len()
        )));
    }
    Ok(())
}

/// Reads fields off a body, each read checked against what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    /// The magic and the version.
    fn header(&mut self) -> Result<u8, WireError> {
        match self.rest.split_first_chunk::<4>() {
            Some((magic, rest)) if *magic == MAGIC => self.rest = rest,
            _ => return Err(WireError::NotDiagnostics),
        }
        self.u8("version")
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.rest.len() < len {
            return Err(WireError::Truncated(field));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::Malformed(format!(
                "{field} is {other}, not 0 or 1"
            ))),
        }
    }

    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn status_with(features: &[&str]) -> DiagnosticsStatus {
        DiagnosticsStatus::serving(features.iter().map(|name| (*name).to_owned()).collect())
    }

    #[test]
    fn the_request_is_six_bytes_and_reads_back() {
        let request = encode_status_request();
        assert_eq!(&request[..], b"FLDG\x01\x01");
        assert_eq!(decode_request(&request), Ok(Request::Status));
    }

    #[test]
    fn a_status_reads_back_byte_for_byte() {
        let status =
            status_with(&["kv", "query"]).with_partition(Partition::new(2, 4).expect("2 < 4"));
        let body = encode_answer(&Answer::Status(status.clone())).expect("fits");
        assert_eq!(
            &body[..],
            b"FLDG\x01\x01\x01\x01\x00\x00\x00\x02\x00\x00\x00\x04\x00\x02\x02kv\x05query"
        );
        assert_eq!(decode_answer(&body), Ok(Answer::Status(status)));
    }

    #[test]
    fn later_versions_and_unknown_kinds_are_unsupported_requests() {
        assert_eq!(
            decode_request(b"FLDG\x02\x01"),
            Ok(Request::Unsupported { version: 2 })
        );
        assert_eq!(
            decode_request(b"FLDG\x01\x07"),
            Ok(Request::Unsupported { version: 1 })
        );
        let answer = encode_answer(&Answer::Unsupported { version: 1 }).expect("fits");
        assert_eq!(
            decode_answer(&answer),
            Ok(Answer::Unsupported { version: 1 })
        );
    }

    #[test]
    fn bytes_of_another_protocol_are_told_apart() {
        assert_eq!(
            decode_request(b"GET / HTTP/1.1\r\n"),
            Err(WireError::NotDiagnostics)
        );
        assert_eq!(
            decode_answer(b"HTTP/1.1 200 OK"),
            Err(WireError::NotDiagnostics)
        );
        assert_eq!(decode_answer(b""), Err(WireError::NotDiagnostics));
    }

    #[test]
    fn every_broken_answer_is_a_typed_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"FLDG", "message ends early: version"),
            (b"FLDG\x02\x01", "answer in version 2"),
            (b"FLDG\x01\x09", "unknown answer kind 9"),
            (b"FLDG\x01\x01\x02", "serving is 2"),
            (
                b"FLDG\x01\x01\x01\x01\x00\x00\x00\x04\x00\x00\x00\x04\x00\x00",
                "partition 4 of 4",
            ),
            (b"FLDG\x01\x01\x01\x00\x01\x01", "more than 256"),
            (b"FLDG\x01\x01\x01\x00\x00\x01\x00", "empty feature name"),
            (b"FLDG\x01\x01\x01\x00\x00\x02\x01a\x01a", "repeated"),
            (b"FLDG\x01\x01\x01\x00\x00\x01\x02\xff\xfe", "not UTF-8"),
            (
                b"FLDG\x01\x01\x01\x00\x00\x01\x05ab",
                "ends early: feature name",
            ),
            (b"FLDG\x01\x01\x01\x00\x00\x00\x00", "1 unexpected bytes"),
        ];
        for (body, expected) in cases {
            let error = decode_answer(body).expect_err("broken");
            assert!(
                error.to_string().contains(expected),
                "{body:?}: {error} should say {expected:?}"
            );
        }
        assert_eq!(
            decode_request(b"FLDG\x01\x01\x00"),
            Err(WireError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_server_cannot_send_what_a_prober_would_refuse() {
        let long = "x".repeat(MAX_FEATURE_LEN + 1);
        let too_long = DiagnosticsStatus::serving(BTreeSet::from([long]));
        assert!(encode_answer(&Answer::Status(too_long)).is_err());
        let many = (0..=MAX_FEATURES).map(|n| n.to_string()).collect();
        assert!(encode_answer(&Answer::Status(DiagnosticsStatus::serving(many))).is_err());
        let widest = (0..MAX_FEATURES)
            .map(|n| format!("{n:0>width$}", width = MAX_FEATURE_LEN))
            .collect();
        let body =
            encode_answer(&Answer::Status(DiagnosticsStatus::serving(widest))).expect("fits");
        assert!(body.len() <= MAX_FRAME_LEN);
        assert!(decode_answer(&body).is_ok());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes);
            let _ = decode_answer(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.push(PROTOCOL_VERSION);
            framed.extend_from_slice(&bytes);
            let _ = decode_request(&framed);
            let _ = decode_answer(&framed);
        }

        #[test]
        fn every_valid_status_reads_back(
            serving in any::<bool>(),
            partition in proptest::option::of((0u32..8, 1u32..8)),
            features in proptest::collection::btree_set("[a-z]{1,12}", 0..20),
        ) {
            let mut status = if serving {
                DiagnosticsStatus::serving(features)
            } else {
                DiagnosticsStatus::not_serving().with_features(features)
            };
            if let Some(partition) = partition.and_then(|(index, count)| Partition::new(index % count, count)) {
                status = status.with_partition(partition);
            }
            let body = encode_answer(&Answer::Status(status.clone())).expect("within limits");
            prop_assert_eq!(decode_answer(&body), Ok(Answer::Status(status)));
        }
    }
}
