//! Extending an active grant, decided without I/O: which of the requester's asks
//! (`status.extensions`) is next, whether the AccessRole allows it, where its votes
//! stand, and the expiry it moves the grant to. The controller acts on [`next`]; the
//! trust-policy worker checks a move it is asked to make with [`verify`], from the
//! request and its AccessRole alone.
//!
//! The rules, in the order they are checked:
//! - the AccessRole has an `extension` policy (none: no extension);
//! - the request would still be accepted now (the requester is still eligible, the
//!   role still grants the same): an extension is a new decision, not a renewal;
//! - fewer than `maxExtensions` were granted;
//! - the reason is what the role asks of a request's reason;
//! - the new expiry (the current one plus `by`) is no later than the grant's start plus
//!   `maxDuration`;
//! - then the votes on that extension, counted as a request's are, against
//!   `extension.approvalsRequired` (default: the role's `approvalsRequired`).
use jiff::{SignedDuration, Timestamp};

use crate::crd::{
    AccessRequest, AccessRole, ExtensionAsk, ExtensionOutcome, ExtensionPhase, Phase,
};
use crate::policy::decide::{self, Ignored, Rejection, Tally};

/// Who approves an extension the role lets through without approvals.
pub const NO_APPROVAL_NEEDED: &str = "aws-jit:rule/extension-approvals-required-0";

/// Why an extension is refused. The `Display` text goes to the outcome's message and
/// the Event; `reason()` is the Event's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "AccessRole {0:?} allows no extensions: ask for a new AccessRequest once this one ends"
    )]
    NotAllowed(String),
    #[error(
        "AccessRole {0:?} grants by {1}: only TrustPolicy grants can be extended (an \
         IdentityCenter or IamGroup grant ends at its first expiry)"
    )]
    MethodNotExtendable(String, &'static str),
    #[error(
        "access ends at {expires_at}, too soon to move the expiry safely: ask for a new \
         AccessRequest once this one ends"
    )]
    TooLate { expires_at: Timestamp },
    #[error(
        "a break-glass grant is not extended (it is bounded by breakGlass.maxDuration and \
         reviewed as it was): ask for a new AccessRequest, with approval"
    )]
    BreakGlass,
    #[error("only the requester ({requester}) may extend this request, not {by}")]
    NotTheRequester { requester: String, by: String },
    #[error("already extended {done} time(s), the most AccessRole {role:?} allows")]
    TooMany { role: String, done: usize },
    #[error("by {by:?} is not usable: {why}")]
    BadDuration { by: String, why: String },
    #[error(
        "the extension would end access at {until}, past maxDuration ({max}) counted from \
         the grant at {granted_at}; at most {room} more can be asked for"
    )]
    PastMaxDuration {
        until: Timestamp,
        max: String,
        granted_at: Timestamp,
        room: String,
    },
    #[error("the request would not be accepted now: {0}")]
    NoLongerValid(String),
    #[error("{0}")]
    Reason(String),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAllowed(_) | Refusal::MethodNotExtendable(..) => "ExtensionNotAllowed",
            Refusal::NotTheRequester { .. } => "ExtensionNotTheRequester",
            Refusal::TooMany { .. } => "TooManyExtensions",
            Refusal::BadDuration { .. } => "InvalidExtension",
            Refusal::PastMaxDuration { .. } => "ExtensionPastMaxDuration",
            Refusal::NoLongerValid(_) => "ExtensionNoLongerValid",
            Refusal::Reason(_) => "ExtensionReasonInvalid",
            Refusal::TooLate { .. } => "ExtensionTooLate",
            Refusal::BreakGlass => "ExtensionNotAllowed",
        }
    }
}

/// What to do about the request's extensions now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: no ask without an outcome, or one is being applied.
    Nothing,
    /// The next ask is refused.
    Refuse { id: String, refusal: Refusal },
    /// The next ask waits for votes; approved, it moves the expiry to `until`.
    Pending {
        id: String,
        have: usize,
        need: usize,
        until: Timestamp,
    },
    /// The next ask was denied.
    Denied {
        id: String,
        by: String,
        comment: String,
    },
    /// The next ask is approved: move the expiry to `until`.
    Approved {
        id: String,
        approvers: Vec<String>,
        until: Timestamp,
    },
}

/// The grant's window as the controller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the grant's window started (the approval; `status.grantedAt`).
    pub granted_at: Timestamp,
    /// The current expiry.
    pub expires_at: Timestamp,
    /// Now.
    pub now: Timestamp,
}

/// An ask decided with less than this left before the expiry is refused: the move in
/// AWS must land before the expiry, or sessions would outlive what the deny said.
pub const LAST_CALL: std::time::Duration = std::time::Duration::from_secs(30);

