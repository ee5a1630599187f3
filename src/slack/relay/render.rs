//! Alert events as Slack messages (pure). Each event renders twice:
//! - [`message`]: the request's one living message (posted on `requested`, then replaced
//!   by `chat.update` on every later event), with all the request's fields and its
//!   current state; the awaiting-approval state carries the Approve and Deny buttons;
//! - [`step`]: the thread reply for that step (who decided, until when, what failed).
//!
//! Everything a user typed (reason, ticket, comments) is escaped for mrkdwn, so a
//! reason cannot ping `<!channel>`.
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::{ApprovalOutput, DenialCause, ExecutionInput, GrantOutput};
use crate::crd::GrantMethod;

/// `action_id` of the Approve button (the interactivity side listens for it).
pub const APPROVE_ACTION: &str = "aws-jit-approve";
/// `action_id` of the Deny button.
pub const DENY_ACTION: &str = "aws-jit-deny";

/// The alert queue's event names (deploy/aws/README.md, "Alerts").
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Requested,
    Approved,
    Denied,
    Cancelled,
    ApprovalTimedOut,
    Granted,
    GrantFailed,
    /// An approved extension moved the grant's expiry.
    Extended,
    /// An approved extension could not be made; the earlier expiry stands.
    ExtendFailed,
    Expired,
    Revoked,
    RevokeFailed,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Requested => "requested",
            Event::Approved => "approved",
            Event::Denied => "denied",
            Event::Cancelled => "cancelled",
            Event::ApprovalTimedOut => "approval_timed_out",
            Event::Granted => "granted",
            Event::GrantFailed => "grant_failed",
            Event::Extended => "extended",
            Event::ExtendFailed => "extend_failed",
            Event::Expired => "expired",
            Event::Revoked => "revoked",
            Event::RevokeFailed => "revoke_failed",
        }
    }

    /// Failures a human must not miss.
    pub fn is_loud(self) -> bool {
        matches!(
            self,
            Event::GrantFailed | Event::RevokeFailed | Event::ExtendFailed
        )
    }
}

/// One message of the alert queue.
#[derive(Deserialize, Clone, Debug)]
pub struct Alert {
    pub event: Event,
    pub execution_arn: String,
    pub input: ExecutionInput,
    #[serde(default)]
    pub approval: Value,
    #[serde(default)]
    pub grant: Option<GrantOutput>,
    #[serde(default)]
    pub error: Value,
    #[serde(default)]
    pub hold: Value,
    #[serde(default)]
    pub revoke: Value,
    /// `extended` / `extend_failed`: the extension (`id`, `expires_at`, `approvers`).
    #[serde(default)]
    pub extend: Value,
}

impl Alert {
    /// The key the relay remembers a shown alert by: its event, and for an extension
    /// its id (a request may be extended more than once).
    pub fn shown_as(&self) -> String {
        match (self.event, self.extend.get("id").and_then(Value::as_str)) {
            (Event::Extended | Event::ExtendFailed, Some(id)) => {
                format!("{}-{}", self.event.name(), escape(id, 32))
            }
            _ => self.event.name().to_owned(),
        }
    }

    /// Who approved (comma-separated), from the `approval` the operator answered.
    pub fn approvers(&self) -> Option<String> {
        serde_json::from_value::<ApprovalOutput>(self.approval.clone())
            .ok()
            .map(|a| a.approver_name)
            .filter(|a| !a.is_empty())
    }

    /// Who denied and why, from the `Denied` failure's cause.
    pub fn denial(&self) -> Option<DenialCause> {
        let cause = self.error.get("Cause")?.as_str()?;
        serde_json::from_str(cause).ok()
    }

    fn error_text(&self) -> String {
        let name = self.error.get("Error").and_then(Value::as_str);
        let cause = self.error.get("Cause").and_then(Value::as_str);
        match (name, cause) {
            (Some(n), Some(c)) if !c.is_empty() => format!("{n}: {c}"),
            (Some(n), _) => n.to_string(),
            (None, Some(c)) => c.to_string(),
            (None, None) => String::new(),
        }
    }
}

