//! The sessions of a grant: what they are called, who they say they are, and the
//! per-request deny that ends them. Pure.
//!
//! A trust-policy grant lets the requester call `sts:AssumeRole` until its expiry, but
//! AWS checks a trust policy only at `AssumeRole`: a session issued a second before the
//! expiry lives on for its `DurationSeconds`, up to the role's `MaxSessionDuration`. So
//! every grant also puts an inline policy on the role (name [`policy_name`]) that denies
//! everything to that request's sessions once the grant is over:
//!
//! - at grant: [`deny_document`] with `revoked = false`, "deny after `expires_at`";
//! - on an early end (revoke, deletion, a failed grant, an execution that stopped):
//!   `revoked = true` adds "deny now" beside it;
//! - it is removed only once no session of the grant can still be alive: after
//!   `expires_at` (no session can be issued later: the trust statement's own condition),
//!   plus the role's `MaxSessionDuration`, plus a grace for IAM's propagation.
//!
//! Sessions are told apart by name, not by person: every grant requires its own session
//! name ([`session_name`], the request's), so a deny keyed on `aws:userid` =
//! `<role id>:<session name>` ends this grant's sessions and never a later grant's of the
//! same person on the same role. The state machine writes and removes the deny itself
//! (`deploy/aws/aws-jit.yaml` builds the same documents; the worker checks the one in IAM
//! equals [`deny_document`] before it writes any trust statement, and the operator writes
//! the tightened one itself when an execution ended without revoking).
use jiff::Timestamp;
use serde_json::{Value, json};

/// Prefix of the deny policy's name; the rest is the request's UID.
pub const POLICY_PREFIX: &str = "AwsJit-";

/// `Sid` of the "deny after the expiry" statement.
pub const EXPIRE_SID: &str = "AwsJitSessionsExpire";
/// `Sid` of the "deny now" statement an early end adds.
pub const REVOKED_SID: &str = "AwsJitSessionsRevoked";

/// STS's bounds for `RoleSessionName` and `SourceIdentity`.
const STS_MIN: usize = 2;
const STS_MAX: usize = 64;

/// Characters STS allows in `RoleSessionName` and `SourceIdentity` besides ASCII
/// letters and digits (`[\w+=,.@-]`).
const STS_CHARS: &str = "_+=,.@-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(
        "requester {requester:?} cannot be an STS source identity: it is {len} characters once \
         encoded ({encoded:?}), and STS allows at most 64"
    )]
    SourceIdentityTooLong {
        requester: String,
        encoded: String,
        len: usize,
    },
    #[error("requester name is empty")]
    EmptyRequester,
    #[error("request UID {uid:?} cannot name a session (letters, digits and '-' only)")]
    BadUid { uid: String },
}

/// The session name every session of the request's grant must use: the execution's
/// name, `ar-<uid>` (39 characters for a UUID). CloudTrail shows it in every event of
/// the session (`…:assumed-role/<role>/ar-<uid>`), so each AWS action names its request.
pub fn session_name(request_uid: &str) -> Result<String, SessionError> {
    let ok = !request_uid.is_empty()
        && request_uid.len() <= STS_MAX - 3
        && request_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(SessionError::BadUid {
            uid: request_uid.to_owned(),
        });
    }
    Ok(format!("ar-{request_uid}"))
}

/// The name of the request's deny policy on the role (`AwsJit-<uid>`): one per request,
/// so two grants never write the same policy.
pub fn policy_name(request_uid: &str) -> String {
    format!("{POLICY_PREFIX}{request_uid}")
}