fn asks(request: &AccessRequest) -> Vec<ExtensionAsk> {
    request
        .status
        .as_ref()
        .and_then(|s| s.extensions.clone())
        .unwrap_or_default()
}

fn outcomes(request: &AccessRequest) -> Vec<ExtensionOutcome> {
    request
        .status
        .as_ref()
        .and_then(|s| s.extension_outcomes.clone())
        .unwrap_or_default()
}

/// How many extensions were granted, or are being applied.
pub fn granted(request: &AccessRequest) -> usize {
    outcomes(request)
        .iter()
        .filter(|o| {
            matches!(
                o.phase,
                ExtensionPhase::Extending | ExtensionPhase::Extended
            )
        })
        .count()
}

/// The extension being applied, if any.
pub fn in_flight(request: &AccessRequest) -> Option<ExtensionOutcome> {
    outcomes(request)
        .into_iter()
        .find(|o| o.phase == ExtensionPhase::Extending)
}

/// The latest expiry an extension of `request` was approved to (Extending or
/// Extended), if any: what a grant of it may carry beyond `status.expiresAt` while the
/// move is applied.
pub fn approved_until(request: &AccessRequest) -> Option<Timestamp> {
    outcomes(request)
        .iter()
        .filter(|o| {
            matches!(
                o.phase,
                ExtensionPhase::Extending | ExtensionPhase::Extended
            )
        })
        .filter_map(|o| o.expires_at.as_ref().map(|t| t.0))
        .max()
}

/// The latest expiry an extension of the request may have written in AWS: approved ones
/// (Extending, Extended) and failed ones (a move can fail after the statement was
/// written). Whoever ends the grant must keep its sessions' deny until then.
pub fn latest_move(status: &crate::crd::AccessRequestStatus) -> Option<Timestamp> {
    status
        .extension_outcomes
        .iter()
        .flatten()
        .filter(|o| {
            matches!(
                o.phase,
                ExtensionPhase::Extending | ExtensionPhase::Extended | ExtensionPhase::Failed
            )
        })
        .filter_map(|o| o.expires_at.as_ref().map(|t| t.0))
        .max()
}

/// How many approvals an extension of `role` needs.
pub fn approvals_needed(role: &AccessRole) -> usize {
    let need = role
        .spec
        .extension
        .as_ref()
        .and_then(|e| e.approvals_required)
        .unwrap_or(role.spec.approvals_required);
    usize::try_from(need.max(0)).unwrap_or(0)
}

/// The votes cast on extension `id`.
fn votes_on(request: &AccessRequest, id: &str) -> Vec<crate::crd::Approval> {
    request
        .status
        .as_ref()
        .and_then(|s| s.extension_approvals.as_ref())
        .map(|votes| {
            votes
                .iter()
                .filter(|v| v.extension == id)
                .map(|v| v.as_vote())
                .collect()
        })
        .unwrap_or_default()
}

/// What the next ask without an outcome comes to, on `role` as it is and the grant's
/// `window`. Votes not counted come back to be reported.
pub fn next(role: &AccessRole, request: &AccessRequest, window: Window) -> (Step, Vec<Ignored>) {
    if in_flight(request).is_some() {
        return (Step::Nothing, Vec::new());
    }
    let done = outcomes(request);
    let Some(ask) = asks(request)
        .into_iter()
        .find(|a| !done.iter().any(|o| o.id == a.id))
    else {
        return (Step::Nothing, Vec::new());
    };
    let id = ask.id.clone();
    let refuse = |refusal| {
        (
            Step::Refuse {
                id: id.clone(),
                refusal,
            },
            Vec::new(),
        )
    };
    let until = match allowed(role, request, &ask, window, window.now) {
        Ok(until) => until,
        Err(refusal) => return refuse(refusal),
    };
    let need = approvals_needed(role);
    let votes = votes_on(request, &id);
    match decide::tally_needing(role, need, &request.spec.requester, &votes) {
        (Tally::Pending { have, need }, ignored) => (
            Step::Pending {
                id,
                have,
                need,
                until,
            },
            ignored,
        ),
        (Tally::Denied { by, comment }, ignored) => (Step::Denied { id, by, comment }, ignored),
        (Tally::Approved { mut approvers }, ignored) => {
            if approvers.is_empty() {
                approvers.push(NO_APPROVAL_NEEDED.into());
            }
            (
                Step::Approved {
                    id,
                    approvers,
                    until,
                },
                ignored,
            )
        }
    }
}

