use super::*;
use serde_json::json;

fn role(extension: serde_json::Value) -> AccessRole {
    let mut spec = json!({
        "roleArn": "arn:aws:iam::123456789012:role/prod-admin",
        "method": "TrustPolicy",
        "maxDuration": "2h",
        "defaultDuration": "1h",
        "approvalsRequired": 1,
        "approvers": [{"user": "carol"}, {"user": "dave"}, {"group": "sre"}],
        "requesters": [{"user": "alice"}],
        "reasonPattern": "INC-[0-9]+",
        "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
    });
    if !extension.is_null() {
        spec["extension"] = extension;
    }
    serde_json::from_value(json!({
        "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
        "metadata": {"name": "prod-admin"}, "spec": spec
    }))
    .unwrap()
}

fn request(status: serde_json::Value) -> AccessRequest {
    let mut status = status;
    status["phase"] = json!("Active");
    status["grantedAt"] = json!("2026-12-01T10:00:00Z");
    status["expiresAt"] = json!("2026-12-01T11:00:00Z");
    serde_json::from_value(json!({
        "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "fix", "namespace": "team-a", "uid": "5b0c2d1e-0000-4000-8000-000000000001"},
        "spec": {"role": "prod-admin", "requester": "alice", "reason": "INC-1 db down"},
        "status": status
    }))
    .unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn window() -> Window {
    Window {
        granted_at: ts("2026-12-01T10:00:00Z"),
        expires_at: ts("2026-12-01T11:00:00Z"),
        now: ts("2026-12-01T10:30:00Z"),
    }
}

fn ask(id: &str, by: &str) -> serde_json::Value {
    json!({"id": id, "requestedBy": "alice", "by": by, "reason": "INC-1 still down"})
}

fn refusal(step: Step) -> &'static str {
    match step {
        Step::Refuse { refusal, .. } => refusal.reason(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn nothing_to_do_without_an_ask_or_while_one_is_applied() {
    let r = role(json!({}));
    assert_eq!(next(&r, &request(json!({})), window()).0, Step::Nothing);
    let applying = request(json!({
        "extensions": [ask("1", "30m"), ask("2", "30m")],
        "extensionOutcomes": [{"id": "1", "phase": "Extending", "expiresAt": "2026-12-01T11:30:00Z"}]
    }));
    assert_eq!(next(&r, &applying, window()).0, Step::Nothing);
}

#[test]
fn an_ask_waits_for_its_own_votes_and_is_approved_to_the_current_expiry_plus_by() {
    let r = role(json!({}));
    let asked = request(json!({"extensions": [ask("1", "30m")],
        // A vote on the request, or on another extension, is not a vote on this one.
        "approvals": [{"approver": "carol", "decision": "Approve"}],
        "extensionApprovals": [{"extension": "2", "approver": "dave", "decision": "Approve"}]}));
    assert_eq!(
        next(&r, &asked, window()).0,
        Step::Pending {
            id: "1".into(),
            have: 0,
            need: 1,
            until: ts("2026-12-01T11:30:00Z")
        }
    );
    let approved = request(json!({"extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "carol", "decision": "Approve"}]}));
    assert_eq!(
        next(&r, &approved, window()).0,
        Step::Approved {
            id: "1".into(),
            approvers: vec!["carol".into()],
            until: ts("2026-12-01T11:30:00Z")
        }
    );
}

#[test]
fn the_requester_never_approves_their_own_extension_and_a_deny_denies() {
    let r = role(json!({}));
    let own = request(json!({"extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "alice", "decision": "Approve"}]}));
    let (step, ignored) = next(&r, &own, window());
    assert!(matches!(step, Step::Pending { have: 0, .. }), "{step:?}");
    assert_eq!(ignored.len(), 1);
    let denied = request(json!({"extensions": [ask("1", "30m")],
        "extensionApprovals": [
            {"extension": "1", "approver": "dave", "decision": "Deny", "comment": "no"},
            {"extension": "1", "approver": "carol", "decision": "Approve"}]}));
    assert!(matches!(next(&r, &denied, window()).0, Step::Denied { by, .. } if by == "dave"));
}

#[test]
fn approvals_required_comes_from_the_extension_policy_and_may_be_zero() {
    let two = role(json!({"approvalsRequired": 2}));
    let one_vote = request(json!({"extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "carol", "decision": "Approve"}]}));
    assert!(matches!(
        next(&two, &one_vote, window()).0,
        Step::Pending {
            have: 1,
            need: 2,
            ..
        }
    ));
    let none = role(json!({"approvalsRequired": 0}));
    let asked = request(json!({"extensions": [ask("1", "30m")]}));
    assert!(matches!(
        next(&none, &asked, window()).0,
        Step::Approved { approvers, .. } if approvers == vec![NO_APPROVAL_NEEDED.to_string()]
    ));
}

#[test]
fn refusals_say_why() {
    let allowed = role(json!({"maxExtensions": 1}));
    let asked = |a: serde_json::Value| request(json!({"extensions": [a]}));
    // No extension policy: none.
    assert_eq!(
        refusal(next(&role(json!(null)), &asked(ask("1", "30m")), window()).0),
        "ExtensionNotAllowed"
    );
    // Past maxDuration (2h from 10:00): 11:00 + 61m is 12:01.
    let past = next(&allowed, &asked(ask("1", "61m")), window()).0;
    assert!(
        matches!(&past, Step::Refuse { refusal: Refusal::PastMaxDuration { room, .. }, .. } if room == "3600s"),
        "{past:?}"
    );
    // Exactly to the bound is allowed.
    assert!(matches!(
        next(&allowed, &asked(ask("1", "1h")), window()).0,
        Step::Pending { .. }
    ));
    // Someone else's ask (admission refuses it; the controller too).
    let mut other = ask("1", "30m");
    other["requestedBy"] = json!("mallory");
    assert_eq!(
        refusal(next(&allowed, &asked(other), window()).0),
        "ExtensionNotTheRequester"
    );
    // The reason must match the role's pattern, as a request's.
    let mut vague = ask("1", "30m");
    vague["reason"] = json!("more time");
    assert_eq!(
        refusal(next(&allowed, &asked(vague), window()).0),
        "ExtensionReasonInvalid"
    );
    // A duration the apiserver would refuse, stored before the rule.
    assert_eq!(
        refusal(next(&allowed, &asked(ask("1", "soon")), window()).0),
        "InvalidExtension"
    );
}

#[test]
fn the_count_of_extensions_is_bounded() {
    let r = role(json!({"maxExtensions": 1, "approvalsRequired": 0}));
    let second = request(json!({
        "extensions": [ask("1", "10m"), ask("2", "10m")],
        "extensionOutcomes": [{"id": "1", "phase": "Extended", "expiresAt": "2026-12-01T11:10:00Z"}]
    }));
    let step = next(&r, &second, window()).0;
    assert!(
        matches!(&step, Step::Refuse { id, .. } if id == "2"),
        "{step:?}"
    );
    assert_eq!(refusal(step), "TooManyExtensions");
    // A refused or denied one does not count.
    let after_refusal = request(json!({
        "extensions": [ask("1", "10m"), ask("2", "10m")],
        "extensionOutcomes": [{"id": "1", "phase": "Refused", "message": "x"}]
    }));
    assert!(matches!(
        next(&r, &after_refusal, window()).0,
        Step::Approved { id, .. } if id == "2"
    ));
}

#[test]
fn a_requester_no_longer_eligible_gets_no_extension() {
    let mut r = role(json!({}));
    r.spec.requesters = serde_json::from_value(json!([{"user": "bob"}])).unwrap();
    let asked = request(json!({"extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "carol", "decision": "Approve"}]}));
    assert_eq!(
        refusal(next(&r, &asked, window()).0),
        "ExtensionNoLongerValid"
    );
}

#[test]
fn verify_stands_on_the_request_and_its_role_alone() {
    let r = role(json!({}));
    let base = json!({
        "extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "carol", "decision": "Approve"}],
        "extensionOutcomes": [{"id": "1", "phase": "Extending", "expiresAt": "2026-12-01T11:30:00Z"}]
    });
    let until = ts("2026-12-01T11:30:00Z");
    assert_eq!(verify(&r, &request(base.clone()), "1", until), Ok(()));
    // Another expiry than the one recorded, or another extension.
    assert!(verify(&r, &request(base.clone()), "1", ts("2026-12-01T11:31:00Z")).is_err());
    assert!(verify(&r, &request(base.clone()), "2", until).is_err());
    // Votes that no longer meet the rule (an approver removed from the role).
    let mut fewer = r.clone();
    fewer.spec.approvers = serde_json::from_value(json!([{"user": "dave"}])).unwrap();
    assert!(verify(&fewer, &request(base.clone()), "1", until).is_err());
    // No outcome recorded: the controller never approved it.
    let mut unrecorded = base.clone();
    unrecorded["extensionOutcomes"] = json!([]);
    assert!(verify(&r, &request(unrecorded), "1", until).is_err());
    // Past maxDuration, however it was recorded.
    let mut far = base.clone();
    far["extensionOutcomes"][0]["expiresAt"] = json!("2026-12-01T12:30:00Z");
    assert!(verify(&r, &request(far), "1", ts("2026-12-01T12:30:00Z")).is_err());
    // The role no longer allows extensions.
    assert!(verify(&role(json!(null)), &request(base), "1", until).is_err());
}

#[test]
fn approved_until_is_the_latest_approved_expiry() {
    let r = request(json!({
        "extensionOutcomes": [
            {"id": "1", "phase": "Extended", "expiresAt": "2026-12-01T11:30:00Z"},
            {"id": "2", "phase": "Failed", "expiresAt": "2026-12-01T13:30:00Z"},
            {"id": "3", "phase": "Extending", "expiresAt": "2026-12-01T12:00:00Z"}]
    }));
    assert_eq!(approved_until(&r), Some(ts("2026-12-01T12:00:00Z")));
    assert_eq!(approved_until(&request(json!({}))), None);
}

#[test]
fn a_second_open_request_for_the_same_role_is_refused_with_a_pointer_to_extend() {
    let at = |name: &str, created: &str, phase: Option<&str>, requester: &str| {
        let mut r: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                         "creationTimestamp": created},
            "spec": {"role": "prod-admin", "requester": requester, "reason": "INC-1"}
        }))
        .unwrap();
        if let Some(p) = phase {
            r.status = Some(serde_json::from_value(json!({"phase": p})).unwrap());
        }
        r
    };
    let new = at("b", "2026-12-01T10:05:00Z", None, "alice");
    let active = at("a", "2026-12-01T10:00:00Z", Some("Active"), "alice");
    match overlapping(&new, [&active]) {
        Some(Rejection::Overlaps { other, what, .. }) => {
            assert_eq!(other, "team-a/a");
            assert!(what.contains("kubectl jit extend"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        overlapping(&new, [&active]).map(|r| r.reason()),
        Some("OverlapsOpenRequest")
    );
    // Not for someone else, an ended request, a later one, or itself.
    let bobs = at("c", "2026-12-01T10:00:00Z", Some("Active"), "bob");
    let ended = at("d", "2026-12-01T10:00:00Z", Some("Expired"), "alice");
    let rejected = at("e", "2026-12-01T10:00:00Z", Some("Rejected"), "alice");
    let later = at("f", "2026-12-01T10:09:00Z", Some("Active"), "alice");
    // Still waiting for approvers: not yet a grant.
    let waiting = at(
        "g",
        "2026-12-01T10:00:00Z",
        Some("AwaitingApproval"),
        "alice",
    );
    assert_eq!(overlapping(&new, [&waiting]), None);
    assert_eq!(
        overlapping(&new, [&bobs, &ended, &rejected, &later, &new]),
        None
    );
    // Two created in the same second: exactly one goes ahead.
    let twin_a = at("x", "2026-12-01T10:05:00Z", Some("Approved"), "alice");
    let mut twin_b = at("y", "2026-12-01T10:05:00Z", Some("Approved"), "alice");
    assert!(overlapping(&twin_b, [&twin_a]).is_some());
    twin_b.status = None;
    assert!(overlapping(&twin_a, [&twin_b]).is_none());
}

#[test]
fn an_ask_too_close_to_the_expiry_or_of_a_grant_made_otherwise_is_refused() {
    let r = role(json!({"approvalsRequired": 0}));
    let asked = request(json!({"extensions": [ask("1", "30m")]}));
    let late = Window {
        now: ts("2026-12-01T10:59:40Z"),
        ..window()
    };
    assert_eq!(refusal(next(&r, &asked, late).0), "ExtensionTooLate");
    // The role says TrustPolicy now, but the grant was made as a group membership.
    let mut grouped = asked.clone();
    grouped.status.as_mut().unwrap().grant =
        Some(serde_json::from_value(json!({"method": "IamGroup"})).unwrap());
    assert_eq!(
        refusal(next(&r, &grouped, window()).0),
        "ExtensionNotAllowed"
    );
}

#[test]
fn a_move_not_recorded_yet_is_not_a_refusal() {
    let r = role(json!({}));
    let asked = request(json!({
        "extensions": [ask("1", "30m")],
        "extensionApprovals": [{"extension": "1", "approver": "carol", "decision": "Approve"}]
    }));
    assert!(matches!(
        verify(&r, &asked, "1", ts("2026-12-01T11:30:00Z")),
        Err(Unverified::NotYetRecorded(_))
    ));
    assert!(matches!(
        verify(&r, &asked, "9", ts("2026-12-01T11:30:00Z")),
        Err(Unverified::Refused(_))
    ));
}

#[test]
fn the_latest_move_counts_failed_ones_too() {
    let r = request(json!({
        "extensionOutcomes": [
            {"id": "1", "phase": "Failed", "expiresAt": "2026-12-01T12:00:00Z"},
            {"id": "2", "phase": "Refused"}]
    }));
    assert_eq!(
        latest_move(r.status.as_ref().unwrap()),
        Some(ts("2026-12-01T12:00:00Z"))
    );
}