/// The `sts:SourceIdentity` the requester's sessions must carry: the Kubernetes
/// username, kept as it is when STS allows it, else every byte STS does not allow
/// becomes `=XX` (and `=` itself `=3D`), so two usernames never share one (`oidc:alice`
/// → `oidc=3Aalice`). STS keeps a source identity through role chaining and puts it on
/// every CloudTrail event of the session.
pub fn source_identity(requester: &str) -> Result<String, SessionError> {
    if requester.is_empty() {
        return Err(SessionError::EmptyRequester);
    }
    // `=` is the escape character: a name with one is always escaped, so no plain name
    // can equal another name's escaped form.
    let plain = requester.len() >= STS_MIN
        && requester.len() <= STS_MAX
        && requester.chars().all(|c| sts_char(c) && c != '=');
    if plain {
        return Ok(requester.to_owned());
    }
    let mut encoded = String::with_capacity(requester.len() * 3);
    for byte in requester.bytes() {
        let c = char::from(byte);
        if byte.is_ascii() && sts_char(c) && c != '=' {
            encoded.push(c);
        } else {
            encoded.push_str(&format!("={byte:02X}"));
        }
    }
    if encoded.len() < STS_MIN {
        // `==` is no escape of anything (an escaped `=` is `=3D`).
        encoded.push_str("==");
    }
    if encoded.len() > STS_MAX {
        return Err(SessionError::SourceIdentityTooLong {
            requester: requester.to_owned(),
            len: encoded.len(),
            encoded,
        });
    }
    Ok(encoded)
}

fn sts_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || STS_CHARS.contains(c)
}

/// The deny policy for the sessions named `session_name`: denied everything after
/// `expires_at`, and with `revoked` at once as well. Both forms have the "deny now"
/// statement, dated [`NEVER`] until revoked and [`ALWAYS`] once revoked: the same length,
/// so a role's inline-policy budget (10,240 characters for all of them) that took the
/// grant's deny always takes its tightening. The expiry statement stays as it is, so the
/// document alone says until when sessions can exist.
pub fn deny_document(session_name: &str, expires_at: &str, revoked: bool) -> Value {
    let sessions = format!("*:{session_name}");
    json!({ "Version": "2012-10-17", "Statement": [
        {
            "Sid": EXPIRE_SID,
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringLike": { "aws:userid": sessions },
                "DateGreaterThan": { "aws:CurrentTime": expires_at },
            },
        },
        {
            "Sid": REVOKED_SID,
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringLike": { "aws:userid": sessions },
                "DateGreaterThan": { "aws:CurrentTime": if revoked { ALWAYS } else { NEVER } },
            },
        },
    ]})
}

/// The "deny now" statement's date while the grant runs: never reached.
pub const NEVER: &str = "9999-12-31T23:59:59Z";
/// Its date once revoked: always passed.
pub const ALWAYS: &str = "1970-01-01T00:00:00Z";

/// What a deny policy read from IAM says about a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyState {
    /// Exactly the "deny after `expires_at`" document.
    Expiring,
    /// Exactly the tightened document: the sessions are denied now.
    Revoked,
    /// Anything else (another expiry, another session, a hand edit).
    Other,
}

/// Compares a deny policy as IAM returns it (JSON, or URL-encoded JSON) with the two
/// documents of this grant. Key order and whitespace do not matter; anything else does.
pub fn deny_state(document: &str, session_name: &str, expires_at: &str) -> DenyState {
    let Ok(parsed) = crate::grant::trust_policy::document::decode_json(document) else {
        return DenyState::Other;
    };
    if parsed == deny_document(session_name, expires_at, false) {
        DenyState::Expiring
    } else if parsed == deny_document(session_name, expires_at, true) {
        DenyState::Revoked
    } else {
        DenyState::Other
    }
}

/// The expiry a deny policy of ours keeps (its expire statement's time), if it is one.
pub fn deny_expiry(document: &str) -> Option<Timestamp> {
    let parsed = crate::grant::trust_policy::document::decode_json(document).ok()?;
    parsed
        .get("Statement")?
        .as_array()?
        .iter()
        .find(|s| s.get("Sid").and_then(Value::as_str) == Some(EXPIRE_SID))?
        .pointer("/Condition/DateGreaterThan/aws:CurrentTime")?
        .as_str()?
        .parse()
        .ok()
}

