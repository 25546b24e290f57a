//! The Standard Webhooks signature and the retry schedule: pure functions of their inputs.

use std::time::Duration;

use base64::Engine as _;

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the decoded secret: the
/// `webhook-signature` header value.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(id.len() + body.len() + 24);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mac = hmac_sha256::HMAC::mac(&signed, key);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

/// The wait before attempt `attempt + 1` after `attempt` failed ones (`attempt` ≥ 1): `first`
/// doubled per earlier failure, capped at `max`, scaled by `jitter` in [0, 1) to between half
/// and all of it, so receivers that failed together are not retried together.
pub fn backoff(attempt: u32, first: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let full = first.saturating_mul(1u32 << doublings).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_the_specification_example() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_within_half() {
        let (first, max) = (Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(backoff(1, first, max, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(2, first, max, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(3, first, max, 0.0), Duration::from_secs(20));
        assert_eq!(backoff(9, first, max, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX, first, max, 0.0), Duration::from_secs(30));
    }
}
