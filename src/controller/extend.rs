//! Extending an active grant: the requester's asks (`status.extensions`) decided in
//! order ([`crate::policy::extension`]), an approved one handed to the execution by
//! answering its hold task with the new expiry, and its outcome recorded once the
//! execution holds again.
//!
//! Crash-safe the same way an approval is: the extension, its expiry, who approved it
//! and the hold token answered are recorded in the token Secret right before the answer
//! ([`keys::EXTENDING`]). While that hold is the current one the answer is sent again
//! (Step Functions says "already over" once it went out). A new hold token means the
//! execution holds again: the expiry it carries says whether the move was made
//! (`Extended`) or not (`Failed`: the execution put the earlier expiry back). Only after
//! the outcome is in status are the keys removed, so a crash in between settles it again
//! the same way.
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::info;

use super::tokens::{Tokens, keys};
use super::{Context, Error, identity};
use crate::aws::sfn::TaskAnswer;
use crate::crd::{AccessRequest, AccessRole, ExtensionOutcome, ExtensionPhase};
use crate::policy::extension::{self, Step, Window};

/// What the extensions of a held request come to in one reconcile.
#[derive(Debug, Default)]
pub(super) struct Extending {
    /// An outcome to record (by id).
    pub outcome: Option<ExtensionOutcome>,
    /// Said in the status message.
    pub note: Option<String>,
    /// The extension in flight is settled: its keys go once the outcome is recorded.
    pub settled: bool,
    /// Published once the status is written: (type, reason, note).
    pub event: Option<(EventType, String, String)>,
}

fn at(t: Timestamp) -> Time {
    Time(t)
}

fn outcome(
    id: &str,
    phase: ExtensionPhase,
    approved_by: Vec<String>,
    expires_at: Option<Timestamp>,
    message: String,
) -> ExtensionOutcome {
    ExtensionOutcome {
        id: id.to_owned(),
        phase,
        approved_by,
        expires_at: expires_at.map(at),
        message,
        time: Some(at(Timestamp::now())),
    }
}

/// Whole seconds from `now` until `t`, at least one (a hold's timeout).
fn seconds_until(t: Timestamp, now: Timestamp) -> i64 {
    t.duration_since(now).as_secs().max(1)
}

/// The answer to the hold that moves the grant to `until`: the hold after the move
/// lasts until `until`; should the move fail, until the current expiry.
fn answer(
    id: &str,
    until: Timestamp,
    approvers: &[String],
    current: Timestamp,
) -> serde_json::Value {
    let now = Timestamp::now();
    json!({"extend": {
        "id": id,
        "expires_at": until.to_string(),
        "hold_seconds": seconds_until(until, now),
        "fallback_seconds": seconds_until(current, now),
        "approvers": approvers,
    }})
}

/// The settled outcome of the extension in flight, now that the execution holds again
/// with expiry `held` (the move was made when it is `until`).
fn settle(
    id: &str,
    until: Timestamp,
    approvers: Vec<String>,
    held: Option<Timestamp>,
) -> Extending {
    let moved = held.is_some_and(|h| h >= until);
    let (phase, message, type_, reason) = if moved {
        (
            ExtensionPhase::Extended,
            format!("access extended until {until}"),
            EventType::Normal,
            "Extended",
        )
    } else {
        (
            ExtensionPhase::Failed,
            format!(
                "approved, but the execution could not move the expiry in AWS: access still \
                 ends at {} (the execution's history says why); ask again to retry",
                held.map(|h| h.to_string())
                    .unwrap_or_else(|| "its earlier expiry".into())
            ),
            EventType::Warning,
            "ExtensionFailed",
        )
    };
    Extending {
        outcome: Some(outcome(id, phase, approvers, Some(until), message.clone())),
        note: None,
        settled: true,
        event: Some((type_, reason.into(), format!("extension {id}: {message}"))),
    }
}

