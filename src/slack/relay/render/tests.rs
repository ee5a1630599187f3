//! Snapshot-style tests: the Block Kit JSON of each event, as Slack receives it.
use serde_json::{Value, json};

use super::*;

fn alert(event: &str, extra: Value) -> Alert {
    let mut body = json!({
        "event": event,
        "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:jit:team-a-fix-db-0a1b",
        "input": {
            "requester_arn": "arn:aws:iam::123456789012:user/alice",
            "requester_name": "alice", "reason": "fix <!channel> & db", "ticket": "OPS-42",
            "role_arn": "arn:aws:iam::123456789012:role/admin", "method": "TrustPolicy",
            "work_group": "123456789012/admin", "duration_seconds": 5400,
            "approval_timeout_seconds": 600,
            "request": {"namespace": "team-a", "name": "fix-db", "uid": "u-1"}
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::from_value(body).expect("alert parses")
}

fn approval() -> Value {
    json!({"approver_name": "carol,dave", "approvers": ["carol", "dave"],
           "requester_arn": "arn:aws:iam::123456789012:user/alice"})
}

fn grant() -> Value {
    json!({"granted_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:30:00Z",
           "statement_id": "AwsJitu1"})
}

fn all() -> Vec<Alert> {
    let denied_cause =
        json!({"approver_name": "carol", "requester_arn": "x", "comment": "not <now>"}).to_string();
    vec![
        alert("requested", json!({})),
        alert("approved", json!({"approval": approval()})),
        alert(
            "denied",
            json!({"error": {"Error": "Denied", "Cause": denied_cause}}),
        ),
        alert(
            "cancelled",
            json!({"error": {"Error": "Cancelled", "Cause": "the AccessRequest no longer exists"}}),
        ),
        alert(
            "approval_timed_out",
            json!({"error": {"Error": "States.Timeout"}}),
        ),
        alert("granted", json!({"approval": approval(), "grant": grant()})),
        alert(
            "grant_failed",
            json!({"error": {"Error": "GrantFailed", "Cause": "trust policy too large"}}),
        ),
        alert("expired", json!({"grant": grant(), "revoke": {}})),
        alert(
            "revoked",
            json!({"grant": grant(), "hold": {}, "revoke": {}}),
        ),
        alert(
            "revoke_failed",
            json!({"grant": grant(), "error": {"Error": "RevokeFailed", "Cause": "AccessDenied"}}),
        ),
        alert(
            "extended",
            json!({"approval": approval(), "grant": grant(),
                   "extend": {"id": "1", "expires_at": "2026-01-01T01:30:00Z", "approvers": ["dave"]}}),
        ),
        alert(
            "extend_failed",
            json!({"approval": approval(), "grant": grant(),
                   "extend": {"id": "2", "expires_at": "2026-01-01T02:00:00Z", "approvers": ["dave"]},
                   "error": {"Error": "ExtendFailed", "Cause": "no live statement"}}),
        ),
    ]
}

fn mentions() -> Mentions {
    Mentions(vec!["<!subteam^S0SRE>".into(), "<@U0CAROL>".into()])
}

fn header(r: &Rendered) -> &str {
    r.blocks[0]["text"]["text"].as_str().unwrap()
}

#[test]
fn the_awaiting_approval_message_is_exactly_this() {
    let r = message(&all()[0], &mentions());
    let value = r#"{"namespace":"team-a","name":"fix-db","uid":"u-1"}"#;
    assert_eq!(
        r.text,
        "AWS access awaiting approval: alice for arn:aws:iam::123456789012:role/admin (1h30m) — team-a/fix-db"
    );
    assert_eq!(
        r.blocks,
        json!([
            {"type": "header", "text": {"type": "plain_text", "text": ":hourglass_flowing_sand: AWS access request: awaiting approval", "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*alice* asks for access; waiting for approval."}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": "*Requester*\nalice"},
                {"type": "mrkdwn", "text": "*Role*\n`arn:aws:iam::123456789012:role/admin`"},
                {"type": "mrkdwn", "text": "*Duration*\n1h30m"},
                {"type": "mrkdwn", "text": "*Request*\n`team-a/fix-db`"},
                {"type": "mrkdwn", "text": "*Ticket*\nOPS-42"}
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Reason*\nfix &lt;!channel&gt; &amp; db"}},
            {"type": "actions", "block_id": "aws-jit-decision", "elements": [
                {"type": "button", "action_id": "aws-jit-approve", "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                {"type": "button", "action_id": "aws-jit-deny", "style": "danger",
                 "text": {"type": "plain_text", "text": "Deny"}, "value": value}
            ]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "aws-jit · execution `team-a-fix-db-0a1b`"}]}
        ])
    );
    let parsed: Value = serde_json::from_str(value).unwrap();
    assert_eq!(
        parsed,
        json!({"namespace": "team-a", "name": "fix-db", "uid": "u-1"})
    );
}

#[test]
fn a_grant_failure_is_loud_and_mentions() {
    let a = &all()[6];
    let r = message(a, &mentions());
    assert_eq!(header(&r), ":rotating_light: AWS access GRANT FAILED");
    assert!(
        r.text
            .starts_with("<!subteam^S0SRE> <@U0CAROL> AWS access GRANT FAILED"),
        "{}",
        r.text
    );
    assert_eq!(
        r.blocks[1],
        json!({"type": "section", "text": {"type": "mrkdwn", "text":
            "<!subteam^S0SRE> <@U0CAROL> The grant FAILED and was rolled back: GrantFailed: trust policy too large"}})
    );
    let s = step(a, &mentions());
    assert_eq!(
        s.blocks,
        json!([
            {"type": "header", "text": {"type": "plain_text", "text": ":rotating_light: AWS access GRANT FAILED", "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "<!subteam^S0SRE> <@U0CAROL> The grant FAILED and was rolled back: GrantFailed: trust policy too large"}}
        ])
    );
    assert!(message(&all()[9], &mentions()).text.contains("<@U0CAROL>"));
    // Without configured mentions it is still loud, just without the ping.
    assert_eq!(
        header(&message(a, &Mentions::default())),
        ":rotating_light: AWS access GRANT FAILED"
    );
}

#[test]
fn every_event_renders_its_state_and_step() {
    let expected = [
        (
            "requested",
            ":hourglass_flowing_sand: AWS access request: awaiting approval",
            "*alice* asks for access; waiting for approval.",
        ),
        (
            "approved",
            ":white_check_mark: AWS access request: approved, granting",
            "Approved by *carol,dave*.",
        ),
        (
            "denied",
            ":no_entry: AWS access request: denied",
            "Denied by *carol*: not &lt;now&gt;",
        ),
        (
            "cancelled",
            ":heavy_multiplication_x: AWS access request: cancelled",
            "Cancelled before a decision: the AccessRequest no longer exists",
        ),
        (
            "approval_timed_out",
            ":alarm_clock: AWS access request: not approved in time",
            "Nobody approved in time; the request expired.",
        ),
        (
            "granted",
            ":unlock: AWS access request: active",
            "Granted (approved by *carol,dave*) until *2026-01-01T01:30:00Z*.",
        ),
        (
            "grant_failed",
            ":rotating_light: AWS access GRANT FAILED",
            "<!subteam^S0SRE> <@U0CAROL> The grant FAILED and was rolled back: GrantFailed: trust policy too large",
        ),
        (
            "expired",
            ":lock: AWS access request: expired, access removed",
            "Access ended at *2026-01-01T01:30:00Z* and was removed.",
        ),
        (
            "revoked",
            ":lock: AWS access request: revoked, access removed",
            "Access was ended early and removed.",
        ),
        (
            "revoke_failed",
            ":rotating_light: AWS access REVOKE FAILED",
            "<!subteam^S0SRE> <@U0CAROL> The revoke FAILED: RevokeFailed: AccessDenied — the trust-policy statement still ends at *2026-01-01T01:30:00Z* (AWS enforces it); clean it up.",
        ),
        (
            "extended",
            ":unlock: AWS access request: active, extended",
            "Extended (approved by *dave*) until *2026-01-01T01:30:00Z*.",
        ),
        (
            "extend_failed",
            ":warning: AWS access EXTENSION FAILED",
            "<!subteam^S0SRE> <@U0CAROL> An approved extension could NOT be made (ExtendFailed: no live statement); access still ends at *2026-01-01T01:30:00Z*.",
        ),
    ];
    let alerts = all();
    assert_eq!(alerts.len(), expected.len());
    for (a, (event, head, line)) in alerts.iter().zip(expected) {
        assert_eq!(a.event.name(), event);
        let m = message(a, &mentions());
        assert_eq!(header(&m), head, "{event}");
        assert_eq!(m.blocks[1]["text"]["text"], line, "{event}");
        // Every message shows the request's fields.
        let fields = m.blocks[2]["fields"].to_string();
        for needle in [
            "alice",
            "arn:aws:iam::123456789012:role/admin",
            "1h30m",
            "team-a/fix-db",
            "OPS-42",
        ] {
            assert!(fields.contains(needle), "{event}: {needle} in {fields}");
        }
        assert_eq!(fields.contains("Expires at"), a.grant.is_some(), "{event}");
        // Only the awaiting-approval message has buttons.
        let has_buttons = m.blocks.to_string().contains("aws-jit-approve");
        assert_eq!(has_buttons, event == "requested", "{event}");
        let s = step(a, &mentions());
        assert_eq!(s.text, line, "{event}");
        // slack-morphism's Block Kit model takes both as they are.
        for blocks in [&m.blocks, &s.blocks] {
            let typed: Vec<slack_morphism::prelude::SlackBlock> =
                serde_json::from_value(blocks.clone()).unwrap_or_else(|e| panic!("{event}: {e}"));
            assert_eq!(typed.len(), blocks.as_array().unwrap().len(), "{event}");
        }
    }
}

#[test]
fn each_extension_is_shown_once_under_its_own_key() {
    let alerts = all();
    let keys: Vec<String> = alerts.iter().map(Alert::shown_as).collect();
    assert!(keys.contains(&"extended-1".to_string()), "{keys:?}");
    assert!(keys.contains(&"extend_failed-2".to_string()), "{keys:?}");
    assert!(keys.contains(&"granted".to_string()), "{keys:?}");
    // Every key fits status.slack.relayed (64 characters each).
    let long = alert("extended", json!({"extend": {"id": "x".repeat(200)}}));
    assert!(long.shown_as().chars().count() <= 64, "{}", long.shown_as());
}

#[test]
fn a_scheduled_request_says_when_it_starts() {
    let mut a = alert("requested", json!({}));
    a.input.start_at = "2026-01-02T09:00:00Z".into();
    let fields = message(&a, &mentions()).blocks[2]["fields"].to_string();
    assert!(
        fields.contains("Starts at") && fields.contains("2026-01-02T09:00:00Z"),
        "{fields}"
    );
    let unscheduled = message(&all()[0], &mentions()).blocks[2]["fields"].to_string();
    assert!(!unscheduled.contains("Starts at"), "{unscheduled}");
}

#[test]
fn breaking_the_glass_is_said_loudly_with_the_approvers_mentioned() {
    let mut requested = alert("requested", json!({}));
    requested.input.break_glass = true;
    let line = step(&requested, &mentions()).text;
    assert!(
        line.starts_with("<!subteam^S0SRE> <@U0CAROL> :rotating_light: *alice* BROKE THE GLASS"),
        "{line}"
    );
    // The reason is escaped like every field a person typed.
    assert!(line.contains("fix &lt;!channel&gt; &amp; db"), "{line}");
    let mut granted = alert("granted", json!({"approval": approval(), "grant": grant()}));
    granted.input.break_glass = true;
    let line = step(&granted, &mentions()).text;
    assert!(
        line.contains("BREAK GLASS: granted without approval until *2026-01-01T01:30:00Z*")
            && line.contains("kubectl jit review fix-db -n team-a"),
        "{line}"
    );
}

#[test]
fn helpers() {
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(4), "4s");
    assert_eq!(duration(3600), "1h");
    assert_eq!(duration(3661), "1h1m1s");
    assert_eq!(escape("<@U1> & co", 100), "&lt;@U1&gt; &amp; co");
    assert_eq!(escape("abcdef", 3), "abc…");
    assert!(
        serde_json::from_value::<Alert>(json!({"event": "bribed", "execution_arn": "x"})).is_err()
    );
}

/// An alert of another method: what is granted and what a failed revoke leaves are said
/// in its words, never as a role or a trust-policy statement.
fn other_method(event: &str, method: &str, target: &str, extra: Value) -> Alert {
    let mut a = alert(event, extra);
    a.input.method = method.into();
    a.input.role_arn = target.into();
    a.input.work_group = String::new();
    a
}

#[test]
fn each_method_is_named_in_its_own_words() {
    let ic_grant = json!({"method": "IdentityCenter", "granted_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-01T01:30:00Z", "instance_arn": "arn:aws:sso:::instance/ssoins-1",
        "permission_set_arn": "arn:aws:sso:::permissionSet/ssoins-1/ps-1",
        "account_ids": ["111111111111", "222222222222"], "user_id": "u-1"});
    let granted = other_method(
        "granted",
        "IdentityCenter",
        "AdminAccess",
        json!({"approval": approval(), "grant": ic_grant}),
    );
    let r = message(&granted, &mentions());
    let fields = r.blocks[2]["fields"].to_string();
    assert!(
        fields.contains("*Permission set*\\n`AdminAccess`"),
        "{fields}"
    );
    assert!(
        fields.contains("*Accounts*\\n111111111111, 222222222222"),
        "{fields}"
    );
    assert!(!fields.contains("*Role*"), "{fields}");

    let failed = other_method(
        "revoke_failed",
        "IdentityCenter",
        "AdminAccess",
        json!({"grant": grant(), "error": {"Error": "RevokeFailed", "Cause": "ConflictException"}}),
    );
    let text = step(&failed, &mentions()).text;
    assert!(
        text.contains("the account assignment may still exist"),
        "{text}"
    );
    assert!(!text.contains("trust-policy"), "{text}");

    let group = other_method(
        "revoke_failed",
        "IamGroup",
        "arn:aws:iam::123456789012:group/admins",
        json!({"grant": grant(), "error": {"Error": "RevokeFailed", "Cause": "x"}}),
    );
    let r = message(&group, &mentions());
    assert!(
        r.blocks[2]["fields"]
            .to_string()
            .contains("*IAM group*\\n`arn:aws:iam::123456789012:group/admins`")
    );
    let text = step(&group, &mentions()).text;
    assert!(
        text.contains("the group membership may still exist"),
        "{text}"
    );
}
