//! Validated identifiers: [`Name`], [`Endpoint`] and [`DeviceId`].
//!
//! Each is checked once, when it is made (`new`, `parse`, `FromStr`, serde),
//! and is immutable afterwards, so code that holds one never checks it again.
//! A bad input gets an [`InvalidId`] saying which kind of id, which input
//! and what is wrong with it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest [`Name`], in bytes.
///
/// Long enough for deep hierarchies, short enough to sit in an etcd key or a
/// log line without surprise.
pub const MAX_NAME_LEN: usize = 512;

/// The longest [`DeviceId`], in bytes: ids travel in every replicated record,
/// so they are kept short.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// The longest host in an [`Endpoint`], in bytes: the DNS limit.
const MAX_HOST_LEN: usize = 253;

/// The longest label of a DNS host name, in bytes.
const MAX_LABEL_LEN: usize = 63;

/// Which kind of identifier was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A [`Name`].
    Name,
    /// An [`Endpoint`].
    Endpoint,
    /// A [`DeviceId`].
    DeviceId,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Name => "name",
            IdKind::Endpoint => "endpoint",
            IdKind::DeviceId => "device id",
        })
    }
}

/// What is wrong with a rejected identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidIdReason {
    /// The input is empty.
    #[error("it is empty")]
    Empty,
    /// The input is longer than the kind allows.
    #[error("it is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// The input's length in bytes.
        len: usize,
        /// The most that kind of id allows.
        max: usize,
    },
    /// A character that kind of id does not allow.
    #[error("character {ch:?} at byte {index} is not allowed")]
    InvalidChar {
        /// The character.
        ch: char,
        /// Its byte offset in the input.
        index: usize,
    },
    /// A name with an empty segment: a leading, trailing or doubled `/`.
    #[error("segment at byte {index} is empty (leading, trailing or doubled '/')")]
    EmptySegment {
        /// The byte offset where the empty segment starts.
        index: usize,
    },
    /// A name segment of `.` or `..`, which would read as a path step.
    #[error("segment {segment:?} is reserved")]
    ReservedSegment {
        /// The segment.
        segment: String,
    },
    /// An endpoint without `:port`.
    #[error("it has no ':port'")]
    MissingPort,
    /// An endpoint whose port is not a number from 1 to 65535.
    #[error("port {port:?} is not a number from 1 to 65535")]
    InvalidPort {
        /// The port text as given.
        port: String,
    },
    /// An endpoint whose host is neither an IP address nor a DNS host name.
    #[error("host {host:?} is neither an IP address nor a DNS host name")]
    InvalidHost {
        /// The host text as given.
        host: String,
    },
}

/// An identifier that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct InvalidId {
    /// Which kind of identifier it was meant to be.
    pub kind: IdKind,
    /// The input, cut to its first 100 characters.
    pub input: String,
    /// What is wrong with it.
    pub reason: InvalidIdReason,
}

impl InvalidId {
    fn new(kind: IdKind, input: &str, reason: InvalidIdReason) -> Self {
        InvalidId {
            kind,
            input: input.chars().take(100).collect(),
            reason,
        }
    }
}

/// A hierarchical name: segments joined by `/`, such as `api` or
/// `cluster-a/db/primary`. Cloning is cheap (a reference count), since names
/// are copied into every report, snapshot and log line.
///
/// Rules: 1 to [`MAX_NAME_LEN`] bytes; no leading, trailing or doubled `/`;
/// no `.` or `..` segment; segment characters are ASCII letters, digits and
/// `- _ . : @ +`.
///
/// # Example
///
/// ```
/// use flotilla_core_types::Name;
///
/// let name = Name::new("cluster-a/db")?;
/// assert_eq!(name.segments().collect::<Vec<_>>(), ["cluster-a", "db"]);
/// assert!(Name::new("a//b").is_err());
/// # Ok::<(), flotilla_core_types::InvalidId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `name`.
    pub fn new(name: impl AsRef<str> + Into<String>) -> Result<Self, InvalidId> {
        validate_name(name.as_ref())?;
        Ok(Name(Arc::from(name.into())))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments, first to last.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// This name with `child` appended as further segments.
    pub fn join(&self, child: &Name) -> Result<Name, InvalidId> {
        Name::new(format!("{self}/{child}"))
    }
}

