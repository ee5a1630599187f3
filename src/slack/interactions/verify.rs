//! Slack request signing (<https://api.slack.com/authentication/verifying-requests-from-slack>):
//! `X-Slack-Signature: v0=hex(HMAC-SHA256(signing_secret, "v0:{timestamp}:{raw body}"))`
//! over the raw body, with `X-Slack-Request-Timestamp` in Unix seconds.
//!
//! A request is accepted only when its timestamp is inside the replay window (at most
//! [`MAX_AGE_SECS`] old, at most [`MAX_FUTURE_SKEW_SECS`] ahead of our clock) and its
//! signature matches. The window is checked here with an explicit `now` (so it is
//! unit-tested); the signature itself is checked by slack-morphism's
//! `SlackEventSignatureVerifier` (HMAC-SHA256, constant-time comparison), which also
//! re-checks a ±5 minute window against the real clock.
//!
//! The tests sign with an independent implementation (hmac + sha2, test-only:
//! `tests/support/slack_sign.rs`), checked here against Slack's published example and
//! RFC 4231, so signer and verifier are two implementations.
use std::fmt;

use slack_morphism::SlackSigningSecret;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

/// Header names (HTTP headers are case-insensitive; these are the canonical lower-case).
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

/// A request older than this is a replay (Slack's own recommendation: 5 minutes).
pub const MAX_AGE_SECS: i64 = 5 * 60;
/// How far ahead of our clock a timestamp may be (clock skew), before it is refused.
pub const MAX_FUTURE_SKEW_SECS: i64 = 60;

/// The signing secret of the Slack app. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct SigningSecret(String);

impl SigningSecret {
    pub fn new(secret: impl Into<String>) -> SigningSecret {
        SigningSecret(secret.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningSecret(<redacted, {} bytes>)", self.0.len())
    }
}

/// Why a request was refused. The `Display` text is safe to log: it never holds the
/// secret, the signature or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no signing secret is configured")]
    NoSecret,
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{TIMESTAMP_HEADER} is not a Unix timestamp")]
    BadTimestamp,
    #[error("request timestamp is {0}s old (more than {MAX_AGE_SECS}s): refused as a replay")]
    Stale(i64),
    #[error("request timestamp is {0}s in the future (more than {MAX_FUTURE_SKEW_SECS}s)")]
    Future(i64),
    #[error("signature does not match")]
    BadSignature,
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks `timestamp` (the header's value) against the replay window at `now`.
pub fn check_window(timestamp: &str, now: i64) -> Result<i64, Refusal> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refusal::BadTimestamp)?;
    let age = now.saturating_sub(ts);
    if age > MAX_AGE_SECS {
        return Err(Refusal::Stale(age));
    }
    if -age > MAX_FUTURE_SKEW_SECS {
        return Err(Refusal::Future(-age));
    }
    Ok(ts)
}

