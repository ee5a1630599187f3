//! Edits to an IAM role's trust policy for the `TrustPolicy` grant method.
//!
//! A grant adds one statement to the role's trust policy that lets the requester call
//! `sts:AssumeRole` until an expiry, enforced by AWS itself through a
//! `DateLessThan aws:CurrentTime` condition, and only as a named session: the statement
//! requires `sts:SourceIdentity` (the person) and `sts:RoleSessionName` (the request),
//! and allows `sts:SetSourceIdentity` for that. The condition ends new sessions at the
//! expiry; the request's deny policy ([`crate::grant::trust_policy::session`]) ends the live ones. A revoke
//! removes the statement and sweeps every expired statement of ours.
//!
//! This module is pure: it turns a policy document (as `GetRole` returns it) into a new
//! document (for `UpdateAssumeRolePolicy`). The read-modify-write itself, and keeping two
//! writers to one role apart, is the worker's job (a FIFO queue grouped by role).
//!
//! # What is "ours"
//!
//! A statement is ours only if it has exactly the shape [`grant`] writes: the keys `Sid`,
//! `Effect`, `Principal`, `Action` and `Condition` and nothing else; a `Sid` of
//! [`SID_PREFIX`] followed by one or more ASCII letters or digits; `Effect` `Allow`;
//! `Principal` `{"AWS": "<string>"}`; `Action` `["sts:AssumeRole",
//! "sts:SetSourceIdentity"]`; and `Condition` `{"DateLessThan": {"aws:CurrentTime":
//! "<timestamp>"}, "StringEquals": {"sts:SourceIdentity": "<s>", "sts:RoleSessionName":
//! "<s>"}}`, or the shape of releases before named sessions (`Action` `sts:AssumeRole`,
//! the `DateLessThan` alone), so grants made before an upgrade are still revoked and
//! swept. Anything else, including a
//! statement whose `Sid` starts with `AwsJit` but whose shape differs (a hand edit, a
//! `Deny`, an extra key), is foreign: it is never changed, never removed, never swept,
//! and [`grant`] refuses to overwrite it. A person who widened one of our statements by
//! hand has made it theirs; silently deleting it, or silently keeping it alive past our
//! control, would both be surprises, so we leave it and report it
//! ([`RevokeReport::lookalikes`]) for the operator to log.
//!
//! The principal is not part of ownership: IAM rewrites a principal ARN to the
//! principal's unique ID (`AIDA…`/`AROA…`) once that user or role is deleted, and such a
//! statement must still be swept.
//!
//! # Fidelity
//!
//! Foreign statements are kept as [`serde_json::Value`]s with serde_json's
//! `preserve_order`, so their keys keep their order and their values their meaning. The
//! `Statement` element may be a single object or an array in IAM; a document we did not
//! change is written back exactly as it came (a single object stays a single object), a
//! changed one always gets an array. Every other top-level key (`Version`, `Id`, …)
//! is kept in place.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jiff::{RoundMode, Timestamp, TimestampRound, Unit};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

/// IAM's default size limit for a role trust policy, in characters of minified JSON.
/// An account can raise it to 4096 through Service Quotas; pass the raised value as
/// `limit` to [`grant`]. moto does not enforce any limit, so this module must.
pub const DEFAULT_SIZE_LIMIT: usize = 2048;

/// Every statement of ours has a `Sid` that starts with this; the rest is the request's
/// UID without dashes. Sweeping looks for this prefix (and our exact shape).
pub const SID_PREFIX: &str = "AwsJit";

/// Longest request UID we accept (after removing dashes). Kubernetes UIDs are UUIDs
/// (32 hex digits); the bound only keeps a malformed UID from eating the policy's
/// size budget.
const MAX_UID_CHARS: usize = 64;

/// IAM's maximum ARN length.
const MAX_ARN_CHARS: usize = 2048;

const ACTION: &str = "sts:AssumeRole";
const SET_SOURCE_IDENTITY: &str = "sts:SetSourceIdentity";
const CONDITION_OPERATOR: &str = "DateLessThan";
const CONDITION_KEY: &str = "aws:CurrentTime";
const SESSION_OPERATOR: &str = "StringEquals";
const SOURCE_IDENTITY_KEY: &str = "sts:SourceIdentity";
const SESSION_NAME_KEY: &str = "sts:RoleSessionName";

/// Why a trust policy could not be read or a grant could not be made. Every variant
/// means "nothing was changed": the caller keeps the document it had.
#[derive(Debug, thiserror::Error)]
pub enum TrustPolicyError {
    /// The percent-decoded document is not UTF-8.
    #[error("trust policy is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    /// The document is not JSON.
    #[error("trust policy is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is JSON but not an object.
    #[error("trust policy is not a JSON object")]
    NotAnObject,
    /// IAM always returns a `Statement`; without it we do not know what we are editing.
    #[error("trust policy has no Statement element")]
    MissingStatement,
    /// `Statement` must be an object or an array of objects.
    #[error("trust policy's Statement is neither an object nor an array of objects")]
    BadStatement,
    /// The request UID cannot become an IAM `Sid` (letters and digits only).
    #[error(
        "request UID {uid:?} cannot form a statement ID: after removing dashes it must be \
         1 to {MAX_UID_CHARS} ASCII letters or digits"
    )]
    InvalidRequestUid {
        /// The UID as given.
        uid: String,
    },
    /// The principal is not an IAM or STS ARN of one account.
    #[error(
        "principal {arn:?} is not an IAM or STS ARN (arn:aws…:iam|sts::<12-digit account>:<resource>, \
         no wildcards)"
    )]
    InvalidPrincipal {
        /// The ARN as given.
        arn: String,
    },
    /// The expiry cannot be written as an IAM date.
    #[error("expiry {expires_at} cannot be written into a trust policy: {reason}")]
    InvalidExpiry {
        /// The expiry as given.
        expires_at: Timestamp,
        /// What is wrong with it.
        reason: String,
    },
    /// A statement with our `Sid` exists but is not in our shape; we never overwrite
    /// what we did not write.
    #[error(
        "trust policy already has a statement with Sid {sid} that aws-jit did not write \
         (its shape differs); refusing to overwrite it"
    )]
    SidConflict {
        /// The conflicting `Sid`.
        sid: String,
    },
    /// The session terms cannot be written (STS: 2 to 64 of `[A-Za-z0-9_+=,.@-]`).
    #[error("{what} {value:?} is not a valid STS value (2 to 64 of A-Z a-z 0-9 _+=,.@-)")]
    InvalidSession {
        /// `session name` or `source identity`.
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// The grant would push the minified policy over IAM's size limit.
    #[error(
        "trust policy would be {size} characters (minified) after this grant, over the limit \
         of {limit}; IAM's default is 2048, raisable to 4096 through Service Quotas, or wait \
         for other grants on this role to end"
    )]
    TooLarge {
        /// Minified size the policy would have had.
        size: usize,
        /// The limit it was checked against.
        limit: usize,
    },
}