fn validate_name(input: &str) -> Result<(), InvalidId> {
    let fail = |reason| Err(InvalidId::new(IdKind::Name, input, reason));
    if input.is_empty() {
        return fail(InvalidIdReason::Empty);
    }
    if input.len() > MAX_NAME_LEN {
        return fail(InvalidIdReason::TooLong {
            len: input.len(),
            max: MAX_NAME_LEN,
        });
    }
    let mut segment_start = 0;
    for segment in input.split('/') {
        if segment.is_empty() {
            return fail(InvalidIdReason::EmptySegment {
                index: segment_start,
            });
        }
        if segment == "." || segment == ".." {
            return fail(InvalidIdReason::ReservedSegment {
                segment: segment.to_owned(),
            });
        }
        if let Some((offset, ch)) = segment.char_indices().find(|&(_, ch)| !is_name_char(ch)) {
            return fail(InvalidIdReason::InvalidChar {
                ch,
                index: segment_start + offset,
            });
        }
        segment_start += segment.len() + 1;
    }
    Ok(())
}

fn is_name_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':' | '@' | '+')
}

/// The network address of a server: `host:port`, where host is a DNS host
/// name, an IPv4 address, or an IPv6 address in brackets.
///
/// The port must be from 1 to 65535: port 0 means "any port" when binding and
/// is never where a server can be reached.
///
/// # Example
///
/// ```
/// use flotilla_core_types::Endpoint;
///
/// let endpoint: Endpoint = "[::1]:2379".parse()?;
/// assert_eq!(endpoint.host(), "::1");
/// assert_eq!(endpoint.port(), 2379);
/// assert_eq!(endpoint.to_string(), "[::1]:2379");
/// assert!("db.internal".parse::<Endpoint>().is_err());
/// # Ok::<(), flotilla_core_types::InvalidId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    host: Box<str>,
    port: u16,
}

impl Endpoint {
    /// Parses and validates `host:port`.
    pub fn parse(input: &str) -> Result<Self, InvalidId> {
        let fail = |reason| Err(InvalidId::new(IdKind::Endpoint, input, reason));
        if input.is_empty() {
            return fail(InvalidIdReason::Empty);
        }
        if let Ok(address) = input.parse::<SocketAddr>() {
            return Endpoint::from_parts(input, &address.ip().to_string(), address.port());
        }
        let Some((host, port_text)) = input.rsplit_once(':') else {
            return fail(InvalidIdReason::MissingPort);
        };
        let port = match port_text.parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                return fail(InvalidIdReason::InvalidPort {
                    port: port_text.to_owned(),
                });
            }
        };
        if host.contains(':') {
            // An IPv6 host must be in brackets, or its last group reads as the port.
            return fail(InvalidIdReason::InvalidHost {
                host: host.to_owned(),
            });
        }
        Endpoint::from_parts(input, host, port)
    }

    /// An endpoint from a host and a port, validated like [`parse`](Self::parse).
    /// An IPv6 host is given without brackets.
    pub fn new(host: &str, port: u16) -> Result<Self, InvalidId> {
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Endpoint::from_parts(&shown, host, port)
    }

    fn from_parts(input: &str, host: &str, port: u16) -> Result<Self, InvalidId> {
        let fail = |reason| Err(InvalidId::new(IdKind::Endpoint, input, reason));
        if port == 0 {
            return fail(InvalidIdReason::InvalidPort {
                port: port.to_string(),
            });
        }
        if host.parse::<IpAddr>().is_err() && !is_dns_host(host) {
            return fail(InvalidIdReason::InvalidHost {
                host: host.to_owned(),
            });
        }
        Ok(Endpoint {
            host: host.to_ascii_lowercase().into_boxed_str(),
            port,
        })
    }

    /// The host: a DNS name (lower case) or an IP address (IPv6 without
    /// brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, when the host is an IP address.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

/// Whether `host` is a DNS host name: dot-separated labels of letters, digits
/// and inner hyphens, with a last label that is not all digits (so that a
/// malformed IPv4 address such as `1.2.3` is not taken for a name).
fn is_dns_host(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    });
    let last_label_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|label| label.chars().all(|ch| ch.is_ascii_digit()));
    labels_ok && !last_label_numeric
}