fn approvers_of(tokens: &Tokens) -> Vec<String> {
    tokens
        .get(keys::EXTENDING_BY)
        .map(|b| b.split(", ").map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The extensions of `request`, held with `hold_token`: settles the one in flight,
/// answers it again while the hold is the one answered, or decides the next ask
/// (unless access is `ending`).
pub(super) async fn extensions(
    request: &AccessRequest,
    ctx: &Context,
    uid: &str,
    tokens: &Tokens,
    role: Option<&AccessRole>,
    hold_token: &str,
    ending: bool,
) -> Result<Extending, Error> {
    let held: Option<Timestamp> = tokens.get(keys::EXPIRES_AT).and_then(|t| t.parse().ok());
    if let Some((id, until)) = tokens.extending() {
        let Ok(until) = until.parse::<Timestamp>() else {
            return Ok(settle(id, Timestamp::MAX, approvers_of(tokens), None));
        };
        if tokens.get(keys::EXTENDING_TOKEN) != Some(hold_token) {
            return Ok(settle(id, until, approvers_of(tokens), held));
        }
        // Sent, or about to be: again (answered once, it comes back "already over").
        if let Some(current) = held {
            let approvers = approvers_of(tokens);
            let payload = answer(id, until, &approvers, current);
            if ctx.sfn.send_success(hold_token, &payload).await? == TaskAnswer::AlreadyOver {
                ctx.moved_now(uid);
            }
        }
        return Ok(Extending {
            outcome: Some(outcome(
                id,
                ExtensionPhase::Extending,
                approvers_of(tokens),
                Some(until),
                format!("approved; moving the expiry to {until}"),
            )),
            note: Some(format!("extending access until {until} (extension {id})")),
            ..Default::default()
        });
    }
    // A status that shows an extension in flight the tokens do not (they were lost):
    // settled by the expiry the hold carries.
    if let Some(flight) = extension::in_flight(request) {
        let until = flight.expires_at.map(|t| t.0).unwrap_or(Timestamp::MAX);
        return Ok(settle(&flight.id, until, flight.approved_by, held));
    }
    let (Some(role), false) = (role, ending) else {
        return Ok(Extending::default());
    };
    let (Some(granted_at), Some(expires_at)) = (
        tokens.get(keys::GRANTED_AT).and_then(|t| t.parse().ok()),
        held,
    ) else {
        return Ok(Extending::default());
    };
    let window = Window {
        granted_at,
        expires_at,
        now: Timestamp::now(),
    };
    let (step, ignored) = extension::next(role, request, window);
    for i in &ignored {
        ctx.event_once(
            request,
            uid,
            EventType::Warning,
            "VoteIgnored",
            "Count",
            &format!("extension/{}", i.approver),
            format!("extension vote by {} not counted: {}", i.approver, i.why),
        )
        .await;
    }
    Ok(match step {
        Step::Nothing => Extending::default(),
        Step::Refuse { id, refusal } => {
            info!(extension = %id, reason = refusal.reason(), "extension refused: {refusal}");
            Extending {
                outcome: Some(outcome(
                    &id,
                    ExtensionPhase::Refused,
                    Vec::new(),
                    None,
                    refusal.to_string(),
                )),
                settled: false,
                note: None,
                event: Some((
                    EventType::Warning,
                    refusal.reason().into(),
                    format!("extension {id} refused: {refusal}"),
                )),
            }
        }
        Step::Pending { id, have, need, .. } => {
            ctx.event_once(
                request,
                uid,
                EventType::Normal,
                "ExtensionRequested",
                "Extend",
                &id,
                format!(
                    "{} asks to extend access (extension {id}); it needs {need} approval(s)",
                    request.spec.requester
                ),
            )
            .await;
            Extending {
                note: Some(format!(
                    "extension {id} waits for approval ({have} of {need})"
                )),
                ..Default::default()
            }
        }
        Step::Denied { id, by, comment } => {
            let message = if comment.is_empty() {
                format!("denied by {by}")
            } else {
                format!("denied by {by}: {comment}")
            };
            Extending {
                outcome: Some(outcome(
                    &id,
                    ExtensionPhase::Denied,
                    Vec::new(),
                    None,
                    message.clone(),
                )),
                event: Some((
                    EventType::Normal,
                    "ExtensionDenied".into(),
                    format!("extension {id} {message}"),
                )),
                ..Default::default()
            }
        }
        Step::Approved {
            id,
            approvers,
            until,
        } => {
            approve(
                request, ctx, uid, role, hold_token, window, id, approvers, until,
            )
            .await?
        }
    })
}

/// Hands an approved extension to the execution: counted again on the role as it is
/// now, recorded, then answered.
#[allow(clippy::too_many_arguments)]
async fn approve(
    request: &AccessRequest,
    ctx: &Context,
    uid: &str,
    role: &AccessRole,
    hold_token: &str,
    window: Window,
    id: String,
    approvers: Vec<String>,
    until: Timestamp,
) -> Result<Extending, Error> {
    // The watch's role may be behind a change a moment ago: the live one must come to
    // the same decision.
    let live = ctx
        .roles_api
        .get_opt(&role.name_any())
        .await
        .map_err(Error::Kube)?;
    let same = live.as_ref().is_some_and(|live| {
        matches!(
            extension::next(live, request, window).0,
            Step::Approved { until: u, .. } if u == until
        )
    });
    if !same {
        return Err(Error::Waiting(
            "the AccessRole changed while the extension was counted".into(),
        ));
    }
    let by = approvers.join(", ");
    ctx.tokens
        .put(
            &identity(request, uid),
            &[
                (keys::EXTENDING, &id),
                (keys::EXTENDING_UNTIL, &until.to_string()),
                (keys::EXTENDING_BY, &by),
                (keys::EXTENDING_TOKEN, hold_token),
            ],
        )
        .await?;
    let payload = answer(&id, until, &approvers, window.expires_at);
    if ctx.sfn.send_success(hold_token, &payload).await? == TaskAnswer::AlreadyOver {
        // The hold was over before the answer: access has ended, or is ending.
        ctx.moved_now(uid);
        let message = "approved, but access had already ended".to_owned();
        return Ok(Extending {
            outcome: Some(outcome(
                &id,
                ExtensionPhase::Failed,
                approvers,
                None,
                message.clone(),
            )),
            settled: true,
            note: None,
            event: Some((
                EventType::Warning,
                "ExtensionFailed".into(),
                format!("extension {id}: {message}"),
            )),
        });
    }
    info!(extension = %id, %until, approvers = %by, "extension approved; moving the expiry");
    Ok(Extending {
        outcome: Some(outcome(
            &id,
            ExtensionPhase::Extending,
            approvers,
            Some(until),
            format!("approved by {by}; moving the expiry to {until}"),
        )),
        note: Some(format!("extending access until {until} (extension {id})")),
        settled: false,
        event: Some((
            EventType::Normal,
            "ExtensionApproved".into(),
            format!("extension {id} approved by {by}: access moves to {until}"),
        )),
    })
}

/// The keys of the extension in flight, removed once its outcome is recorded.
pub(super) const KEYS: [&str; 4] = [
    keys::EXTENDING,
    keys::EXTENDING_UNTIL,
    keys::EXTENDING_BY,
    keys::EXTENDING_TOKEN,
];

/// `outcomes` with `outcome` recorded (replacing the one of its id).
pub(super) fn upsert(outcomes: &mut Option<Vec<ExtensionOutcome>>, outcome: ExtensionOutcome) {
    let list = outcomes.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|o| o.id == outcome.id) {
        // An unchanged phase keeps its first record (its time, its message).
        Some(existing) if existing.phase == outcome.phase => {}
        Some(existing) => *existing = outcome,
        None => list.push(outcome),
    }
}