/// A parsed trust policy. Build one with [`parse`] (or `str::parse`), change it with
/// [`grant`] and [`revoke`], write it with [`to_json`].
///
/// Invariant: the root object has a `Statement` that is an object or an array of
/// objects. Equality compares meaning: object key order is ignored, array order is not,
/// and a single-object `Statement` differs from a one-element array.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    root: Map<String, Value>,
}

impl Document {
    /// The statements, in document order, whether `Statement` is one object or an array.
    pub fn statements(&self) -> &[Value] {
        match self.root.get("Statement") {
            Some(Value::Array(statements)) => statements,
            Some(single) => std::slice::from_ref(single),
            None => &[],
        }
    }

    /// A copy with `statements` as the `Statement` array, at the position `Statement` had
    /// (inserting an existing key keeps its place with `preserve_order`).
    fn with_statements(&self, statements: Vec<Value>) -> Document {
        let mut root = self.root.clone();
        root.insert("Statement".to_owned(), Value::Array(statements));
        Document { root }
    }
}

impl FromStr for Document {
    type Err = TrustPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for Document {
    /// Minified JSON, as [`to_json`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Value`'s Display is the compact form and cannot fail, unlike `to_string`.
        fmt::Display::fmt(&Value::Object(self.root.clone()), f)
    }
}

/// Who a grant's sessions must say they are: `sts:SourceIdentity` and
/// `sts:RoleSessionName` (see [`crate::grant::trust_policy::session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTerms {
    pub session_name: String,
    pub source_identity: String,
}