/// Verifies one request: headers as received (`None` when absent) and the raw body.
/// Window first (cheap, and a stale request is refused even if well signed), then the
/// signature.
pub fn verify(
    secret: &SigningSecret,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), Refusal> {
    if secret.0.is_empty() {
        return Err(Refusal::NoSecret);
    }
    let timestamp = timestamp.ok_or(Refusal::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(Refusal::Missing(SIGNATURE_HEADER))?;
    check_window(timestamp, now_unix())?;
    // Slack signs the raw bytes; a body that is not UTF-8 cannot be a form Slack sent.
    let body = std::str::from_utf8(body).map_err(|_| Refusal::BadSignature)?;
    SlackEventSignatureVerifier::new(&SlackSigningSecret::new(secret.0.clone()))
        .verify(signature, body, timestamp)
        .map_err(|_| Refusal::BadSignature)
}

/// The tests' signer (not the verifier's code).
#[cfg(test)]
#[path = "../../../tests/support/slack_sign.rs"]
mod slack_sign;

#[cfg(test)]
mod tests {
    use super::slack_sign::{hmac_sha256, signature};
    use super::*;

    /// Slack's published example (docs: "Verifying requests from Slack").
    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: &str = "1531420618";
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const BODY: &[u8] = b"payload=%7B%22type%22%3A%22block_actions%22%7D";

    fn secret() -> SigningSecret {
        SigningSecret::new(SECRET)
    }

    #[test]
    fn signature_matches_slacks_published_example() {
        assert_eq!(
            signature(SLACK_SECRET, SLACK_TS, SLACK_BODY.as_bytes()),
            SLACK_SIG
        );
    }

    #[test]
    fn signature_matches_rfc4231_hmac_sha256_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slacks_example_is_refused_today_as_a_replay() {
        // Correctly signed, but from 2018.
        assert!(matches!(
            verify(
                &SigningSecret::new(SLACK_SECRET),
                Some(SLACK_TS),
                Some(SLACK_SIG),
                SLACK_BODY.as_bytes()
            ),
            Err(Refusal::Stale(_))
        ));
    }

    #[test]
    fn a_fresh_correctly_signed_request_is_accepted() {
        let ts = now_unix().to_string();
        let sig = signature(SECRET, &ts, BODY);
        assert_eq!(verify(&secret(), Some(&ts), Some(&sig), BODY), Ok(()));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let ts = now_unix().to_string();
        let sig = signature(SECRET, &ts, BODY);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&secret(), Some(&ts), Some(&sig), &tampered),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_tampered_timestamp_is_refused() {
        let ts = now_unix();
        let sig = signature(SECRET, &ts.to_string(), BODY);
        let other = (ts - 1).to_string();
        assert_eq!(
            verify(&secret(), Some(&other), Some(&sig), BODY),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn the_wrong_secret_is_refused() {
        let ts = now_unix().to_string();
        let sig = signature("another-secret-entirely", &ts, BODY);
        assert_eq!(
            verify(&secret(), Some(&ts), Some(&sig), BODY),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn malformed_and_missing_signatures_are_refused() {
        let ts = now_unix().to_string();
        let good = signature(SECRET, &ts, BODY);
        for bad in [
            "",
            "v0=",
            "v1=",
            &good[..good.len() - 1],
            &good.replace("v0=", "v1="),
            &good.to_uppercase(),
            &format!("{good}00"),
        ] {
            assert_eq!(
                verify(&secret(), Some(&ts), Some(bad), BODY),
                Err(Refusal::BadSignature),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify(&secret(), Some(&ts), None, BODY),
            Err(Refusal::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify(&secret(), None, Some(&good), BODY),
            Err(Refusal::Missing(TIMESTAMP_HEADER))
        );
    }

    #[test]
    fn an_empty_secret_accepts_nothing() {
        let ts = now_unix().to_string();
        let sig = signature("", &ts, BODY);
        assert_eq!(
            verify(&SigningSecret::new(""), Some(&ts), Some(&sig), BODY),
            Err(Refusal::NoSecret)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_even_when_well_signed() {
        let now = now_unix();
        for (offset, stale) in [
            (-(MAX_AGE_SECS + 1), true),
            (-3600, true),
            (MAX_FUTURE_SKEW_SECS + 1, false),
            (3600, false),
        ] {
            let ts = (now + offset).to_string();
            let sig = signature(SECRET, &ts, BODY);
            let got = verify(&secret(), Some(&ts), Some(&sig), BODY);
            if stale {
                assert!(matches!(got, Err(Refusal::Stale(_))), "{offset}: {got:?}");
            } else {
                assert!(matches!(got, Err(Refusal::Future(_))), "{offset}: {got:?}");
            }
        }
    }

    #[test]
    fn the_window_edges() {
        let now = 1_700_000_000;
        assert_eq!(
            check_window(&(now - MAX_AGE_SECS).to_string(), now),
            Ok(now - MAX_AGE_SECS)
        );
        assert_eq!(
            check_window(&(now - MAX_AGE_SECS - 1).to_string(), now),
            Err(Refusal::Stale(MAX_AGE_SECS + 1))
        );
        assert_eq!(
            check_window(&(now + MAX_FUTURE_SKEW_SECS).to_string(), now),
            Ok(now + MAX_FUTURE_SKEW_SECS)
        );
        assert_eq!(
            check_window(&(now + MAX_FUTURE_SKEW_SECS + 1).to_string(), now),
            Err(Refusal::Future(MAX_FUTURE_SKEW_SECS + 1))
        );
        for bad in ["", "abc", "1.5", "99999999999999999999999"] {
            assert_eq!(
                check_window(bad, now),
                Err(Refusal::BadTimestamp),
                "{bad:?}"
            );
        }
        // Extreme values do not overflow.
        assert!(check_window(&i64::MIN.to_string(), now).is_err());
        assert!(check_window(&i64::MAX.to_string(), now).is_err());
    }

    #[test]
    fn the_secret_is_never_in_debug_output() {
        let s = format!("{:?}", secret());
        assert!(!s.contains(SECRET), "{s}");
    }
}
