//! WeChat request signatures: sha1 over the sorted, concatenated parts, compared in constant time.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// The lowercase hex sha1 of `parts` sorted and concatenated (`signature` uses token, timestamp and
/// nonce; `msg_signature` adds the `Encrypt` value).
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Whether `given` (hex, any case) is the signature of `parts`, compared in constant time.
pub fn verify(given: &str, parts: &[&str]) -> bool {
    let expected = sign(parts);
    let given = given.trim().to_ascii_lowercase();
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether `timestamp` (unix seconds, as sent) is within `max_skew_secs` of `now`.
pub fn timestamp_is_fresh(timestamp: &str, now: i64, max_skew_secs: u64) -> bool {
    match timestamp.trim().parse::<i64>() {
        Ok(ts) => now.abs_diff(ts) <= max_skew_secs,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ../shared/wechat/test-vectors.md, V1 (official message-push doc), Token AAAAA.
    #[test]
    fn v1_get_verification_signature() {
        assert_eq!(
            sign(&["AAAAA", "1714036504", "1514711492"]),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
        assert!(verify(
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            &["AAAAA", "1714036504", "1514711492"]
        ));
    }

    #[test]
    fn v1_plaintext_post_signature() {
        assert_eq!(
            sign(&["AAAAA", "1714037059", "486452656"]),
            "899cf89e464efb63f54ddac96b0a0a235f53aa78"
        );
    }

    #[test]
    fn v1_safe_mode_msg_signature() {
        let encrypt = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";
        assert_eq!(
            sign(&["AAAAA", "1714112445", "415670741", encrypt]),
            "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3"
        );
        assert_eq!(
            sign(&["AAAAA", "1714112445", "415670741"]),
            "6c5c811b55cc85e0e1b54100749188c20beb3f5d"
        );
    }

    #[test]
    fn silenceper_abc_vector() {
        assert_eq!(
            sign(&["a", "b", "c"]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn verify_refuses_wrong_short_and_empty_signatures() {
        let parts = ["AAAAA", "1714036504", "1514711492"];
        assert!(verify("F464B24FC39322E44B38AA78F5EDD27BD1441696", &parts));
        assert!(!verify("f464b24fc39322e44b38aa78f5edd27bd1441697", &parts));
        assert!(!verify("f464b24f", &parts));
        assert!(!verify("", &parts));
        assert!(!verify(
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
            &["AAAAB", "1714036504", "1514711492"]
        ));
    }

    #[test]
    fn timestamp_freshness() {
        assert!(timestamp_is_fresh("1000", 1000, 0));
        assert!(timestamp_is_fresh("400", 1000, 600));
        assert!(timestamp_is_fresh("1600", 1000, 600));
        assert!(!timestamp_is_fresh("399", 1000, 600));
        assert!(!timestamp_is_fresh("1601", 1000, 600));
        assert!(!timestamp_is_fresh("", 1000, 600));
        assert!(!timestamp_is_fresh("12ab", 1000, 600));
        assert!(!timestamp_is_fresh(
            "-9223372036854775808",
            1000,
            u64::MAX / 2
        ));
        assert!(!timestamp_is_fresh("99999999999999999999999", 1000, 600));
    }
}