impl SessionTerms {
    fn validate(&self) -> Result<(), TrustPolicyError> {
        let ok = |v: &str| {
            (2..=64).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        };
        for (what, value) in [
            ("session name", &self.session_name),
            ("source identity", &self.source_identity),
        ] {
            if !ok(value) {
                return Err(TrustPolicyError::InvalidSession {
                    what,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }
}

/// One statement of ours, as found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantInfo {
    /// The statement's `Sid` (`AwsJit` + request UID without dashes).
    pub sid: String,
    /// The `Principal.AWS` value: the requester's ARN, or IAM's unique ID for it if the
    /// principal was deleted since.
    pub principal: String,
    /// When AWS stops honouring the statement (`DateLessThan aws:CurrentTime`).
    pub expires_at: Timestamp,
    /// The session terms the statement requires; `None` for a statement written before
    /// sessions were named (it is still ours: revoked and swept alike).
    pub session: Option<SessionTerms>,
}

/// What [`revoke`] or [`sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeReport {
    /// Our statements that were removed, in document order. Empty means the document
    /// was returned unchanged.
    pub removed: Vec<GrantInfo>,
    /// `Sid`s of statements that start with [`SID_PREFIX`] but do not have our shape and
    /// so were left alone. Worth a warning in the log: someone edited them by hand.
    pub lookalikes: Vec<String>,
}

/// Reads a trust policy as IAM's `GetRole` returns it: URL-encoded JSON (RFC 3986
/// percent-encoding, so `+` is a literal plus), or plain JSON as moto and hand-written
/// input give it. Input whose first non-blank character is `{` is taken as plain JSON.
pub fn parse(input: &str) -> Result<Document, TrustPolicyError> {
    let Value::Object(root) = decode_json(input)? else {
        return Err(TrustPolicyError::NotAnObject);
    };
    match root.get("Statement") {
        None => return Err(TrustPolicyError::MissingStatement),
        Some(Value::Object(_)) => {}
        Some(Value::Array(statements)) if statements.iter().all(Value::is_object) => {}
        Some(_) => return Err(TrustPolicyError::BadStatement),
    }
    Ok(Document { root })
}

/// Any IAM policy document as IAM returns it (URL-encoded JSON, or plain JSON as moto
/// gives it), as a JSON value.
pub fn decode_json(input: &str) -> Result<Value, TrustPolicyError> {
    let trimmed = input.trim();
    let json: Cow<'_, str> = if trimmed.starts_with('{') {
        Cow::Borrowed(trimmed)
    } else {
        percent_decode_str(trimmed)
            .decode_utf8()
            .map_err(|_| TrustPolicyError::NotUtf8)?
    };
    Ok(serde_json::from_str::<Value>(&json)?)
}

/// Minified JSON for `UpdateAssumeRolePolicy` (the SDK does any encoding the wire needs).
/// This is also the form whose length IAM checks against the size limit.
pub fn to_json(doc: &Document) -> String {
    doc.to_string()
}

/// The `Sid` of the statement for a request: [`SID_PREFIX`] plus the UID with its dashes
/// removed, because IAM allows only ASCII letters and digits in a `Sid`. Anything else in
/// the UID is refused rather than dropped, so two different UIDs can only map to one
/// `Sid` if they differ in dashes alone (Kubernetes UIDs are UUIDs, so they do not).
pub fn sid_for(request_uid: &str) -> Result<String, TrustPolicyError> {
    let stripped: String = request_uid.chars().filter(|c| *c != '-').collect();
    if stripped.is_empty()
        || stripped.len() > MAX_UID_CHARS
        || !stripped.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(TrustPolicyError::InvalidRequestUid {
            uid: request_uid.to_owned(),
        });
    }
    Ok(format!("{SID_PREFIX}{stripped}"))
}

/// Adds the statement for `request_uid`, letting `principal_arn` assume the role until
/// `expires_at` (truncated to whole seconds, so never later than asked), and only with
/// the `session` terms: its source identity set (`sts:SetSourceIdentity` is allowed for
/// that) and its session name, so every CloudTrail event names the person and the
/// request, and the request's deny policy can end exactly these sessions.
///
/// A statement of ours with the same `Sid` is replaced in place, so a retried grant is
/// idempotent and a re-grant moves the expiry. Fails, leaving `doc` as it is, when the
/// UID or ARN is malformed, when a foreign statement already uses the `Sid`, or when the
/// minified result would exceed `limit` characters ([`DEFAULT_SIZE_LIMIT`] unless the
/// account's quota was raised). Expired statements are not swept here (there is no
/// clock); call [`sweep`] first to make room.
pub fn grant(
    doc: &Document,
    request_uid: &str,
    principal_arn: &str,
    session: &SessionTerms,
    expires_at: Timestamp,
    limit: usize,
) -> Result<Document, TrustPolicyError> {
    let sid = sid_for(request_uid)?;
    validate_principal(principal_arn)?;
    session.validate()?;
    let expiry = format_expiry(expires_at)?;
    let ours = our_statement(&sid, principal_arn, session, &expiry);

    let mut statements = Vec::with_capacity(doc.statements().len() + 1);
    let mut placed = false;
    for statement in doc.statements() {
        if statement_sid(statement) != Some(sid.as_str()) {
            statements.push(statement.clone());
        } else if as_ours(statement).is_none() {
            return Err(TrustPolicyError::SidConflict { sid });
        } else if !placed {
            // Replace the first of ours in place; drop any duplicate (IAM wants unique Sids).
            statements.push(ours.clone());
            placed = true;
        }
    }
    if !placed {
        statements.push(ours);
    }

    let granted = doc.with_statements(statements);
    let size = to_json(&granted).chars().count();
    if size > limit {
        return Err(TrustPolicyError::TooLarge { size, limit });
    }
    Ok(granted)
}

/// Removes the statement for `request_uid` and sweeps every statement of ours whose
/// expiry is at or before `now` (AWS stops honouring `DateLessThan` at the expiry itself,
/// so such a statement is dead weight in the size budget).
///
/// Never fails and is idempotent: when nothing is removed the input is returned as it
/// came (a single-object `Statement` stays one). A malformed `request_uid` cannot name a
/// statement of ours, so it only sweeps. Foreign statements, lookalikes included, are
/// never touched.
///
/// If only our statements were left, the result has `"Statement": []`. We keep it rather
/// than invent a placeholder statement: a role we manage always has its own base
/// statements in practice, and if IAM refuses the empty policy the worker sees the error
/// (while AWS's own expiry still ends the access).
pub fn revoke(doc: &Document, request_uid: &str, now: Timestamp) -> (Document, RevokeReport) {
    let target = sid_for(request_uid).ok();
    remove_where(doc, |info| {
        target.as_deref() == Some(info.sid.as_str()) || info.expires_at <= now
    })
}

/// Sweeps every statement of ours whose expiry is at or before `now`, as [`revoke`] does,
/// without naming a request. Useful before a [`grant`] so expired grants do not count
/// against the size limit.
pub fn sweep(doc: &Document, now: Timestamp) -> (Document, RevokeReport) {
    remove_where(doc, |info| info.expires_at <= now)
}

/// The `Sid`s of statements that start with [`SID_PREFIX`], in document order: ours, and
/// lookalikes (a hand edit, or someone hoping a statement named like ours is left
/// alone). The drift sweeper judges each against the requests.
pub fn prefixed_sids(doc: &Document) -> Vec<String> {
    doc.statements()
        .iter()
        .filter_map(statement_sid)
        .filter(|s| s.starts_with(SID_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Removes every statement whose `Sid` is one of `sids`, whatever its shape (only ever
/// called with [`SID_PREFIX`]ed ones). Returns the document and the `Sid`s removed;
/// foreign statements stay as they are.
pub fn remove_sids(doc: &Document, sids: &[String]) -> (Document, Vec<String>) {
    let mut removed = Vec::new();
    let kept: Vec<Value> = doc
        .statements()
        .iter()
        .filter(|statement| match statement_sid(statement) {
            Some(sid) if sid.starts_with(SID_PREFIX) && sids.iter().any(|s| s == sid) => {
                removed.push(sid.to_owned());
                false
            }
            _ => true,
        })
        .cloned()
        .collect();
    if removed.is_empty() {
        (doc.clone(), removed)
    } else {
        (doc.with_statements(kept), removed)
    }
}

/// Our statements in `doc`, in document order.
pub fn grants(doc: &Document) -> Vec<GrantInfo> {
    doc.statements().iter().filter_map(as_ours).collect()
}

fn remove_where(
    doc: &Document,
    mut remove: impl FnMut(&GrantInfo) -> bool,
) -> (Document, RevokeReport) {
    let mut report = RevokeReport::default();
    let mut kept = Vec::with_capacity(doc.statements().len());
    for statement in doc.statements() {
        match as_ours(statement) {
            Some(info) if remove(&info) => report.removed.push(info),
            Some(_) => kept.push(statement.clone()),
            None => {
                if let Some(sid) = statement_sid(statement).filter(|s| s.starts_with(SID_PREFIX)) {
                    report.lookalikes.push(sid.to_owned());
                }
                kept.push(statement.clone());
            }
        }
    }
    if report.removed.is_empty() {
        (doc.clone(), report)
    } else {
        (doc.with_statements(kept), report)
    }
}

fn statement_sid(statement: &Value) -> Option<&str> {
    statement.get("Sid").and_then(Value::as_str)
}

/// `Some` only for a statement in exactly the shape [`our_statement`] writes, or the
/// shape releases before named sessions wrote (`Action` `sts:AssumeRole` alone, the
/// expiry alone as `Condition`): those grants are still live after an upgrade and must
/// still be revoked and swept.
fn as_ours(statement: &Value) -> Option<GrantInfo> {
    let fields = statement.as_object()?;
    if fields.len() != 5 {
        return None;
    }
    let sid = fields.get("Sid")?.as_str()?;
    let suffix = sid.strip_prefix(SID_PREFIX)?;
    if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    if fields.get("Effect")?.as_str()? != "Allow" {
        return None;
    }
    let principal = single_entry(fields.get("Principal")?, "AWS")?.as_str()?;
    let condition = fields.get("Condition")?.as_object()?;
    let expiry_of = |date: &Value| {
        single_entry(date, CONDITION_KEY)?
            .as_str()?
            .parse::<Timestamp>()
            .ok()
    };
    let (expires_at, session) = match fields.get("Action")? {
        Value::String(action) if action == ACTION && condition.len() == 1 => {
            (expiry_of(condition.get(CONDITION_OPERATOR)?)?, None)
        }
        Value::Array(actions)
            if actions.len() == 2
                && actions[0].as_str() == Some(ACTION)
                && actions[1].as_str() == Some(SET_SOURCE_IDENTITY)
                && condition.len() == 2 =>
        {
            let terms = condition.get(SESSION_OPERATOR)?.as_object()?;
            if terms.len() != 2 {
                return None;
            }
            let session = SessionTerms {
                session_name: terms.get(SESSION_NAME_KEY)?.as_str()?.to_owned(),
                source_identity: terms.get(SOURCE_IDENTITY_KEY)?.as_str()?.to_owned(),
            };
            (
                expiry_of(condition.get(CONDITION_OPERATOR)?)?,
                Some(session),
            )
        }
        _ => return None,
    };
    Some(GrantInfo {
        sid: sid.to_owned(),
        principal: principal.to_owned(),
        expires_at,
        session,
    })
}

/// The value of `key` if `value` is an object with that one key and no other.
fn single_entry<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    if object.len() == 1 {
        object.get(key)
    } else {
        None
    }
}

fn our_statement(sid: &str, principal_arn: &str, session: &SessionTerms, expiry: &str) -> Value {
    serde_json::json!({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": { "AWS": principal_arn },
        "Action": [ACTION, SET_SOURCE_IDENTITY],
        "Condition": {
            CONDITION_OPERATOR: { CONDITION_KEY: expiry },
            SESSION_OPERATOR: {
                SOURCE_IDENTITY_KEY: session.source_identity,
                SESSION_NAME_KEY: session.session_name,
            },
        },
    })
}

/// RFC 3339 in UTC with whole seconds (`2026-11-26T13:00:00Z`), the form IAM documents
/// for date conditions. Rounds down so the grant never outlives what was approved.
fn format_expiry(expires_at: Timestamp) -> Result<String, TrustPolicyError> {
    let invalid = |reason: String| TrustPolicyError::InvalidExpiry { expires_at, reason };
    if expires_at < Timestamp::UNIX_EPOCH {
        return Err(invalid("it is before 1970".to_owned()));
    }
    let whole = expires_at
        .round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Floor),
        )
        .map_err(|e| invalid(e.to_string()))?;
    // Display of a whole-second Timestamp is `YYYY-MM-DDTHH:MM:SSZ`.
    Ok(whole.to_string())
}

/// `arn:<partition>:<iam|sts>::<12-digit account>:<resource>`, where the partition is
/// `aws` or `aws-…` (aws-cn, aws-us-gov, …) and the resource uses only the characters IAM
/// allows in names and paths. Wildcards are refused: a trust-policy principal must name
/// one identity, and `*` would open the role to everyone.
pub fn validate_principal(arn: &str) -> Result<(), TrustPolicyError> {
    let invalid = || TrustPolicyError::InvalidPrincipal {
        arn: arn.to_owned(),
    };
    if arn.len() > MAX_ARN_CHARS {
        return Err(invalid());
    }
    crate::policy::arn::parse(arn)
        .map(|_| ())
        .ok_or_else(invalid)
}

#[cfg(test)]
mod remove_tests {
    use super::*;

    #[test]
    fn statements_named_like_ours_are_removed_by_sid_whatever_their_shape() {
        let doc = parse(
            r#"{"Version":"2012-10-17","Statement":[
            {"Sid":"Ec2","Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"},
            {"Sid":"AwsJitplanted","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:user/mallory"},"Action":"sts:AssumeRole"}]}"#,
        )
        .unwrap();
        assert_eq!(prefixed_sids(&doc), vec!["AwsJitplanted".to_string()]);
        assert!(grants(&doc).is_empty(), "a lookalike is not one of ours");
        let (after, removed) = remove_sids(&doc, &["AwsJitplanted".into(), "Ec2".into()]);
        assert_eq!(removed, vec!["AwsJitplanted".to_string()]);
        assert_eq!(
            after.statements().len(),
            1,
            "foreign statements stay, even if named"
        );
        let (same, none) = remove_sids(&after, &["AwsJitplanted".into()]);
        assert!(none.is_empty());
        assert_eq!(same, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(uid: &str) -> SessionTerms {
        SessionTerms {
            session_name: format!("ar-{uid}"),
            source_identity: "alice".to_owned(),
        }
    }
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;
    use serde_json::json;

    /// RFC 3986 unreserved characters stay; everything else is percent-encoded, as IAM does.
    const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');

    const UID_A: &str = "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e";
    const UID_B: &str = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    const UID_C: &str = "c0ffee00-1111-4222-8333-444455556666";
    const ALICE: &str = "arn:aws:iam::123456789012:user/alice";
    const BOB: &str = "arn:aws:sts::123456789012:assumed-role/Dev/bob@example.com";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn foreign_statements() -> Vec<Value> {
        vec![
            json!({
                "Sid": "Ec2",
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole"
            }),
            json!({
                "Effect": "Allow",
                "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
                    "StringLike": {"token.actions.githubusercontent.com:sub": ["repo:org/*:ref:refs/heads/main"]}
                }
            }),
            // Keys deliberately out of the usual order: order must survive.
            json!({
                "Action": ["sts:AssumeRole", "sts:TagSession"],
                "NotPrincipal": {"AWS": "arn:aws:iam::999999999999:root"},
                "Effect": "Deny",
                "Sid": "DenyOthers"
            }),
        ]
    }

