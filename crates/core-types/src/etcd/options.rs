//! [`EtcdOptions`]: how every etcd backend connects (endpoints, TLS with a
//! client certificate, a user and password), and the check that what it
//! connected to lets it use its prefix.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use super::{prefix_end, retry_connect_failures};

/// How long connecting to a member may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the access check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings while requests are under way, so that a member killed
/// without closing its sockets is noticed. Never more often: etcd closes
/// connections that ping more often than every 5 s
/// (`--grpc-keepalive-min-time`), which cancels every call on them.
const HTTP2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

/// The most a PEM file read by [`EtcdOptions::with_tls_files`] may hold.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// How the etcd backends (publisher's namespace, presence's store,
/// viewreg's locator) connect to an etcd cluster: its endpoints, TLS
/// (the CA that signed the members' certificates, and this client's
/// certificate and key when the cluster runs with `--client-cert-auth`),
/// and a user and password when it runs with authentication enabled.
///
/// [`connect`](EtcdOptions::connect) makes the client, and checks at once
/// that the cluster lets it use its prefix, so that a missing certificate,
/// a wrong password or a user without a role on the prefix is one clear
/// error at start, not a backend retrying forever.
///
/// ```no_run
/// use flotilla_core_types::etcd::{Access, EtcdOptions};
///
/// # async fn connect() -> Result<(), flotilla_core_types::etcd::EtcdConnectError> {
/// let options = EtcdOptions::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
///     .with_tls_files(
///         "/etc/flotilla/etcd-ca.pem".as_ref(),
///         Some(("/etc/flotilla/client.pem".as_ref(), "/etc/flotilla/client-key.pem".as_ref())),
///     )?
///     .with_user("flotilla", "secret");
/// let client = options.connect(b"flotilla/", Access::ReadWrite).await?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    endpoints: Vec<String>,
    ca_pem: Option<Vec<u8>>,
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
    user: Option<(String, String)>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
}

/// What a backend does with its prefix, for the access check of
/// [`EtcdOptions::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It only reads (viewreg's locator).
    Read,
    /// It reads and writes (the publisher's namespace, presence's store).
    ReadWrite,
}

/// The client could not be made, or the cluster does not let it use its
/// prefix.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdConnectError {
    /// The options cannot make a client: no endpoints, a PEM file that
    /// cannot be read, a URL etcd-client refuses.
    #[error("invalid etcd options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// TLS failed: the cluster refused this client's certificate (or it
    /// presented none), or the members' certificates are not signed by the
    /// CA given.
    #[error("TLS with etcd failed: {reason}")]
    Tls {
        /// What the client saw.
        reason: String,
    },
    /// The cluster did not accept the user and password (or the cluster
    /// needs them and none were given).
    #[error("etcd did not authenticate this client: {reason}")]
    Unauthenticated {
        /// What etcd said.
        reason: String,
    },
    /// The user has no permission to use the prefix as the backend needs.
    #[error("etcd refuses {access:?} access to the prefix {prefix:?}: {reason}")]
    PermissionDenied {
        /// The prefix.
        prefix: String,
        /// The access checked.
        access: Access,
        /// What etcd said.
        reason: String,
    },
    /// No member answered.
    #[error("no etcd member answered: {reason}")]
    Unreachable {
        /// The last failure.
        reason: String,
    },
}