impl TryFrom<SocketAddr> for Endpoint {
    type Error = InvalidId;

    /// Fails only for port 0, which no server listens on.
    fn try_from(address: SocketAddr) -> Result<Self, InvalidId> {
        Endpoint::new(&address.ip().to_string(), address.port())
    }
}

/// The identity of one replica in `flotilla-gensync`, and of a device in
/// general: 1 to [`MAX_DEVICE_ID_LEN`] bytes of ASCII letters, digits and
/// `- _ .`.
///
/// # Example
///
/// ```
/// use flotilla_core_types::DeviceId;
///
/// let id = DeviceId::new("laptop-7")?;
/// assert_eq!(id.as_str(), "laptop-7");
/// assert!(DeviceId::new("has space").is_err());
/// # Ok::<(), flotilla_core_types::InvalidId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// Validates `id`.
    pub fn new(id: impl AsRef<str> + Into<String>) -> Result<Self, InvalidId> {
        let input = id.as_ref();
        let fail = |reason| Err(InvalidId::new(IdKind::DeviceId, input, reason));
        if input.is_empty() {
            return fail(InvalidIdReason::Empty);
        }
        if input.len() > MAX_DEVICE_ID_LEN {
            return fail(InvalidIdReason::TooLong {
                len: input.len(),
                max: MAX_DEVICE_ID_LEN,
            });
        }
        if let Some((index, ch)) = input
            .char_indices()
            .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')))
        {
            return fail(InvalidIdReason::InvalidChar { ch, index });
        }
        Ok(DeviceId(Arc::from(id.into())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Display`, `Debug`, `FromStr`, `AsRef<str>` and the `String` conversions
/// serde uses, for an id that is text validated by `$validate`.
macro_rules! text_id_impls {
    ($id:ident, $validate:expr) => {
        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($id), &*self.0)
            }
        }

        impl AsRef<str> for $id {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $id {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $id {
            type Err = InvalidId;
            fn from_str(input: &str) -> Result<Self, InvalidId> {
                $validate(input)
            }
        }

        impl TryFrom<String> for $id {
            type Error = InvalidId;
            fn try_from(input: String) -> Result<Self, InvalidId> {
                $validate(input)
            }
        }

        impl TryFrom<&str> for $id {
            type Error = InvalidId;
            fn try_from(input: &str) -> Result<Self, InvalidId> {
                $validate(input)
            }
        }

        impl From<$id> for String {
            fn from(id: $id) -> String {
                String::from(&*id.0)
            }
        }
    };
}

text_id_impls!(Name, Name::new);
text_id_impls!(DeviceId, DeviceId::new);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl FromStr for Endpoint {
    type Err = InvalidId;
    fn from_str(input: &str) -> Result<Self, InvalidId> {
        Endpoint::parse(input)
    }
}

impl TryFrom<String> for Endpoint {
    type Error = InvalidId;
    fn try_from(input: String) -> Result<Self, InvalidId> {
        Endpoint::parse(&input)
    }
}

impl From<Endpoint> for String {
    fn from(endpoint: Endpoint) -> String {
        endpoint.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_reason(input: &str) -> Option<InvalidIdReason> {
        Name::new(input).err().map(|error| error.reason)
    }

    fn endpoint_reason(input: &str) -> Option<InvalidIdReason> {
        Endpoint::parse(input).err().map(|error| error.reason)
    }

    #[test]
    fn names() {
        use InvalidIdReason::*;
        let cases: &[(&str, Option<InvalidIdReason>)] = &[
            ("a", None),
            ("cluster-a/db/primary", None),
            ("svc:8080@v1+x_y.z", None),
            ("", Some(Empty)),
            ("/a", Some(EmptySegment { index: 0 })),
            ("a/", Some(EmptySegment { index: 2 })),
            ("a//b", Some(EmptySegment { index: 2 })),
            (
                "a/../b",
                Some(ReservedSegment {
                    segment: "..".into(),
                }),
            ),
            (
                "a/./b",
                Some(ReservedSegment {
                    segment: ".".into(),
                }),
            ),
            ("ab/c d", Some(InvalidChar { ch: ' ', index: 4 })),
            ("é", Some(InvalidChar { ch: 'é', index: 0 })),
        ];
        for (input, expected) in cases {
            assert_eq!(&name_reason(input), expected, "input {input:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            name_reason(&long),
            Some(TooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN
            })
        );
    }

    #[test]
    fn endpoints() {
        use InvalidIdReason::*;
        let cases: &[(&str, Option<InvalidIdReason>)] = &[
            ("127.0.0.1:2379", None),
            ("[::1]:80", None),
            ("db-1.internal:5432", None),
            ("localhost:1", None),
            ("", Some(Empty)),
            ("localhost", Some(MissingPort)),
            ("localhost:0", Some(InvalidPort { port: "0".into() })),
            (
                "localhost:70000",
                Some(InvalidPort {
                    port: "70000".into(),
                }),
            ),
            (
                "localhost:http",
                Some(InvalidPort {
                    port: "http".into(),
                }),
            ),
            (
                "-bad.host:80",
                Some(InvalidHost {
                    host: "-bad.host".into(),
                }),
            ),
            (
                "1.2.3:80",
                Some(InvalidHost {
                    host: "1.2.3".into(),
                }),
            ),
            ("::1:80", Some(InvalidHost { host: "::1".into() })),
            (":80", Some(InvalidHost { host: "".into() })),
        ];
        for (input, expected) in cases {
            assert_eq!(&endpoint_reason(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn endpoint_hosts_are_normalised() {
        let endpoint = Endpoint::parse("DB.Example:9").expect("valid");
        assert_eq!(endpoint.to_string(), "db.example:9");
        assert_eq!(
            Endpoint::new("::1", 7).expect("valid").to_string(),
            "[::1]:7"
        );
        assert_eq!(
            Endpoint::parse("10.0.0.1:9")
                .expect("valid")
                .to_socket_addr(),
            Some("10.0.0.1:9".parse().expect("socket address"))
        );
        assert_eq!(endpoint.to_socket_addr(), None);
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::new("phone_2.home").is_ok());
        assert_eq!(
            DeviceId::new("a/b").err().map(|e| e.reason),
            Some(InvalidIdReason::InvalidChar { ch: '/', index: 1 })
        );
        assert!(DeviceId::new("x".repeat(MAX_DEVICE_ID_LEN + 1)).is_err());
        assert!(DeviceId::new("").is_err());
    }

    #[test]
    fn errors_name_the_kind_the_input_and_the_reason() {
        let error = Name::new("a//b").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "invalid name \"a//b\": segment at byte 2 is empty (leading, trailing or doubled '/')"
        );
    }

    #[test]
    fn serde_validates() {
        let name: Name = serde_json::from_str("\"a/b\"").expect("valid name");
        assert_eq!(serde_json::to_string(&name).expect("serialises"), "\"a/b\"");
        assert!(serde_json::from_str::<Name>("\"a/\"").is_err());
        assert!(serde_json::from_str::<Endpoint>("\"host\"").is_err());
        let endpoint: Endpoint = serde_json::from_str("\"[::1]:5\"").expect("valid endpoint");
        assert_eq!(endpoint.port(), 5);
        assert!(serde_json::from_str::<DeviceId>("\"\"").is_err());
    }

    proptest! {
        #[test]
        fn any_text_is_accepted_or_rejected_without_panic(input in ".{0,80}") {
            let _ = Name::new(input.clone());
            let _ = Endpoint::parse(&input);
            let _ = DeviceId::new(input);
        }

        #[test]
        fn valid_names_round_trip(input in "[a-z0-9_-]{1,8}(/[a-zA-Z0-9:@+-]{1,8}){0,4}") {
            let name = Name::new(input.clone()).expect("generated names are valid");
            prop_assert_eq!(name.to_string(), input.clone());
            prop_assert_eq!(name.as_str().parse::<Name>().expect("round trip"), name);
        }

        #[test]
        fn endpoints_round_trip_through_display(a in 0u8.., b in 0u8.., port in 1u16..) {
            let endpoint = Endpoint::new(&format!("10.{a}.{b}.1"), port).expect("valid");
            prop_assert_eq!(endpoint.to_string().parse::<Endpoint>().expect("round trip"), endpoint);
        }
    }
}
