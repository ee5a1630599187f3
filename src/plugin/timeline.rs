//! Pure: `describe`'s page: a request's facts and its timeline, from its status (every
//! vote with its channel, revocations, grant, expiry, end) and its Events. Which votes
//! count is the controller's own `tally`.
use jiff::Timestamp;

use crate::crd::{AccessRequest, AccessRole, Approval, ApprovalChannel, Decision, Phase};
use crate::policy::decide;

use super::render;

/// One Event of the request, as read from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub at: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

/// What could be read of the request's Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Events {
    Read(Vec<EventNote>),
    /// The caller may not read Events in the namespace (the apiserver's words).
    Forbidden(String),
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at: Option<Timestamp>,
    /// `status` or `event`.
    pub source: &'static str,
    pub text: String,
}

fn entry(at: Option<Timestamp>, text: String) -> Entry {
    Entry {
        at,
        source: "status",
        text,
    }
}

/// The timeline: what the status records, and the Events, in time order (what has no
/// time last, in the order recorded).
pub fn timeline(request: &AccessRequest, role: Option<&AccessRole>, events: &Events) -> Vec<Entry> {
    let spec = &request.spec;
    let status = request.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let duration = spec
        .duration
        .clone()
        .or_else(|| role.map(|r| format!("{} (the role's default)", r.spec.default_duration)))
        .unwrap_or_else(|| "the role's default".into());
    let group = spec
        .requester_group
        .as_ref()
        .map(|g| format!(" as group {g}"))
        .unwrap_or_default();
    out.push(entry(
        request.metadata.creation_timestamp.as_ref().map(|t| t.0),
        format!(
            "requested by {}{group}: role {}, for {duration}, reason {:?}{}",
            spec.requester,
            spec.role,
            spec.reason,
            spec.ticket
                .as_ref()
                .map(|t| format!(", ticket {t}"))
                .unwrap_or_default()
        ),
    ));
    let votes = status.approvals.clone().unwrap_or_default();
    let ignored = role
        .map(|r| decide::tally(r, &spec.requester, &votes).1)
        .unwrap_or_default();
    for (i, vote) in votes.iter().enumerate() {
        // The i-th ignored entry of this approver is this vote when it is the first
        // vote of theirs (tally reports each ignored vote in order).
        let first_of_theirs = votes[..i].iter().all(|v| v.approver != vote.approver);
        let not_counted = ignored
            .iter()
            .find(|x| x.approver == vote.approver && first_of_theirs)
            .map(|x| format!(" (not counted: {})", x.why))
            .unwrap_or_default();
        out.push(entry(
            vote.time.as_ref().map(|t| t.0),
            format!("{}{not_counted}", vote_line(vote)),
        ));
    }
    let revocations = status.revocations.clone().unwrap_or_default();
    let effective = decide::effective_revocation(role, &spec.requester, &revocations);
    for r in &revocations {
        let counts = if effective.is_some_and(|e| e.requested_by == r.requested_by) {
            ""
        } else if decide::may_revoke(role, &spec.requester, r) {
            " (an earlier one already counts)"
        } else {
            " (ignored: no say in this request)"
        };
        out.push(entry(
            r.time.as_ref().map(|t| t.0),
            format!(
                "early revoke asked by {}{}{}{counts}",
                r.requested_by,
                r.group
                    .as_ref()
                    .map(|g| format!(" as group {g}"))
                    .unwrap_or_default(),
                r.reason
                    .as_ref()
                    .map(|x| format!(": {x:?}"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(t) = &status.granted_at {
        let how = status
            .grant
            .as_ref()
            .map(|g| format!(" ({})", g.method))
            .unwrap_or_default();
        out.push(entry(Some(t.0), format!("access granted{how}")));
    }
    if let Some(t) = &status.revoked_at {
        let what = if status.phase == Some(Phase::Expired) {
            "access ended at its expiry and was revoked"
        } else {
            "access revoked early"
        };
        out.push(entry(Some(t.0), what.into()));
    } else if let Some(t) = &status.expires_at
        && matches!(status.phase, Some(Phase::Active | Phase::Approved))
    {
        out.push(entry(Some(t.0), "access expires (AWS enforces it)".into()));
    }
    if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
        // When it ended: `Ended` (an older operator's ended requests: `Ready`).
        let at = [decide::ENDED_CONDITION, "Ready"]
            .iter()
            .find_map(|t| status.conditions.iter().find(|c| c.type_ == *t))
            .map(|c| c.last_transition_time.0);
        out.push(entry(
            at,
            format!(
                "ended {phase:?}: {}",
                status.message.clone().unwrap_or_default()
            ),
        ));
    }
    if let Events::Read(events) = events {
        for e in events {
            let times = if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            };
            out.push(Entry {
                at: e.at,
                source: "event",
                text: format!("{} {}: {}{times}", e.kind, e.reason, e.message),
            });
        }
    }
    // Stable: equal times keep the order recorded; no time goes last.
    out.sort_by_key(|e| (e.at.is_none(), e.at));
    for e in &mut out {
        e.text = render::printable(&e.text);
    }
    out
}

/// `describe`'s page for a person.
pub fn page(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    events: &Events,
    now: Timestamp,
    colour: bool,
) -> String {
    let spec = &request.spec;
    let status = request.status.clone().unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        (
            "Name".into(),
            request.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "Namespace".into(),
            request.metadata.namespace.clone().unwrap_or_default(),
        ),
        ("Role".into(), spec.role.clone()),
        ("Requester".into(), spec.requester.clone()),
        ("Reason".into(), spec.reason.clone()),
    ];
    if let Some(t) = &spec.ticket {
        lines.push(("Ticket".into(), t.clone()));
    }
    lines.push((
        "Phase".into(),
        render::paint(&render::phase_text(status.phase), status.phase, colour),
    ));
    if let Some(m) = status.message.as_ref().filter(|m| !m.is_empty()) {
        lines.push(("Message".into(), m.clone()));
    }
    lines.push(("Approvals".into(), render::approvals(request, role)));
    if let Some(t) = &status.expires_at {
        let left = render::expires_in(request, now);
        let value = match left.as_str() {
            "-" => format!("{:.0}", t.0),
            _ => format!("{:.0} (in {left})", t.0),
        };
        lines.push(("Expires".into(), value));
    }
    if let Some(arn) = &status.execution_arn {
        lines.push(("Execution".into(), arn.clone()));
    }
    if let Some(access) = status.access.as_ref().filter(|a| !a.how.is_empty())
        && status.phase == Some(Phase::Active)
    {
        lines.push(("Access".into(), access.how.clone()));
        if !access.role_arn.is_empty() {
            lines.push((
                "Credentials".into(),
                format!(
                    "kubectl jit credentials {} -n {}",
                    request.metadata.name.as_deref().unwrap_or_default(),
                    request.metadata.namespace.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in lines {
        // The phase is painted here, from an enum; every other value is text.
        let v = if k == "Phase" {
            v
        } else {
            render::printable(&v)
        };
        out.push_str(&format!("{:<width$}{v}\n", format!("{k}:")));
    }
    out.push_str("Timeline:\n");
    let mut any_event = false;
    for e in timeline(request, role, events) {
        let at = e.at.map_or_else(|| "-".repeat(20), |t| format!("{t:.0}"));
        let tag = if e.source == "event" { "[event] " } else { "" };
        any_event |= e.source == "event";
        out.push_str(&format!("  {at:<20}  {tag}{}\n", e.text));
    }
    if any_event {
        // Events carry no authenticated author: say which lines are the record.
        out.push_str(
            "  ([event] lines are Kubernetes Events, which anyone allowed to create Events in \
             this namespace can write; the other lines are the request's status, which \
             admission keeps to the operator and each vote's own author)\n",
        );
    }
    if let Events::Forbidden(why) = events {
        out.push_str(&format!(
            "Events: not shown: you may not read Events in namespace {} ({}); the \
             timeline above is the request's status only\n",
            request.metadata.namespace.as_deref().unwrap_or_default(),
            render::printable(why)
        ));
    }
    out
}

/// One vote as a person reads it: `approved by carol as group sre via kubectl: "ok"`.
pub fn vote_line(vote: &Approval) -> String {
    let verb = match vote.decision {
        Decision::Approve => "approved",
        Decision::Deny => "denied",
    };
    let via = match vote.via {
        ApprovalChannel::Kubectl => "kubectl",
        ApprovalChannel::Slack => "Slack",
    };
    let group = vote
        .group
        .as_ref()
        .map(|g| format!(" as group {g}"))
        .unwrap_or_default();
    let comment = vote
        .comment
        .as_ref()
        .filter(|c| !c.is_empty())
        .map(|c| format!(": {c:?}"))
        .unwrap_or_default();
    format!("{verb} by {}{group} via {via}{comment}", vote.approver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role() -> AccessRole {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                "approvers": [{"user": "carol"}, {"user": "dave"}],
                "requesters": [{"user": "alice"}],
                "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
            }
        }))
        .unwrap()
    }

    fn revoked() -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team",
                         "creationTimestamp": "2026-12-01T12:00:00Z"},
            "spec": {"role": "prod-admin", "requester": "alice", "reason": "INC-1",
                     "duration": "30m", "ticket": "INC-1"},
            "status": {
                "phase": "Revoked",
                "message": "access was ended early and revoked",
                "conditions": [{"type": "Ready", "status": "False", "reason": "Revoked",
                    "message": "", "lastTransitionTime": "2026-12-01T12:05:10Z"}],
                "approvals": [
                    {"approver": "bob", "decision": "Approve", "time": "2026-12-01T12:01:00Z"},
                    {"approver": "carol", "decision": "Approve", "via": "slack",
                     "comment": "go", "time": "2026-12-01T12:02:00Z"}],
                "revocations": [
                    {"requestedBy": "alice", "reason": "done", "time": "2026-12-01T12:05:00Z"}],
                "grantedAt": "2026-12-01T12:02:05Z",
                "expiresAt": "2026-12-01T12:32:05Z",
                "revokedAt": "2026-12-01T12:05:08Z",
                "grant": {"method": "TrustPolicy", "statementId": "x"}
            }
        }))
        .unwrap()
    }

    fn texts(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.text.clone()).collect()
    }

    #[test]
    fn the_timeline_tells_what_happened_in_order() {
        let events = Events::Read(vec![EventNote {
            at: Some("2026-12-01T12:00:01Z".parse().unwrap()),
            kind: "Normal".into(),
            reason: "ExecutionStarted".into(),
            message: "started".into(),
            count: 1,
        }]);
        let t = timeline(&revoked(), Some(&role()), &events);
        assert_eq!(
            texts(&t),
            vec![
                "requested by alice: role prod-admin, for 30m, reason \"INC-1\", ticket INC-1",
                "Normal ExecutionStarted: started",
                "approved by bob via kubectl (not counted: not an approver of this AccessRole)",
                "approved by carol via Slack: \"go\"",
                "access granted (TrustPolicy)",
                "early revoke asked by alice: \"done\"",
                "access revoked early",
                "ended Revoked: access was ended early and revoked",
            ]
        );
        assert_eq!(t[1].source, "event");
    }

    /// The controller removes `Ready` from an Expired/Revoked/Denied request and says
    /// `Ended=True` (GitOps health): the end still has its time, in order.
    #[test]
    fn the_end_has_its_time_with_todays_conditions() {
        let mut r = revoked();
        let status = r.status.as_mut().unwrap();
        let ended: Timestamp = "2026-12-01T12:05:10Z".parse().unwrap();
        status.conditions = decide::conditions_for(
            &[],
            Phase::Revoked,
            "access was ended early and revoked",
            Some(1),
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ended),
        );
        assert!(status.conditions.iter().all(|c| c.type_ != "Ready"));
        let t = timeline(&r, Some(&role()), &Events::Read(vec![]));
        let end = t
            .iter()
            .find(|e| e.text.starts_with("ended Revoked"))
            .expect("the end");
        assert_eq!(end.at, Some(ended), "{t:?}");
    }

    /// What others wrote (a requester's reason and ticket, a denial's comment in the
    /// message, an Event's note) reaches an approver's terminal: it may not move the
    /// cursor, rewrite the lines above ("Role: read-only") or set the title.
    #[test]
    fn text_from_others_cannot_drive_the_terminal() {
        let mut r = revoked();
        let evil = "INC-1\x1b[1A\x1b[2K\rRole:      read-only\x1b]0;ok\x07\u{202e}";
        r.spec.reason = evil.into();
        r.spec.ticket = Some(evil.into());
        let status = r.status.as_mut().unwrap();
        status.message = Some(evil.into());
        status.approvals.as_mut().unwrap()[1].comment = Some(evil.into());
        status.revocations.as_mut().unwrap()[0].reason = Some(evil.into());
        let events = Events::Read(vec![EventNote {
            at: None,
            kind: "Normal".into(),
            reason: evil.into(),
            message: evil.into(),
            count: 1,
        }]);
        let now: Timestamp = "2026-12-01T12:10:00Z".parse().unwrap();
        for colour in [false, true] {
            let p = page(&r, Some(&role()), &events, now, colour);
            let shown: String = p.replace("\x1b[0m", "").replace("\x1b[2m", "");
            for bad in ['\r', '\x07', '\u{202e}'] {
                assert!(!p.contains(bad), "{bad:?} in {p:?}");
            }
            assert!(
                !shown.contains("\x1b[1A") && !shown.contains("\x1b]0"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn event_lines_are_marked_as_nobody_vouches_for_them() {
        let now: Timestamp = "2026-12-01T12:10:00Z".parse().unwrap();
        // A namespace admin can create an Event that reads like an approval.
        let forged = Events::Read(vec![EventNote {
            at: None,
            kind: "Normal".into(),
            reason: "Approved".into(),
            message: "approved by security-team".into(),
            count: 1,
        }]);
        let p = page(&revoked(), Some(&role()), &forged, now, false);
        assert!(
            p.contains("[event] Normal Approved: approved by security-team"),
            "{p}"
        );
        assert!(p.contains("anyone allowed to create Events"), "{p}");
        let none = page(&revoked(), Some(&role()), &Events::Read(vec![]), now, false);
        assert!(!none.contains("anyone allowed to create Events"), "{none}");
    }

    #[test]
    fn the_page_says_when_events_could_not_be_read() {
        let now: Timestamp = "2026-12-01T12:10:00Z".parse().unwrap();
        let page = page(
            &revoked(),
            Some(&role()),
            &Events::Forbidden("events is forbidden".into()),
            now,
            false,
        );
        assert!(page.contains("Phase:"), "{page}");
        assert!(page.contains("Revoked"), "{page}");
        assert!(page.contains("Approvals:"), "{page}");
        assert!(
            page.contains("you may not read Events in namespace team"),
            "{page}"
        );
        assert!(page.contains("approved by carol via Slack"), "{page}");
        assert!(!page.contains('\x1b'));
    }

    #[test]
    fn an_active_grant_shows_when_it_expires_and_how_to_use_it() {
        let mut r = revoked();
        let status = r.status.as_mut().unwrap();
        status.phase = Some(Phase::Active);
        status.revoked_at = None;
        status.revocations = None;
        status.conditions.clear();
        status.access = Some(crate::crd::AccessInstructions {
            how: "assume it".into(),
            role_arn: "arn:aws:iam::123456789012:role/jit/prod-admin".into(),
            ..Default::default()
        });
        let t = texts(&timeline(&r, Some(&role()), &Events::Read(vec![])));
        assert_eq!(t.last().unwrap(), "access expires (AWS enforces it)");
        let now: Timestamp = "2026-12-01T12:10:00Z".parse().unwrap();
        let p = page(&r, Some(&role()), &Events::Read(vec![]), now, true);
        assert!(p.contains("kubectl jit credentials fix -n team"), "{p}");
        assert!(p.contains("(in 22m)"), "{p}");
        assert!(p.contains("\x1b[32mActive"), "{p}");
    }
}