    fn base_doc() -> Document {
        let root =
            json!({"Version": "2012-10-17", "Id": "base", "Statement": foreign_statements()});
        parse(&root.to_string()).unwrap()
    }

    fn compact(values: &[Value]) -> Vec<String> {
        values.iter().map(Value::to_string).collect()
    }

    fn not_ours(doc: &Document) -> Vec<Value> {
        doc.statements()
            .iter()
            .filter(|s| as_ours(s).is_none())
            .cloned()
            .collect()
    }

    #[test]
    fn grant_keeps_foreign_statements_and_adds_ours() {
        let doc = base_doc();
        let expiry = ts("2026-11-26T13:00:00Z");
        let granted = grant(
            &doc,
            UID_A,
            ALICE,
            &terms(UID_A),
            expiry,
            DEFAULT_SIZE_LIMIT,
        )
        .unwrap();
        let statements = granted.statements();
        assert_eq!(statements.len(), 4);
        assert_eq!(compact(&statements[..3]), compact(&foreign_statements()));
        assert_eq!(
            statements[3].to_string(),
            json!({
                "Sid": "AwsJit0b5f7a4e9c1d4e2b8f3a1d2c3b4a5f6e",
                "Effect": "Allow",
                "Principal": {"AWS": ALICE},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
                "Condition": {
                    "DateLessThan": {"aws:CurrentTime": "2026-11-26T13:00:00Z"},
                    "StringEquals": {
                        "sts:SourceIdentity": "alice",
                        "sts:RoleSessionName": format!("ar-{UID_A}"),
                    }
                }
            })
            .to_string()
        );
        assert_eq!(
            grants(&granted),
            vec![GrantInfo {
                sid: "AwsJit0b5f7a4e9c1d4e2b8f3a1d2c3b4a5f6e".into(),
                principal: ALICE.into(),
                expires_at: expiry,
                session: Some(terms(UID_A)),
            }]
        );
        // Top-level keys kept, in order, and the output is minified.
        let out = to_json(&granted);
        assert!(
            out.starts_with(r#"{"Version":"2012-10-17","Id":"base","Statement":[{"Sid":"Ec2""#)
        );
        assert!(!out.contains(' '));
    }

    #[test]
    fn url_encoded_input_parses() {
        let pretty = serde_json::to_string_pretty(&json!({
            "Version": "2012-10-17",
            "Statement": foreign_statements(),
        }))
        .unwrap();
        let encoded = utf8_percent_encode(&pretty, RFC3986).to_string();
        assert!(encoded.starts_with("%7B%0A"));
        let from_encoded = parse(&encoded).unwrap();
        let from_plain = parse(&pretty).unwrap();
        assert_eq!(from_encoded, from_plain);
        assert_eq!(to_json(&from_encoded), to_json(&from_plain));
        assert_eq!(
            compact(from_encoded.statements()),
            compact(&foreign_statements())
        );
    }

    #[test]
    fn plus_is_literal_in_rfc3986_input() {
        let plain = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:user/a+b"},"Action":"sts:AssumeRole"}}"#;
        let encoded = utf8_percent_encode(plain, RFC3986)
            .to_string()
            .replace("%2B", "+");
        assert_eq!(parse(&encoded).unwrap(), parse(plain).unwrap());
    }

    #[test]
    fn single_object_statement_parses_and_stays_single_until_changed() {
        let plain = r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}}"#;
        let doc = parse(plain).unwrap();
        assert_eq!(doc.statements().len(), 1);
        let now = ts("2026-01-01T00:00:00Z");
        let (same, report) = revoke(&doc, UID_A, now);
        assert!(report.removed.is_empty());
        assert_eq!(to_json(&same), plain);