/// How the requester uses a grant: the `aws sts assume-role` command, run with the
/// requester's own credentials (the principal the grant names).
pub fn assume_role_command(role_arn: &str, session_name: &str, source_identity: &str) -> String {
    format!(
        "aws sts assume-role --role-arn {role_arn} --role-session-name {session_name} \
         --source-identity {source_identity}"
    )
}

/// A `~/.aws/config` profile for the grant. The AWS CLI's own `role_arn` profiles
/// cannot set a source identity (botocore#2486), so the profile runs the assume-role
/// command as its `credential_process`, with the requester's `source_profile`
/// credentials (`default` unless they change it).
pub fn config_profile(
    profile: &str,
    role_arn: &str,
    session_name: &str,
    source_identity: &str,
) -> String {
    let command = assume_role_command(role_arn, session_name, source_identity);
    format!(
        "[profile {profile}]\ncredential_process = {command} --profile default --output json \
         --query \"{{Version:`1`,AccessKeyId:Credentials.AccessKeyId,\
         SecretAccessKey:Credentials.SecretAccessKey,SessionToken:Credentials.SessionToken,\
         Expiration:Credentials.Expiration}}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b5e8c2a-4c1d-4e3f-9a7b-6d5c4b3a2f10";

    #[test]
    fn session_names_are_the_execution_name_and_fit_sts() {
        let name = session_name(UID).unwrap();
        assert_eq!(name, format!("ar-{UID}"));
        assert!(name.len() <= STS_MAX && name.chars().all(sts_char));
        for bad in ["", "a b", "x/y", &"a".repeat(62)] {
            assert!(session_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_identity_keeps_sts_safe_names_and_encodes_the_rest_injectively() {
        assert_eq!(source_identity("alice").unwrap(), "alice");
        assert_eq!(
            source_identity("alice@example.com").unwrap(),
            "alice@example.com"
        );
        assert_eq!(source_identity("oidc:alice").unwrap(), "oidc=3Aalice");
        // `=` is always escaped: `oidc=3Aalice` itself stays distinct.
        assert_eq!(source_identity("oidc=3Aalice").unwrap(), "oidc=3D3Aalice");
        assert_eq!(source_identity("a:=").unwrap(), "a=3A=3D");
        assert_eq!(source_identity("a\0").unwrap(), "a=00");
        assert_ne!(
            source_identity("oidc:alice").unwrap(),
            source_identity("oidc_alice").unwrap()
        );
        assert_eq!(source_identity("é1").unwrap(), "=C3=A91");
        assert_eq!(source_identity("a").unwrap(), "a==");
        // Injective over a sample of tricky names.
        let names = [
            "a",
            "a\0",
            "a=",
            "a==",
            "=",
            "oidc:alice",
            "oidc=3Aalice",
            "a b",
            "a=20b",
        ];
        let encoded: std::collections::BTreeSet<String> =
            names.iter().map(|n| source_identity(n).unwrap()).collect();
        assert_eq!(encoded.len(), names.len(), "{encoded:?}");
        let long = format!("oidc:{}", "a".repeat(60));
        assert!(matches!(
            source_identity(&long),
            Err(SessionError::SourceIdentityTooLong { .. })
        ));
        assert_eq!(source_identity(""), Err(SessionError::EmptyRequester));
        for name in ["alice", "oidc:alice", "system:serviceaccount:ns:sa", "é1"] {
            let si = source_identity(name).unwrap();
            assert!(
                si.len() >= STS_MIN && si.len() <= STS_MAX && si.chars().all(sts_char),
                "{si}"
            );
        }
    }

    #[test]
    fn deny_documents_key_on_the_session_and_keep_the_expiry_when_tightened() {
        let name = session_name(UID).unwrap();
        let expiring = deny_document(&name, "2026-12-01T14:00:00Z", false);
        let revoked = deny_document(&name, "2026-12-01T14:00:00Z", true);
        assert_eq!(expiring["Statement"].as_array().unwrap().len(), 2);
        assert_eq!(revoked["Statement"].as_array().unwrap().len(), 2);
        assert_eq!(
            expiring.to_string().len(),
            revoked.to_string().len(),
            "tightening never needs room the grant did not take"
        );
        assert_eq!(
            revoked["Statement"][0], expiring["Statement"][0],
            "tightening keeps the expiry statement as it was"
        );
        assert_eq!(
            revoked["Statement"][1]["Condition"],
            json!({"StringLike": {"aws:userid": format!("*:ar-{UID}")},
                   "DateGreaterThan": {"aws:CurrentTime": "1970-01-01T00:00:00Z"}})
        );
        assert_eq!(
            expiring["Statement"][1]["Condition"]["DateGreaterThan"]["aws:CurrentTime"],
            "9999-12-31T23:59:59Z"
        );
        let text = expiring.to_string();
        assert_eq!(
            deny_state(&text, &name, "2026-12-01T14:00:00Z"),
            DenyState::Expiring
        );
        assert_eq!(
            deny_state(&revoked.to_string(), &name, "2026-12-01T14:00:00Z"),
            DenyState::Revoked
        );
        assert_eq!(
            deny_state(&text, &name, "2026-12-01T15:00:00Z"),
            DenyState::Other,
            "a later expiry than the grant's is not this grant's deny"
        );
        assert_eq!(
            deny_state(&text, "ar-other", "2026-12-01T14:00:00Z"),
            DenyState::Other
        );
        let encoded: String =
            percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(
            deny_state(&encoded, &name, "2026-12-01T14:00:00Z"),
            DenyState::Expiring,
            "IAM returns documents URL-encoded"
        );
        assert_eq!(deny_state("not json", &name, "x"), DenyState::Other);
        assert_eq!(
            deny_expiry(&revoked.to_string()),
            Some("2026-12-01T14:00:00Z".parse().unwrap())
        );
        assert_eq!(deny_expiry("{}"), None);
    }

    /// The figures the docs quote: what one grant costs in each of IAM's size limits,
    /// and so how many grants of one role fit at once.
    #[test]
    fn what_a_grant_costs_in_each_iam_limit() {
        use crate::grant::trust_policy::document::{self as trust_policy, SessionTerms};
        let name = session_name(UID).unwrap();
        let empty = trust_policy::parse(r#"{"Version":"2012-10-17","Statement":[]}"#).unwrap();
        let terms = SessionTerms {
            session_name: name.clone(),
            source_identity: "alice".into(),
        };
        let one = trust_policy::grant(
            &empty,
            UID,
            "arn:aws:iam::123456789012:user/alice",
            &terms,
            "2026-12-01T14:00:00Z".parse().unwrap(),
            usize::MAX,
        )
        .unwrap();
        let statement = trust_policy::to_json(&one).len() - trust_policy::to_json(&empty).len();
        let expiring = deny_document(&name, "2026-12-01T14:00:00Z", false)
            .to_string()
            .len();
        let revoked = deny_document(&name, "2026-12-01T14:00:00Z", true)
            .to_string()
            .len();
        assert_eq!((statement, expiring, revoked), (358, 483, 483));
        // With a 100-character base statement of the role's own (and a comma each):
        let fit =
            |limit: usize| (limit - trust_policy::to_json(&empty).len() - 100) / (statement + 1);
        assert_eq!((fit(2048), fit(4096)), (5, 11));
        // Every inline policy of a role shares 10,240 characters.
        assert_eq!(10_240 / expiring, 21);
    }

    #[test]
    fn the_profile_and_command_name_the_session_and_the_person() {
        let cmd = assume_role_command("arn:aws:iam::1:role/admin", "ar-x", "alice");
        assert!(cmd.contains("--role-session-name ar-x"), "{cmd}");
        assert!(cmd.contains("--source-identity alice"), "{cmd}");
        let profile = config_profile("jit", "arn:aws:iam::1:role/admin", "ar-x", "alice");
        assert!(profile.starts_with("[profile jit]\n"), "{profile}");
        assert!(
            profile.contains(&format!("credential_process = {cmd} --profile default")),
            "{profile}"
        );
        assert!(profile.contains("Version:`1`"), "{profile}");
    }
}
