//! Slack's request signature, computed as Slack documents it
//! (<https://api.slack.com/authentication/verifying-requests-from-slack>):
//! `v0=hex(HMAC-SHA256(signing_secret, "v0:{timestamp}:{raw body}"))`.
//!
//! What the tests sign with, and independent of what the endpoint verifies with
//! (slack-morphism's `SlackEventSignatureVerifier`): the hmac and sha2 crates here, so
//! signer and verifier are two implementations. Test-only: `aws_jit`'s unit tests
//! (`interactions::verify`) and the e2e support (`slack_interactions`) include this file.
use hmac::{KeyInit, Mac};

/// `v0=<hex HMAC-SHA256>` of `v0:{timestamp}:{body}`: what Slack sends.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(body.len() + timestamp.len() + 4);
    message.extend_from_slice(b"v0:");
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b':');
    message.extend_from_slice(body);
    format!(
        "v0={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &message))
    )
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}