        let granted = grant(
            &doc,
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            DEFAULT_SIZE_LIMIT,
        )
        .unwrap();
        assert!(matches!(granted.root.get("Statement"), Some(Value::Array(a)) if a.len() == 2));
        let (revoked, _) = revoke(&granted, UID_A, now);
        assert_eq!(revoked.statements(), doc.statements());
        assert!(matches!(
            revoked.root.get("Statement"),
            Some(Value::Array(_))
        ));
    }

    #[test]
    fn regrant_replaces_in_place() {
        let first = grant(
            &base_doc(),
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let first = grant(
            &first,
            UID_B,
            ALICE,
            &terms(UID_B),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let again = grant(
            &first,
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        assert_eq!(
            to_json(&again),
            to_json(&first),
            "retried grant is idempotent"
        );

        let moved = grant(
            &first,
            UID_A,
            BOB,
            &terms(UID_A),
            ts("2026-06-02T00:00:00Z"),
            4096,
        )
        .unwrap();
        let listed = grants(&moved);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].principal, BOB);
        assert_eq!(listed[0].expires_at, ts("2026-06-02T00:00:00Z"));
        assert_eq!(listed[1].sid, sid_for(UID_B).unwrap());
        assert_eq!(moved.statements().len(), first.statements().len());
    }

    #[test]
    fn size_limit_refused_with_size_and_limit() {
        let doc = base_doc();
        let expiry = ts("2026-06-01T00:00:00Z");
        let fits = grant(&doc, UID_A, ALICE, &terms(UID_A), expiry, usize::MAX).unwrap();
        let size = to_json(&fits).chars().count();
        assert!(
            grant(&doc, UID_A, ALICE, &terms(UID_A), expiry, size).is_ok(),
            "limit is inclusive"
        );

        let err = grant(&doc, UID_A, ALICE, &terms(UID_A), expiry, size - 1).unwrap_err();
        assert!(
            matches!(err, TrustPolicyError::TooLarge { size: s, limit } if s == size && limit == size - 1)
        );
        let message = err.to_string();
        assert!(message.contains(&size.to_string()), "{message}");
        assert!(message.contains(&(size - 1).to_string()), "{message}");
        assert_eq!(doc, base_doc(), "input unchanged");
    }

    #[test]
    fn size_is_measured_minified() {
        let pretty = serde_json::to_string_pretty(&json!({
            "Version": "2012-10-17",
            "Statement": foreign_statements(),
        }))
        .unwrap();
        let doc = parse(&pretty).unwrap();
        let granted = grant(
            &doc,
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            usize::MAX,
        )
        .unwrap();
        let minified = to_json(&granted).chars().count();
        assert!(
            grant(
                &doc,
                UID_A,
                ALICE,
                &terms(UID_A),
                ts("2026-06-01T00:00:00Z"),
                minified
            )
            .is_ok()
        );
        assert!(pretty.len() > to_json(&doc).len());
    }

    #[test]
    fn revoke_removes_only_ours() {
        let doc = grant(
            &base_doc(),
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let doc = grant(
            &doc,
            UID_B,
            BOB,
            &terms(UID_B),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let (revoked, report) = revoke(&doc, UID_A, ts("2026-05-01T00:00:00Z"));
        assert_eq!(report.removed.len(), 1);
        assert_eq!(report.removed[0].sid, sid_for(UID_A).unwrap());
        assert_eq!(compact(&not_ours(&revoked)), compact(&foreign_statements()));
        assert_eq!(grants(&revoked).len(), 1);
        assert_eq!(grants(&revoked)[0].sid, sid_for(UID_B).unwrap());
    }

    #[test]
    fn sweep_removes_expired_of_ours_and_keeps_live_ones() {
        let now = ts("2026-06-01T12:00:00Z");
        let doc = grant(
            &base_doc(),
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T11:00:00Z"),
            4096,
        )
        .unwrap();
        let doc = grant(&doc, UID_B, BOB, &terms(UID_B), now, 4096).unwrap(); // expiring exactly now
        let doc = grant(
            &doc,
            UID_C,
            ALICE,
            &terms(UID_C),
            ts("2026-06-01T13:00:00Z"),
            4096,
        )
        .unwrap();
        let (swept, report) = revoke(&doc, "11111111-2222-4333-8444-555566667777", now);
        let removed: Vec<_> = report.removed.iter().map(|g| g.sid.clone()).collect();
        assert_eq!(
            removed,
            vec![sid_for(UID_A).unwrap(), sid_for(UID_B).unwrap()]
        );
        let left: Vec<_> = grants(&swept).into_iter().map(|g| g.sid).collect();
        assert_eq!(left, vec![sid_for(UID_C).unwrap()]);
        assert_eq!(compact(&not_ours(&swept)), compact(&foreign_statements()));
        assert_eq!(sweep(&doc, now), (swept, report));
    }

    #[test]
    fn revoke_is_idempotent_and_identity_when_never_granted() {
        let now = ts("2026-05-01T00:00:00Z");
        let doc = grant(
            &base_doc(),
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let doc = grant(
            &doc,
            UID_B,
            BOB,
            &terms(UID_B),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let (once, _) = revoke(&doc, UID_A, now);
        let (twice, report) = revoke(&once, UID_A, now);
        assert_eq!(to_json(&twice), to_json(&once));
        assert!(report.removed.is_empty());

        let (never, report) = revoke(&base_doc(), UID_C, now);
        assert!(report.removed.is_empty());
        assert_eq!(to_json(&never), to_json(&base_doc()));
    }

    #[test]
    fn lookalikes_are_never_touched_and_never_overwritten() {
        let sid = sid_for(UID_A).unwrap();
        let expired = "2020-01-01T00:00:00Z";
        let lookalikes = vec![
            // Deny instead of Allow.
            json!({"Sid": sid, "Effect": "Deny", "Principal": {"AWS": ALICE}, "Action": "sts:AssumeRole",
                   "Condition": {"DateLessThan": {"aws:CurrentTime": expired}}}),
            // An extra key.
            json!({"Sid": "AwsJitHandEdited", "Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "sts:AssumeRole",
                   "Condition": {"DateLessThan": {"aws:CurrentTime": expired}}, "Resource": "*"}),
            // No condition: must never be swept, it is not time-bound by us.
            json!({"Sid": "AwsJitNoCondition", "Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "sts:AssumeRole"}),
            // A second condition.
            json!({"Sid": "AwsJitTwoConditions", "Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "sts:AssumeRole",
                   "Condition": {"DateLessThan": {"aws:CurrentTime": expired}, "Bool": {"aws:MultiFactorAuthPresent": "true"}}}),
        ];
        let doc =
            parse(&json!({"Version": "2012-10-17", "Statement": lookalikes}).to_string()).unwrap();
        assert!(grants(&doc).is_empty());
        let (after, report) = revoke(&doc, UID_A, ts("2030-01-01T00:00:00Z"));
        assert!(report.removed.is_empty());
        assert_eq!(report.lookalikes.len(), 4);
        assert_eq!(to_json(&after), to_json(&doc));

        let err = grant(
            &doc,
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2031-01-01T00:00:00Z"),
            4096,
        )
        .unwrap_err();
        assert!(matches!(err, TrustPolicyError::SidConflict { sid: s } if s == sid));
    }

    #[test]
    fn duplicate_statements_of_ours_collapse_on_grant() {
        let sid = sid_for(UID_A).unwrap();
        let stale = our_statement(&sid, ALICE, &terms(UID_A), "2026-01-01T00:00:00Z");
        let ec2 = foreign_statements()[0].clone();
        let doc = parse(&json!({"Statement": [stale.clone(), ec2, stale]}).to_string()).unwrap();
        let granted = grant(
            &doc,
            UID_A,
            BOB,
            &terms(UID_A),
            ts("2026-02-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        assert_eq!(granted.statements().len(), 2);
        assert_eq!(grants(&granted)[0].principal, BOB);
        assert_eq!(granted.statements()[1], foreign_statements()[0]);
    }

    #[test]
    fn statements_of_releases_before_named_sessions_are_still_ours() {
        let sid = sid_for(UID_A).unwrap();
        let old = json!({
            "Sid": sid, "Effect": "Allow", "Principal": {"AWS": ALICE},
            "Action": "sts:AssumeRole",
            "Condition": {"DateLessThan": {"aws:CurrentTime": "2026-06-01T00:00:00Z"}}
        });
        let doc = parse(&json!({"Statement": [old, foreign_statements()[0].clone()]}).to_string())
            .unwrap();
        let found = grants(&doc);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].session, None);
        let (revoked, report) = revoke(&doc, UID_A, ts("2026-01-01T00:00:00Z"));
        assert_eq!(report.removed.len(), 1);
        assert_eq!(revoked.statements(), &foreign_statements()[..1]);
        let (swept, report) = sweep(&doc, ts("2026-06-01T00:00:00Z"));
        assert_eq!(
            report.removed.len(),
            1,
            "an expired old-shape grant is swept"
        );
        assert_eq!(swept.statements().len(), 1);
    }

    #[test]
    fn session_terms_must_be_sts_values() {
        for (name, identity) in [("a", "alice"), ("ar-x", "a:b"), ("ar x", "alice")] {
            let bad = SessionTerms {
                session_name: name.into(),
                source_identity: identity.into(),
            };
            let err = grant(
                &base_doc(),
                UID_A,
                ALICE,
                &bad,
                ts("2026-06-01T00:00:00Z"),
                4096,
            )
            .unwrap_err();
            assert!(
                matches!(err, TrustPolicyError::InvalidSession { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn empty_statement_list_after_revoke_is_kept_as_empty_array() {
        let doc = parse(r#"{"Version":"2012-10-17","Statement":[]}"#).unwrap();
        let granted = grant(
            &doc,
            UID_A,
            ALICE,
            &terms(UID_A),
            ts("2026-06-01T00:00:00Z"),
            4096,
        )
        .unwrap();
        let (revoked, report) = revoke(&granted, UID_A, ts("2026-01-01T00:00:00Z"));
        assert_eq!(report.removed.len(), 1);
        assert_eq!(
            to_json(&revoked),
            r#"{"Version":"2012-10-17","Statement":[]}"#
        );
    }

    #[test]
    fn expiry_is_whole_seconds_utc_rounded_down() {
        let expiry = ts("2026-11-26T13:00:00.999999999Z");
        let granted = grant(&base_doc(), UID_A, ALICE, &terms(UID_A), expiry, 4096).unwrap();
        assert!(to_json(&granted).contains(r#""aws:CurrentTime":"2026-11-26T13:00:00Z""#));
        let offset = ts("2026-11-26T14:00:00+01:00");
        let granted = grant(&base_doc(), UID_A, ALICE, &terms(UID_A), offset, 4096).unwrap();
        assert!(to_json(&granted).contains(r#""aws:CurrentTime":"2026-11-26T13:00:00Z""#));
        assert!(matches!(
            grant(
                &base_doc(),
                UID_A,
                ALICE,
                &terms(UID_A),
                ts("1969-12-31T23:59:59Z"),
                4096
            ),
            Err(TrustPolicyError::InvalidExpiry { .. })
        ));
    }

    #[test]
    fn bad_uid_refused() {
        let expiry = ts("2026-06-01T00:00:00Z");
        for uid in [
            "",
            "---",
            "abc def",
            "abc/def",
            "ab_c",
            "ünïcode",
            "a".repeat(65).as_str(),
        ] {
            let err = grant(&base_doc(), uid, ALICE, &terms(uid), expiry, 4096).unwrap_err();
            assert!(
                matches!(err, TrustPolicyError::InvalidRequestUid { .. }),
                "{uid:?}: {err}"
            );
        }
        assert_eq!(sid_for("a-b-c").unwrap(), "AwsJitabc");
        // A malformed UID cannot name a statement of ours: revoke only sweeps.
        let doc = grant(&base_doc(), UID_A, ALICE, &terms(UID_A), expiry, 4096).unwrap();
        let (same, report) = revoke(&doc, "", ts("2026-01-01T00:00:00Z"));
        assert!(report.removed.is_empty());
        assert_eq!(same, doc);
    }

    #[test]
    fn bad_principal_refused() {
        let expiry = ts("2026-06-01T00:00:00Z");
        for arn in [
            "",
            "*",
            "alice",
            "arn:aws:iam::123456789012:user/*",
            "arn:aws:iam::123456789012:user/al?ce",
            "arn:aws:iam::12345678901:user/alice",
            "arn:aws:iam::1234567890123:user/alice",
            "arn:aws:iam::12345678901a:user/alice",
            "arn:aws:iam:us-east-1:123456789012:user/alice",
            "arn:aws:s3::123456789012:user/alice",
            "arn:azure:iam::123456789012:user/alice",
            "arn:AWS:iam::123456789012:user/alice",
            "arn:aws:iam::123456789012:",
            "arn:aws:iam::123456789012:user/alice:extra",
            "arn:aws:iam::123456789012:user/al ice",
            "arn:aws:iam::123456789012:user/alice\"",
        ] {
            let err = grant(&base_doc(), UID_A, arn, &terms(UID_A), expiry, 4096).unwrap_err();
            assert!(
                matches!(err, TrustPolicyError::InvalidPrincipal { .. }),
                "{arn:?}: {err}"
            );
        }
        for arn in [
            ALICE,
            BOB,
            "arn:aws-us-gov:iam::123456789012:role/path/to/Admin",
            "arn:aws-cn:iam::123456789012:root",
            "arn:aws:iam::123456789012:user/first.last+tag=x,y@corp",
        ] {
            assert!(
                grant(&base_doc(), UID_A, arn, &terms(UID_A), expiry, 4096).is_ok(),
                "{arn}"
            );
        }
    }

    #[test]
    fn malformed_documents_refused() {
        // (input, the error variant's name as Debug prints it)
        let cases = [
            ("not json", "Json"),
            ("%7Bbroken", "Json"),
            ("%FF%FE", "NotUtf8"),
            ("[1,2]", "NotAnObject"),
            (r#"{"Version":"2012-10-17"}"#, "MissingStatement"),
            (r#"{"Statement":[{"Effect":"Allow"},"x"]}"#, "BadStatement"),
        ];
        for (input, variant) in cases {
            let err = parse(input).unwrap_err();
            assert!(format!("{err:?}").starts_with(variant), "{input}: {err}");
        }
        assert!(matches!(
            parse(r#"{"Statement":"x"}"#),
            Err(TrustPolicyError::BadStatement)
        ));
    }

    // ---- property tests -------------------------------------------------------------

    fn arb_string() -> impl Strategy<Value = Value> {
        "[a-zA-Z0-9:/*._-]{0,16}".prop_map(Value::String)
    }

    fn arb_principal() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("*")),
            "[a-z0-9]{1,10}".prop_map(|s| json!({"Service": format!("{s}.amazonaws.com")})),
            prop::collection::vec("[0-9]{12}", 1..3).prop_map(|accounts| {
                let arns: Vec<_> = accounts
                    .iter()
                    .map(|a| format!("arn:aws:iam::{a}:root"))
                    .collect();
                json!({"AWS": arns})
            }),
            "[0-9]{12}".prop_map(|a| json!({"AWS": format!("arn:aws:iam::{a}:user/x")})),
            "[a-z.]{1,12}".prop_map(|s| json!({"Federated": s})),
        ]
    }

    fn arb_action() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("sts:AssumeRole")),
            Just(json!("sts:AssumeRoleWithWebIdentity")),
            Just(json!(["sts:AssumeRole", "sts:TagSession"])),
            Just(json!("*")),
        ]
    }

    fn arb_condition() -> impl Strategy<Value = Value> {
        let operator = prop::sample::select(vec![
            "StringEquals",
            "StringLike",
            "DateLessThan",
            "DateGreaterThan",
            "Bool",
            "NumericLessThan",
            "IpAddress",
        ]);
        let key = prop::sample::select(vec![
            "aws:CurrentTime",
            "sts:ExternalId",
            "aws:MultiFactorAuthPresent",
            "aws:SourceIp",
            "aws:PrincipalOrgID",
        ]);
        let value = prop_oneof![
            arb_string(),
            Just(json!("2020-01-01T00:00:00Z")),
            any::<i64>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(|b| json!(b)),
            prop::collection::vec(arb_string(), 0..3).prop_map(Value::Array),
        ];
        prop::collection::vec((operator, prop::collection::vec((key, value), 1..3)), 1..3).prop_map(
            |ops| {
                let mut condition = Map::new();
                for (op, entries) in ops {
                    let inner: Map<String, Value> = entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect();
                    condition.insert(op.to_owned(), Value::Object(inner));
                }
                Value::Object(condition)
            },
        )
    }

    /// A statement that is not ours, its keys in random order. The Sid pattern cannot
    /// start with "AwsJit" ('J' is not in [a-z0-9]).
    fn arb_foreign() -> impl Strategy<Value = Value> {
        (
            prop::option::of("[A-Z][a-z0-9]{0,10}"),
            prop::sample::select(vec!["Allow", "Deny"]),
            prop::sample::select(vec!["Principal", "NotPrincipal"]),
            arb_principal(),
            arb_action(),
            prop::option::of(arb_condition()),
        )
            .prop_map(
                |(sid, effect, principal_key, principal, action, condition)| {
                    let mut entries = vec![
                        ("Effect".to_owned(), json!(effect)),
                        (principal_key.to_owned(), principal),
                        ("Action".to_owned(), action),
                    ];
                    if let Some(sid) = sid {
                        entries.push(("Sid".to_owned(), json!(sid)));
                    }
                    if let Some(condition) = condition {
                        entries.push(("Condition".to_owned(), condition));
                    }
                    entries
                },
            )
            .prop_flat_map(|entries| Just(entries).prop_shuffle())
            .prop_map(|entries| Value::Object(entries.into_iter().collect()))
    }

    /// Our shape with one mutation, under a Sid no generated UID (lowercase hex) can
    /// produce. Expired, so a sweep would remove it if it wrongly counted as ours.
    fn arb_lookalike() -> impl Strategy<Value = Value> {
        ("[A-Z]{4}", 0..8usize).prop_map(|(suffix, mutation)| {
            let sid = format!("{SID_PREFIX}{suffix}");
            let mut statement = our_statement(&sid, ALICE, &terms("x"), "2000-01-01T00:00:00Z");
            let Value::Object(fields) = &mut statement else {
                unreachable!()
            };
            match mutation {
                0 => {
                    fields.insert("Effect".into(), json!("Deny"));
                }
                1 => {
                    fields.insert("Resource".into(), json!("*"));
                }
                2 => {
                    fields.insert("Action".into(), json!(["sts:AssumeRole"]));
                }
                3 => {
                    fields.insert("Principal".into(), json!({"AWS": ALICE, "Service": "x"}));
                }
                4 => {
                    fields.shift_remove("Condition");
                }
                5 => {
                    // No session-name term: any session name would do.
                    if let Some(terms) = fields
                        .get_mut("Condition")
                        .and_then(|c| c.get_mut("StringEquals"))
                        .and_then(Value::as_object_mut)
                    {
                        terms.shift_remove("sts:RoleSessionName");
                    }
                }
                6 => {
                    fields.insert("Action".into(), json!(["sts:AssumeRole", "sts:TagSession"]));
                }
                _ => {
                    fields.insert(
                        "Condition".into(),
                        json!({"DateLessThan": {"aws:CurrentTime": "not a date"}}),
                    );
                }
            }
            statement
        })
    }

    fn arb_others() -> impl Strategy<Value = Vec<Value>> {
        prop::collection::vec(prop_oneof![4 => arb_foreign(), 1 => arb_lookalike()], 0..6)
    }

    fn arb_uid() -> impl Strategy<Value = String> {
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    }

    /// (principal, expiry) for a grant; expiries between 2020 and 2100.
    fn arb_grant_params() -> impl Strategy<Value = (String, Timestamp)> {
        (
            prop::sample::select(vec![ALICE, BOB, "arn:aws:iam::210987654321:role/Ops"]),
            1_577_836_800i64..4_102_444_800i64,
        )
            .prop_map(|(p, s)| (p.to_owned(), Timestamp::from_second(s).unwrap()))
    }

    fn arb_grants() -> impl Strategy<Value = Vec<(String, String, Timestamp)>> {
        prop::collection::btree_map(arb_uid(), arb_grant_params(), 0..5).prop_map(|m| {
            m.into_iter()
                .map(|(uid, (principal, expiry))| (uid, principal, expiry))
                .collect()
        })
    }

    fn doc_from(others: &[Value], single: bool) -> Document {
        let statement = match others {
            [only] if single => only.clone(),
            _ => Value::Array(others.to_vec()),
        };
        parse(&json!({"Version": "2012-10-17", "Id": "x", "Statement": statement}).to_string())
            .unwrap()
    }

    fn grant_all(doc: &Document, grants: &[(String, String, Timestamp)]) -> Document {
        grants
            .iter()
            .fold(doc.clone(), |doc, (uid, principal, expiry)| {
                grant(&doc, uid, principal, &terms(uid), *expiry, usize::MAX).unwrap()
            })
    }

    fn sorted_grants(doc: &Document) -> Vec<GrantInfo> {
        let mut listed = grants(doc);
        listed.sort_by(|a, b| a.sid.cmp(&b.sid));
        listed
    }

    proptest! {
        #[test]
        fn revoke_undoes_grant(
            others in arb_others(),
            single in any::<bool>(),
            existing in arb_grants(),
            uid in arb_uid(),
            (principal, expiry) in arb_grant_params(),
        ) {
            prop_assume!(!existing.iter().any(|(u, _, _)| *u == uid));
            let base = grant_all(&doc_from(&others, single), &existing);
            let granted = grant(&base, &uid, &principal, &terms(&uid), expiry, usize::MAX).unwrap();
            prop_assert_eq!(grants(&granted).len(), existing.len() + 1);
            // Before every expiry, so only the named grant goes.
            let (revoked, report) = revoke(&granted, &uid, Timestamp::UNIX_EPOCH);
            prop_assert_eq!(report.removed.len(), 1);
            prop_assert_eq!(compact(revoked.statements()), compact(base.statements()));
            prop_assert_eq!(&revoked.root.get("Version"), &base.root.get("Version"));
            prop_assert_eq!(&revoked.root.get("Id"), &base.root.get("Id"));
            if matches!(base.root.get("Statement"), Some(Value::Array(_))) {
                prop_assert_eq!(to_json(&revoked), to_json(&base));
            }
        }

        #[test]
        fn distinct_grants_commute(
            others in arb_others(),
            (ordered, shuffled) in arb_grants()
                .prop_flat_map(|g| (Just(g.clone()), Just(g).prop_shuffle())),
        ) {
            let doc = doc_from(&others, false);
            let a = grant_all(&doc, &ordered);
            let b = grant_all(&doc, &shuffled);
            prop_assert_eq!(sorted_grants(&a), sorted_grants(&b));
            prop_assert_eq!(compact(&not_ours(&a)), compact(&others));
            prop_assert_eq!(compact(&not_ours(&b)), compact(&others));
        }

        #[test]
        fn revoke_past_every_expiry_leaves_nothing_of_ours(
            others in arb_others(),
            granted in arb_grants(),
            uid in arb_uid(),
            after in 0i64..1_000_000,
        ) {
            let doc = grant_all(&doc_from(&others, false), &granted);
            let latest = granted.iter().map(|(_, _, e)| *e).max().unwrap_or(Timestamp::UNIX_EPOCH);
            let now = latest + jiff::SignedDuration::from_secs(after);
            let (revoked, report) = revoke(&doc, &uid, now);
            prop_assert!(grants(&revoked).is_empty());
            prop_assert_eq!(report.removed.len(), granted.len());
            prop_assert_eq!(compact(revoked.statements()), compact(&others));
        }

        #[test]
        fn parse_round_trips_plain_and_url_encoded(
            others in arb_others(),
            single in any::<bool>(),
            granted in arb_grants(),
        ) {
            let doc = grant_all(&doc_from(&others, single), &granted);
            let json = to_json(&doc);
            let plain = parse(&json).unwrap();
            prop_assert_eq!(to_json(&plain), json.clone());
            let encoded = parse(&utf8_percent_encode(&json, RFC3986).to_string()).unwrap();
            prop_assert_eq!(to_json(&encoded), json);
            prop_assert_eq!(grants(&encoded), grants(&doc));
        }
    }
}