impl EtcdOptions {
    /// Options for the cluster at `endpoints`: URLs such as
    /// `http://127.0.0.1:2379`, or `https://…` with TLS.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_pem: None,
            client_pem: None,
            user: None,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: None,
        }
    }

    /// Trust the members' certificates when the CA in `pem` (PEM, one or
    /// more certificates) signed them. Needed for `https://` endpoints.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> EtcdOptions {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present `certificate` (PEM) with its `key` (PEM, PKCS#8) to the
    /// cluster, as a cluster with `--client-cert-auth` requires.
    pub fn with_client_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> EtcdOptions {
        self.client_pem = Some((certificate.into(), key.into()));
        self
    }

    /// [`with_ca_pem`](Self::with_ca_pem) and, when given,
    /// [`with_client_pem`](Self::with_client_pem), from files.
    ///
    /// # Errors
    ///
    /// [`EtcdConnectError::InvalidOptions`] naming a file that cannot be
    /// read, or holds more than 1 MiB.
    pub fn with_tls_files(
        self,
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> Result<EtcdOptions, EtcdConnectError> {
        let with_ca = self.with_ca_pem(read_pem(ca)?);
        Ok(match client {
            Some((certificate, key)) => {
                with_ca.with_client_pem(read_pem(certificate)?, read_pem(key)?)
            }
            None => with_ca,
        })
    }

    /// Authenticate as `name` with `password`, as a cluster with
    /// authentication enabled requires.
    pub fn with_user(
        mut self,
        name: impl Into<String>,
        password: impl Into<String>,
    ) -> EtcdOptions {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long connecting to a member may take (default 3 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.connect_timeout = timeout;
        self
    }

    /// A timeout for every request of the client (default: none; the
    /// backends bound their requests themselves).
    pub fn with_request_timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.request_timeout = Some(timeout);
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The etcd-client options these make (TLS, user, timeouts, HTTP/2
    /// pings).
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE.0, HTTP2_KEEP_ALIVE.1);
        if let Some(timeout) = self.request_timeout {
            options = options.with_timeout(timeout);
        }
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        if self.uses_tls() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca_pem {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((certificate, key)) = &self.client_pem {
                tls = tls.identity(etcd_client::Identity::from_pem(certificate, key));
            }
            options = options.with_tls(tls);
        }
        options
    }

    /// A client of the cluster, checked: it can reach a member, TLS and
    /// authentication succeed, and the user may use `prefix` for `access`
    /// (a read of the prefix's keys, counted only, and for
    /// [`Access::ReadWrite`] a transaction that would write the key
    /// `prefix` itself but whose condition never holds, so that nothing is
    /// written). Write permission is checked on that one key: a role that
    /// may write some keys of the range but not that one is refused, and
    /// one that may write only that key passes.
    ///
    /// # Errors
    ///
    /// An [`EtcdConnectError`] saying which of those failed. Nothing is
    /// retried but a request that reached no member, a few times.
    pub async fn connect(&self, prefix: &[u8], access: Access) -> Result<Client, EtcdConnectError> {
        if self.endpoints.is_empty() {
            return Err(EtcdConnectError::InvalidOptions {
                reason: String::from("no endpoints"),
            });
        }
        if prefix.is_empty() {
            return Err(EtcdConnectError::InvalidOptions {
                reason: String::from("an empty prefix (a backend keeps its keys under one)"),
            });
        }
        match self.connect_once(prefix, access).await {
            Ok(client) => Ok(client),
            // Over TLS, a member that refuses the client's certificate
            // closes the connection once the client's handshake is done
            // (TLS 1.3): the client sees its request cancelled, as it
            // would if the member had just gone away. A second try on a
            // fresh connection tells them apart: a member gone refuses
            // the connection then, a refusing one closes it again.
            Err(error) if self.uses_tls() && closed_after_connecting(&error) => {
                match self.connect_once(prefix, access).await {
                    Ok(client) => Ok(client),
                    Err(again) if closed_after_connecting(&again) => Err(EtcdConnectError::Tls {
                        reason: format!(
                            "twice in a row, the member closed the connection right after the \
                             TLS handshake, as one does that refuses the client's certificate \
                             (or its lack of one): {}",
                            chain(&again)
                        ),
                    }),
                    Err(again) => Err(classify(&again, prefix, access)),
                }
            }
            Err(error) => Err(classify(&error, prefix, access)),
        }
    }

    /// Whether the client speaks TLS: it was given a CA or a certificate.
    fn uses_tls(&self) -> bool {
        self.ca_pem.is_some() || self.client_pem.is_some()
    }

    /// One client and one access check, or the error either ended with
    /// (the check's time bounded).
    async fn connect_once(
        &self,
        prefix: &[u8],
        access: Access,
    ) -> Result<Client, etcd_client::Error> {
        let client = Client::connect(self.endpoints.clone(), Some(self.connect_options())).await?;
        match tokio::time::timeout(CHECK_TIMEOUT, check_access(&client, prefix, access)).await {
            Ok(checked) => checked.map(|()| client),
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!(
                    "the access check did not answer within {} s",
                    CHECK_TIMEOUT.as_secs()
                )),
            )),
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key and no password in logs.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_pem.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

/// The requests that prove `access` to `prefix`.
async fn check_access(
    client: &Client,
    prefix: &[u8],
    access: Access,
) -> Result<(), etcd_client::Error> {
    retry_connect_failures(|| {
        let mut kv = client.kv_client();
        let options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        async move { kv.get(prefix.to_vec(), Some(options)).await.map(drop) }
    })
    .await?;
    if access == Access::ReadWrite {
        // A key's create revision is never below zero: the write is
        // checked for permission, and never made.
        let never = Txn::new()
            .when([Compare::create_revision(
                prefix.to_vec(),
                CompareOp::Less,
                0,
            )])
            .and_then([TxnOp::put(prefix.to_vec(), Vec::new(), None)]);
        retry_connect_failures(|| {
            let mut kv = client.kv_client();
            let never = never.clone();
            async move { kv.txn(never).await.map(drop) }
        })
        .await?;
    }
    Ok(())
}

/// Whether `error` is a connection closed under a request once it was
/// made (not a connection refused, not a timeout).
fn closed_after_connecting(error: &etcd_client::Error) -> bool {
    let lower = chain(error).to_lowercase();
    // tonic reports a connection that broke under a request as cancelled,
    // unknown or unavailable, by what broke first.
    let broke = matches!(error, etcd_client::Error::GRpcStatus(status)
        if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable))
        || matches!(error, etcd_client::Error::TransportError(_));
    broke
        && !lower.contains("timeout")
        && !lower.contains("tcp connect")
        && [
            "connection closed",
            "broken pipe",
            "reset",
            "canceled",
            "cancelled",
        ]
        .iter()
        .any(|word| lower.contains(word))
}