/// Whether `role` allows `ask` on `window` (votes aside), and the expiry it moves the
/// grant to.
fn allowed(
    role: &AccessRole,
    request: &AccessRequest,
    ask: &ExtensionAsk,
    window: Window,
    now: Timestamp,
) -> Result<Timestamp, Refusal> {
    let role_name = request.spec.role.clone();
    let Some(policy) = role.spec.extension.as_ref() else {
        return Err(Refusal::NotAllowed(role_name));
    };
    if request.spec.break_glass {
        return Err(Refusal::BreakGlass);
    }
    // The grant as it was made (the role may have changed method since), and the role.
    let made_by = request
        .status
        .as_ref()
        .and_then(|s| s.grant.as_ref())
        .and_then(|g| crate::crd::GrantMethod::parse(&g.method));
    for method in [Some(role.spec.method), made_by].into_iter().flatten() {
        if method != crate::crd::GrantMethod::TrustPolicy {
            return Err(Refusal::MethodNotExtendable(role_name, method.as_str()));
        }
    }
    if window.expires_at.duration_since(now).as_secs() < LAST_CALL.as_secs() as i64 {
        return Err(Refusal::TooLate {
            expires_at: window.expires_at,
        });
    }
    if ask.requested_by != request.spec.requester {
        return Err(Refusal::NotTheRequester {
            requester: request.spec.requester.clone(),
            by: ask.requested_by.clone(),
        });
    }
    decide::plan(request, Some(role)).map_err(|r| Refusal::NoLongerValid(r.to_string()))?;
    let done = granted(request);
    if done >= usize::try_from(policy.max_extensions.max(0)).unwrap_or(0) {
        return Err(Refusal::TooMany {
            role: role_name,
            done,
        });
    }
    check_reason(role, &role_name, &ask.reason)?;
    let by = decide::parse_duration("by", &ask.by)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .filter(|d| d.is_positive())
        .ok_or_else(|| Refusal::BadDuration {
            by: ask.by.clone(),
            why: "it must be a positive Go duration such as 30m or 1h".into(),
        })?;
    let max_text = role.spec.max_duration.clone();
    let max = decide::parse_duration("maxDuration", &max_text)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .ok_or_else(|| Refusal::NoLongerValid(format!("maxDuration {max_text:?} is unusable")))?;
    let whole = |t: Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(t);
    let bound = whole(window.granted_at)
        .checked_add(max)
        .unwrap_or(Timestamp::MAX);
    let until = whole(window.expires_at)
        .checked_add(by)
        .unwrap_or(Timestamp::MAX);
    if until > bound {
        let room = bound.duration_since(whole(window.expires_at));
        return Err(Refusal::PastMaxDuration {
            until,
            max: max_text,
            granted_at: window.granted_at,
            room: if room.is_positive() {
                format!("{}s", room.as_secs())
            } else {
                "nothing".into()
            },
        });
    }
    Ok(until)
}

/// The role's rules for a reason, applied to an extension's.
fn check_reason(role: &AccessRole, role_name: &str, reason: &str) -> Result<(), Refusal> {
    if role.spec.require_reason && reason.trim().is_empty() {
        return Err(Refusal::Reason(format!(
            "AccessRole {role_name:?} requires a reason: ask again with one"
        )));
    }
    if let Some(pattern) = role.spec.reason_pattern.as_deref() {
        match decide::check_pattern(
            role,
            role_name,
            ("reason", "reasonPattern"),
            pattern,
            reason,
        ) {
            Ok(()) => {}
            Err(Rejection::PatternMismatch { pattern, hint, .. }) => {
                return Err(Refusal::Reason(format!(
                    "AccessRole {role_name:?} requires a reason matching `{pattern}`{hint}: \
                     ask again with one that matches"
                )));
            }
            Err(other) => return Err(Refusal::Reason(other.to_string())),
        }
    }
    Ok(())
}

/// Whether moving `request`'s grant to `until` for extension `id` stands on Kubernetes
/// alone, for whoever is asked to make the move (the trust-policy worker): the ask is
/// the requester's, the controller recorded it approved to exactly `until`, its votes
/// meet the role's rule now, the role allows that many extensions, and `until` is
/// within `maxDuration` of the grant's start. Why not, otherwise.
pub fn verify(
    role: &AccessRole,
    request: &AccessRequest,
    id: &str,
    until: Timestamp,
) -> Result<(), Unverified> {
    verify_inner(role, request, id, until)
}

/// Why [`verify`] does not back a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// The controller answers the hold and records the approval in status right after:
    /// not yet there is not a refusal (asked again until the task times out).
    NotYetRecorded(String),
    Refused(String),
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::NotYetRecorded(why) | Unverified::Refused(why) => f.write_str(why),
        }
    }
}

impl From<String> for Unverified {
    fn from(why: String) -> Self {
        Unverified::Refused(why)
    }
}