/// What one rendering produces: the `text` fallback (notifications, screen readers) and
/// the Block Kit `blocks` array.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub blocks: Value,
}

/// Who a loud failure mentions: a configured group (`<!subteam^ID>`) or users (`<@U..>`),
/// plus the role's approvers that have a Slack user ID.
#[derive(Clone, Debug, Default)]
pub struct Mentions(pub Vec<String>);

impl Mentions {
    fn text(&self) -> String {
        self.0.join(" ")
    }
}

/// Escapes text for mrkdwn and plain text (`&`, `<`, `>`), and bounds its length.
pub fn escape(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `3600` → `1h`, `5400` → `1h30m`, `4` → `4s`.
pub fn duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// One-line state of the request after `alert`, for the header and the fallback text.
fn state(alert: &Alert) -> (&'static str, String) {
    match alert.event {
        Event::Requested => (":hourglass_flowing_sand:", "awaiting approval".into()),
        Event::Approved => (":white_check_mark:", "approved, granting".into()),
        Event::Denied => (":no_entry:", "denied".into()),
        Event::Cancelled => (":heavy_multiplication_x:", "cancelled".into()),
        Event::ApprovalTimedOut => (":alarm_clock:", "not approved in time".into()),
        Event::Granted => (":unlock:", "active".into()),
        Event::GrantFailed => (":rotating_light:", "GRANT FAILED".into()),
        Event::Extended => (":unlock:", "active, extended".into()),
        Event::ExtendFailed => (":warning:", "EXTENSION FAILED".into()),
        Event::Expired => (":lock:", "expired, access removed".into()),
        Event::Revoked => (":lock:", "revoked, access removed".into()),
        Event::RevokeFailed => (":rotating_light:", "REVOKE FAILED".into()),
    }
}

/// The value of both buttons: the request's identity, as the interactivity side reads it.
pub fn button_value(input: &ExecutionInput) -> String {
    json!({
        "namespace": input.request.namespace,
        "name": input.request.name,
        "uid": input.request.uid,
    })
    .to_string()
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

/// The one line of what this step means, in mrkdwn (the thread reply's text and the
/// living message's status line).
fn step_line(alert: &Alert, mentions: &Mentions) -> String {
    let who = |s: Option<String>| s.map(|s| escape(&s, 200)).unwrap_or_else(|| "?".into());
    match alert.event {
        Event::Requested if alert.input.break_glass => format!(
            "{}:rotating_light: *{}* BROKE THE GLASS: access is granted now, without approval. \
             Reason: {}",
            mention_prefix(mentions),
            escape(&alert.input.requester_name, 200),
            escape(&alert.input.reason, 500)
        ),
        Event::Requested => format!(
            "*{}* asks for access; waiting for approval.",
            escape(&alert.input.requester_name, 200)
        ),
        Event::Granted if alert.input.break_glass => format!(
            "{}:rotating_light: BREAK GLASS: granted without approval until *{}*. An approver \
             must review it: `kubectl jit review {} -n {} --verdict Reviewed|Flagged`",
            mention_prefix(mentions),
            expires(alert),
            escape(&alert.input.request.name, 253),
            escape(&alert.input.request.namespace, 63)
        ),
        Event::Approved => format!("Approved by *{}*.", who(alert.approvers())),
        Event::Denied => match alert.denial() {
            Some(d) if !d.comment.is_empty() => format!(
                "Denied by *{}*: {}",
                escape(&d.approver_name, 200),
                escape(&d.comment, 500)
            ),
            Some(d) => format!("Denied by *{}*.", escape(&d.approver_name, 200)),
            None => "Denied.".into(),
        },
        // The error is always `Cancelled`; only its cause says more.
        Event::Cancelled => match alert.error.get("Cause").and_then(Value::as_str) {
            Some(cause) if !cause.is_empty() => {
                format!("Cancelled before a decision: {}", escape(cause, 500))
            }
            _ => "Cancelled before a decision.".into(),
        },
        Event::ApprovalTimedOut => "Nobody approved in time; the request expired.".into(),
        Event::Granted => format!(
            "Granted (approved by *{}*) until *{}*.",
            who(alert.approvers()),
            expires(alert)
        ),
        Event::GrantFailed => format!(
            "{}The grant FAILED and was rolled back: {}",
            mention_prefix(mentions),
            escape(&alert.error_text(), 1500)
        ),
        Event::Extended => format!(
            "Extended (approved by *{}*) until *{}*.",
            who(extension_approvers(alert)),
            expires(alert)
        ),
        Event::ExtendFailed => format!(
            "{}An approved extension could NOT be made ({}); access still ends at *{}*.",
            mention_prefix(mentions),
            escape(&alert.error_text(), 1500),
            expires(alert)
        ),
        Event::Expired => format!("Access ended at *{}* and was removed.", expires(alert)),
        Event::Revoked => "Access was ended early and removed.".into(),
        Event::RevokeFailed => format!(
            "{}The revoke FAILED: {} — {}",
            mention_prefix(mentions),
            escape(&alert.error_text(), 1500),
            left_after_failed_revoke(&alert.input.method, &expires(alert))
        ),
    }
}

/// Who approved an extension, from the hold's answer.
fn extension_approvers(alert: &Alert) -> Option<String> {
    let list = alert.extend.get("approvers")?.as_array()?;
    let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// What is left when a revoke failed, in the method's words.
fn left_after_failed_revoke(method: &str, expires: &str) -> String {
    match GrantMethod::parse(method).unwrap_or_default() {
        GrantMethod::TrustPolicy => format!(
            "the trust-policy statement still ends at *{expires}* (AWS enforces it); clean it up."
        ),
        GrantMethod::IdentityCenter => format!(
            "the account assignment may still exist: the cleanup execution deletes it at \
             *{expires}* and the operator's drift sweep removes it when it runs; check the \
             permission set's assignments."
        ),
        GrantMethod::IamGroup => format!(
            "the group membership may still exist: the cleanup execution removes it at \
             *{expires}* and the operator's drift sweep when it runs; check the group."
        ),
    }
}

/// What the request's message calls what is granted.
fn target_label(method: &str) -> &'static str {
    match GrantMethod::parse(method).unwrap_or_default() {
        GrantMethod::TrustPolicy => "Role",
        GrantMethod::IdentityCenter => "Permission set",
        GrantMethod::IamGroup => "IAM group",
    }
}

fn mention_prefix(mentions: &Mentions) -> String {
    if mentions.0.is_empty() {
        String::new()
    } else {
        format!("{} ", mentions.text())
    }
}

fn expires(alert: &Alert) -> String {
    alert
        .grant
        .as_ref()
        .map(|g| escape(&g.expires_at, 64))
        .unwrap_or_else(|| "its expiry".into())
}

/// The request's living message after `alert`.
pub fn message(alert: &Alert, mentions: &Mentions) -> Rendered {
    let input = &alert.input;
    let (emoji, state) = state(alert);
    let request = format!("{}/{}", input.request.namespace, input.request.name);
    let header = if alert.event.is_loud() {
        format!("{emoji} AWS access {state}")
    } else {
        format!("{emoji} AWS access request: {state}")
    };
    let mut fields = vec![
        mrkdwn(format!(
            "*Requester*\n{}",
            escape(&input.requester_name, 200)
        )),
        mrkdwn(format!(
            "*{}*\n`{}`",
            target_label(&input.method),
            escape(&input.role_arn, 300)
        )),
        mrkdwn(format!("*Duration*\n{}", duration(input.duration_seconds))),
        mrkdwn(format!("*Request*\n`{}`", escape(&request, 300))),
    ];
    if !input.ticket.is_empty() {
        fields.push(mrkdwn(format!("*Ticket*\n{}", escape(&input.ticket, 300))));
    }
    if !input.start_at.is_empty() && alert.grant.is_none() {
        fields.push(mrkdwn(format!(
            "*Starts at*\n{} (scheduled)",
            escape(&input.start_at, 64)
        )));
    }
    if let Some(grant) = &alert.grant {
        fields.push(mrkdwn(format!(
            "*Expires at*\n{}",
            escape(&grant.expires_at, 64)
        )));
        if !grant.account_ids.is_empty() {
            fields.push(mrkdwn(format!(
                "*Accounts*\n{}",
                escape(&grant.account_ids.join(", "), 300)
            )));
        }
    }
    let reason = if input.reason.is_empty() {
        "_no reason given_".to_string()
    } else {
        escape(&input.reason, 1500)
    };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": escape(&header, 140), "emoji": true}}),
        json!({"type": "section", "text": mrkdwn(step_line(alert, mentions))}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": mrkdwn(format!("*Reason*\n{reason}"))}),
    ];
    if alert.event == Event::Requested {
        let value = button_value(input);
        blocks.push(json!({
            "type": "actions",
            "block_id": "aws-jit-decision",
            "elements": [
                {"type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                {"type": "button", "action_id": DENY_ACTION, "style": "danger",
                 "text": {"type": "plain_text", "text": "Deny"}, "value": value},
            ]
        }));
    }
    blocks.push(json!({"type": "context", "elements": [mrkdwn(format!(
        "aws-jit · execution `{}`",
        escape(alert.execution_arn.rsplit(':').next().unwrap_or_default(), 200)
    ))]}));
    let text = format!(
        "{}AWS access {state}: {} for {} ({}) — {}",
        if alert.event.is_loud() {
            mention_prefix(mentions)
        } else {
            String::new()
        },
        escape(&input.requester_name, 200),
        escape(&input.role_arn, 300),
        duration(input.duration_seconds),
        escape(&request, 300)
    );
    Rendered {
        text,
        blocks: Value::Array(blocks),
    }
}

/// A security finding of the operator (tampering, a forged task refused, drift removed):
/// a message of its own, always loud.
pub fn security(alert: &crate::contract::SecurityAlert, mentions: &Mentions) -> Rendered {
    let request = alert
        .request
        .as_ref()
        .map(|r| format!("`{}/{}`", escape(&r.namespace, 253), escape(&r.name, 253)))
        .unwrap_or_else(|| "_no request_".into());
    let header = format!(
        ":rotating_light: aws-jit security: {}",
        escape(&alert.kind, 60)
    );
    let blocks = json!([
        {"type": "header", "text": {"type": "plain_text", "text": escape(&header, 140), "emoji": true}},
        {"type": "section", "text": mrkdwn(format!(
            "{}{}",
            mention_prefix(mentions),
            escape(&alert.message, 2500)
        ))},
        {"type": "context", "elements": [mrkdwn(format!("aws-jit · request {request}"))]},
    ]);
    Rendered {
        text: format!(
            "{}aws-jit security: {}: {}",
            mention_prefix(mentions),
            escape(&alert.kind, 60),
            escape(&alert.message, 500)
        ),
        blocks,
    }
}

/// The thread reply for the step `alert` records.
pub fn step(alert: &Alert, mentions: &Mentions) -> Rendered {
    let line = step_line(alert, mentions);
    let mut blocks = Vec::new();
    if alert.event.is_loud() {
        let (emoji, state) = state(alert);
        blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": format!("{emoji} AWS access {state}"), "emoji": true}}));
    }
    blocks.push(json!({"type": "section", "text": mrkdwn(line.clone())}));
    Rendered {
        text: line,
        blocks: Value::Array(blocks),
    }
}

#[cfg(test)]
mod tests;