/// Sorts an error of connecting or of the access check.
fn classify(error: &etcd_client::Error, prefix: &[u8], access: Access) -> EtcdConnectError {
    let reason = chain(error);
    let lower = reason.to_lowercase();
    if let etcd_client::Error::GRpcStatus(status) = error {
        match status.code() {
            tonic::Code::PermissionDenied => {
                return EtcdConnectError::PermissionDenied {
                    prefix: String::from_utf8_lossy(prefix).into_owned(),
                    access,
                    reason,
                };
            }
            tonic::Code::Unauthenticated => return EtcdConnectError::Unauthenticated { reason },
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                if lower.contains("auth") || lower.contains("user") =>
            {
                return EtcdConnectError::Unauthenticated { reason };
            }
            _ => {}
        }
    }
    // rustls's own words for what failed: a certificate it could not
    // verify, an alert from the member.
    if [
        "invalid peer certificate",
        "certificate",
        "received fatal alert",
        "handshake",
    ]
    .iter()
    .any(|word| lower.contains(word))
    {
        return EtcdConnectError::Tls { reason };
    }
    match error {
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
            EtcdConnectError::InvalidOptions { reason }
        }
        _ => EtcdConnectError::Unreachable { reason },
    }
}

/// An error and its sources, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

fn read_pem(path: &Path) -> Result<Vec<u8>, EtcdConnectError> {
    use std::io::Read;
    let invalid = |reason: String| EtcdConnectError::InvalidOptions {
        reason: format!("{}: {reason}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|error| invalid(error.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|error| invalid(error.to_string()))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(invalid(format!("more than {MAX_PEM_BYTES} bytes")));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn errors_are_sorted_by_what_failed() {
        let sorted = |error| classify(&error, b"p/", Access::Read);
        assert!(matches!(
            sorted(status(tonic::Code::PermissionDenied, "etcdserver: permission denied")),
            EtcdConnectError::PermissionDenied { prefix, access: Access::Read, .. } if prefix == "p/"
        ));
        assert!(matches!(
            sorted(status(
                tonic::Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password"
            )),
            EtcdConnectError::Unauthenticated { .. }
        ));
        assert!(matches!(
            sorted(status(
                tonic::Code::Unavailable,
                "error trying to connect: invalid peer certificate: UnknownIssuer"
            )),
            EtcdConnectError::Tls { .. }
        ));
        for down in [
            status(
                tonic::Code::Unavailable,
                "tcp connect error: Connection refused",
            ),
            status(tonic::Code::Cancelled, "Timeout expired"),
            status(
                tonic::Code::Cancelled,
                "operation was canceled: connection closed",
            ),
            status(
                tonic::Code::DeadlineExceeded,
                "the access check did not answer",
            ),
        ] {
            assert!(
                matches!(sorted(down), EtcdConnectError::Unreachable { .. }),
                "a member down or slow is unreachable"
            );
        }
    }

    #[test]
    fn only_a_connection_closed_under_a_request_is_worth_a_second_look() {
        assert!(closed_after_connecting(&status(
            tonic::Code::Cancelled,
            "operation was canceled: connection closed"
        )));
        assert!(!closed_after_connecting(&status(
            tonic::Code::Cancelled,
            "Timeout expired"
        )));
        assert!(!closed_after_connecting(&status(
            tonic::Code::Unavailable,
            "tcp connect error: Connection refused"
        )));
        assert!(!closed_after_connecting(&status(
            tonic::Code::PermissionDenied,
            "connection closed"
        )));
        assert!(closed_after_connecting(&status(
            tonic::Code::Unknown,
            "transport error: stream closed because of a broken pipe"
        )));
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let options = EtcdOptions::new(["https://127.0.0.1:2379"])
            .with_client_pem("CERT", "THE-KEY")
            .with_user("flotilla", "hunter2");
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("THE-KEY"),
            "{shown}"
        );
        assert!(shown.contains("flotilla"), "{shown}");
    }

    #[tokio::test]
    async fn no_endpoints_or_an_unreadable_file_is_invalid() {
        let none = EtcdOptions::new(Vec::<String>::new());
        assert!(matches!(
            none.connect(b"p/", Access::Read).await,
            Err(EtcdConnectError::InvalidOptions { .. })
        ));
        let some = EtcdOptions::new(["http://127.0.0.1:1"]);
        assert!(matches!(
            some.connect(b"", Access::ReadWrite).await,
            Err(EtcdConnectError::InvalidOptions { reason }) if reason.contains("empty prefix")
        ));
        let missing = EtcdOptions::new(["https://127.0.0.1:1"])
            .with_tls_files(Path::new("/nonexistent/ca.pem"), None);
        assert!(
            matches!(&missing, Err(EtcdConnectError::InvalidOptions { reason }) if reason.contains("/nonexistent/ca.pem")),
            "{missing:?}"
        );
    }
}
