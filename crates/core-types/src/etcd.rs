//! What the crates' etcd backends share (feature `etcd`): the end of a
//! prefix's key range, and whether a failed request ever reached a member.
//!
//! Each backend speaks its own part of etcd's API; these are the small
//! rules of etcd itself that every one of them needs the same way.

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
}
