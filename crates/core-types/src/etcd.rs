//! What the crates' etcd backends share (feature `etcd`): the end of a
//! prefix's key range, whether a failed request ever reached a member, and
//! sending such a request again.
//!
//! Each backend speaks its own part of etcd's API; these are the small
//! rules of etcd itself that every one of them needs the same way, and
//! [`EtcdOptions`], how every one of them connects (TLS, a client
//! certificate, a user and password).

mod options;

pub use options::{Access, EtcdConnectError, EtcdOptions};

/// The end of the range of every key that begins with `prefix`, by etcd's
/// rule: the prefix with its last byte below `0xff` incremented and what
/// follows dropped. A prefix of `0xff` bytes only (or an empty one) has no
/// such end: `[0]`, which etcd reads as "every key from the start on".
///
/// ```
/// use flotilla_core_types::etcd::prefix_end;
///
/// assert_eq!(prefix_end(b"services/"), b"services0");
/// assert_eq!(prefix_end(b"a\xff"), b"b");
/// assert_eq!(prefix_end(b""), [0]);
/// ```
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether `error` says no member could be connected to at all: the
/// request never arrived, so sending it again at once is safe and lets
/// the client's balancer move on to a live member.
pub fn is_connect_failure(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect")
        }
        _ => false,
    }
}

/// How often [`retry_connect_failures`] sends a request again, and the
/// pause before each retry: about what a client's balancer needs to mark a
/// dead member and pick another.
pub const CONNECT_RETRIES: u32 = 3;
/// See [`CONNECT_RETRIES`].
pub const CONNECT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends a request (`attempt` makes it, once per try) and, when it failed
/// to connect to any member ([`is_connect_failure`]), sends it again, up
/// to [`CONNECT_RETRIES`] times with [`CONNECT_RETRY_PAUSE`] between.
/// Any other answer, success or error, is returned as it is.
///
/// Only for requests that are safe to repeat: a request that never
/// arrived is, whatever it does. Bound the whole with a timeout of your
/// own; this adds at most the pauses.
pub async fn retry_connect_failures<T, F, Fut>(mut attempt: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(error) if retries < CONNECT_RETRIES && is_connect_failure(&error) => {
                retries += 1;
                tracing::debug!(%error, retries, "etcd member unreachable; trying again");
                tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcds_rule() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn only_a_failure_to_connect_is_a_connect_failure() {
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(is_connect_failure(&status(
            tonic::Code::Unavailable,
            "tcp connect error: Connection refused"
        )));
        assert!(!is_connect_failure(&status(
            tonic::Code::Unavailable,
            "etcdserver: leader changed"
        )));
        assert!(!is_connect_failure(&status(
            tonic::Code::DeadlineExceeded,
            "connect deadline"
        )));
        assert!(!is_connect_failure(&etcd_client::Error::InvalidArgs(
            String::from("connect")
        )));
    }

    fn refused() -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_arrived_is_sent_again_a_few_times() {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Two connect failures, then an answer.
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let answer = retry_connect_failures(|| async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(refused()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(7));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), CONNECT_RETRY_PAUSE * 2);
        // Always refused: the last failure, after CONNECT_RETRIES retries.
        let tries = AtomicU32::new(0);
        let answer: Result<(), _> = retry_connect_failures(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(refused())
        })
        .await;
        assert!(answer.is_err_and(|error| is_connect_failure(&error)));
        assert_eq!(tries.load(Ordering::SeqCst), CONNECT_RETRIES + 1);
        // Any other error is not retried.
        let tries = AtomicU32::new(0);
        let answer: Result<(), _> = retry_connect_failures(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(etcd_client::Error::InvalidArgs(String::from("bad key")))
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