impl From<&str> for Unverified {
    fn from(why: &str) -> Self {
        Unverified::Refused(why.to_owned())
    }
}

fn verify_inner(
    role: &AccessRole,
    request: &AccessRequest,
    id: &str,
    until: Timestamp,
) -> Result<(), Unverified> {
    let Some(policy) = role.spec.extension.as_ref() else {
        return Err(Refusal::NotAllowed(request.spec.role.clone())
            .to_string()
            .into());
    };
    if request.spec.break_glass {
        return Err(Refusal::BreakGlass.to_string().into());
    }
    let ask = asks(request)
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| Unverified::from(format!("the request asks for no extension {id:?}")))?;
    if ask.requested_by != request.spec.requester {
        return Err(format!(
            "extension {id:?} was asked by {}, not the requester",
            ask.requested_by
        )
        .into());
    }
    let recorded = outcomes(request)
        .into_iter()
        .find(|o| o.id == id)
        .ok_or_else(|| {
            Unverified::NotYetRecorded(format!("extension {id:?} has no recorded approval yet"))
        })?;
    if !matches!(
        recorded.phase,
        ExtensionPhase::Extending | ExtensionPhase::Extended
    ) || recorded.expires_at.as_ref().map(|t| t.0) != Some(until)
    {
        return Err(format!(
            "extension {id:?} is recorded {:?} until {:?}, not approved until {until}",
            recorded.phase,
            recorded.expires_at.as_ref().map(|t| t.0.to_string())
        )
        .into());
    }
    let votes = votes_on(request, id);
    match decide::tally_needing(
        role,
        approvals_needed(role),
        &request.spec.requester,
        &votes,
    )
    .0
    {
        Tally::Approved { .. } => {}
        Tally::Pending { have, need } => {
            return Err(format!("extension {id:?} has {have} of {need} approvals").into());
        }
        Tally::Denied { by, .. } => {
            return Err(format!("extension {id:?} was denied by {by}").into());
        }
    }
    if granted(request) > usize::try_from(policy.max_extensions.max(0)).unwrap_or(0) {
        return Err(format!(
            "more extensions than the {} AccessRole {:?} allows",
            policy.max_extensions, request.spec.role
        )
        .into());
    }
    let granted_at = request
        .status
        .as_ref()
        .and_then(|s| s.granted_at.as_ref())
        .map(|t| t.0)
        .ok_or("the request records no grant")?;
    let max = decide::parse_duration("maxDuration", &role.spec.max_duration)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .ok_or("the role's maxDuration is unusable")?;
    let bound = granted_at
        .checked_add(max)
        .map_err(|e| Unverified::from(e.to_string()))?;
    if until > bound {
        return Err(format!(
            "{until} is past maxDuration ({}) counted from the grant at {granted_at}",
            role.spec.max_duration
        )
        .into());
    }
    Ok(())
}

/// The earlier approved request of the same requester for the same AccessRole, if any,
/// as the refusal of `request`: one person holds one grant of a role at a time,
/// extended rather than stacked. Approved: `Scheduled`, `Approved` or `Active`, and not
/// being deleted (requests still waiting for approvers may be several; the first
/// approved one refuses those planned after it). Earlier: created before, or at
/// the same second and first by namespace and name, so of two created at once exactly
/// one goes ahead. Only requests the caller sees count (the controller's cache): two
/// created at once against a cache that shows neither both go ahead, each a grant
/// approved and bounded on its own.
pub fn overlapping<'a>(
    request: &AccessRequest,
    others: impl IntoIterator<Item = &'a AccessRequest>,
) -> Option<Rejection> {
    use kube::ResourceExt;
    let key = |r: &AccessRequest| {
        (
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )
    };
    let mine = key(request);
    others
        .into_iter()
        .filter(|o| o.metadata.uid != request.metadata.uid)
        .filter(|o| o.spec.requester == request.spec.requester && o.spec.role == request.spec.role)
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| matches!(p, Phase::Scheduled | Phase::Approved | Phase::Active))
        })
        .filter(|o| key(o) < mine)
        .min_by_key(|o| key(o))
        .map(|o| {
            let phase = o.status.as_ref().and_then(|s| s.phase);
            Rejection::Overlaps {
                requester: request.spec.requester.clone(),
                role: request.spec.role.clone(),
                other: format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                phase: phase.map(|p| format!("{p:?}")).unwrap_or_default(),
                what: if phase == Some(crate::crd::Phase::Active) {
                    "extend that one instead (kubectl jit extend NAME --by 30m --reason ...)"
                } else {
                    "wait for it to start and extend it, or withdraw it (delete it) first"
                },
            }
        })
}

#[cfg(test)]
mod tests;
