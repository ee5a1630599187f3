use super::*;
use crate::crd::{AccessRequestSpec, AccessRoleSpec, ApprovalChannel, PrincipalMapping};

fn role(approvals_required: i32) -> AccessRole {
    let mut r = AccessRole::new(
        "prod-admin",
        AccessRoleSpec {
            role_arn: "arn:aws:iam::123456789012:role/ops/prod-admin".into(),
            method: GrantMethod::TrustPolicy,
            identity_center: None,
            iam_group: None,
            max_duration: "4h".into(),
            default_duration: "1h".into(),
            approval_timeout: "30m".into(),
            approvals_required,
            approvers: vec![
                Subject {
                    user: Some("carol".into()),
                    group: None,
                    slack_user_id: None,
                },
                Subject {
                    user: Some("dave".into()),
                    group: None,
                    slack_user_id: None,
                },
                Subject {
                    user: None,
                    group: Some("sre".into()),
                    slack_user_id: None,
                },
            ],
            requesters: vec![
                Subject {
                    user: Some("alice".into()),
                    group: None,
                    slack_user_id: None,
                },
                Subject {
                    user: None,
                    group: Some("developers".into()),
                    slack_user_id: None,
                },
            ],
            require_reason: true,
            reason_pattern: None,
            ticket_pattern: None,
            pattern_hint: None,
            extension: None,
            max_start_delay: None,
            break_glass: None,
            principal: PrincipalMapping {
                users: [(
                    "bob".to_string(),
                    "arn:aws:iam::123456789012:role/bob-sso".to_string(),
                )]
                .into_iter()
                .collect(),
                template: Some("arn:aws:iam::123456789012:user/{username}".into()),
            },
            slack_channel: None,
        },
    );
    r.metadata.uid = Some("role-uid".into());
    r
}

fn request(requester: &str, duration: Option<&str>, reason: &str) -> AccessRequest {
    let mut r = AccessRequest::new(
        "fix-prod",
        AccessRequestSpec {
            role: "prod-admin".into(),
            requester: requester.into(),
            requester_group: None,
            duration: duration.map(str::to_string),
            reason: reason.into(),
            ticket: Some("INC-1".into()),
            start_at: None,
            break_glass: false,
        },
    );
    r.metadata.namespace = Some("team-a".into());
    r.metadata.uid = Some("5b0c2d1e-0000-4000-8000-000000000001".into());
    r
}

fn vote(approver: &str, decision: Decision) -> Approval {
    Approval {
        approver: approver.into(),
        decision,
        group: None,
        comment: Some(format!("{approver} says {decision:?}")),
        time: None,
        via: ApprovalChannel::Kubectl,
    }
}

#[test]
fn a_valid_request_plans_the_execution_input() {
    let input = plan(&request("alice", Some("30m"), "fix"), Some(&role(1))).expect("valid");
    assert_eq!(input.requester_arn, "arn:aws:iam::123456789012:user/alice");
    assert_eq!(input.requester_name, "alice");
    assert_eq!(input.duration_seconds, 1800);
    assert_eq!(input.approval_timeout_seconds, 1800);
    assert_eq!(input.work_group, "123456789012/prod-admin");
    assert_eq!(input.ticket, "INC-1");
    assert_eq!(input.request.namespace, "team-a");
    assert_eq!(input.request.uid, "5b0c2d1e-0000-4000-8000-000000000001");
    assert_eq!(input.role_name, "prod-admin");
    assert_eq!(
        input.session_name,
        "ar-5b0c2d1e-0000-4000-8000-000000000001"
    );
    assert_eq!(input.source_identity, "alice");
    assert_eq!(
        input.session_policy_name,
        "AwsJit-5b0c2d1e-0000-4000-8000-000000000001"
    );
    let access = access_instructions(&input, None);
    assert_eq!(
        access.role_arn,
        "arn:aws:iam::123456789012:role/ops/prod-admin"
    );
    assert!(
        access
            .assume_role_command
            .contains("--role-session-name ar-5b0c2d1e-0000-4000-8000-000000000001"),
        "{}",
        access.assume_role_command
    );
}

#[test]
fn a_requester_that_cannot_be_a_source_identity_is_rejected() {
    let mut role = role(1);
    let long = format!("oidc:{}", "a".repeat(60));
    role.spec.requesters.push(Subject {
        user: Some(long.clone()),
        group: None,
        slack_user_id: None,
    });
    role.spec
        .principal
        .users
        .insert(long, "arn:aws:iam::123456789012:user/long".to_string());
    let err = plan(
        &request(&format!("oidc:{}", "a".repeat(60)), None, "fix"),
        Some(&role),
    )
    .unwrap_err();
    assert_eq!(err.reason(), "NoSourceIdentity");
    assert!(err.to_string().contains("at most 64"), "{err}");
}

#[test]
fn the_operator_revokes_what_an_execution_left_once_it_was_approved() {
    let aborted = ExecutionState::Ended {
        status: "ABORTED".into(),
    };
    let failed = ExecutionState::Failed {
        error: "RevokeFailed".into(),
        cause: "x".into(),
    };
    let succeeded = ExecutionState::Succeeded {
        outcome: Some(Outcome::Expired),
        output: serde_json::Value::Null,
    };
    let active = crate::crd::AccessRequestStatus {
        phase: Some(Phase::Active),
        ..Default::default()
    };
    let pending = crate::crd::AccessRequestStatus {
        phase: Some(Phase::AwaitingApproval),
        ..Default::default()
    };
    assert!(needs_operator_revoke(&aborted, &active, false));
    assert!(needs_operator_revoke(&failed, &active, false));
    assert!(
        needs_operator_revoke(&aborted, &pending, true),
        "approved: a grant may be in flight"
    );
    assert!(
        !needs_operator_revoke(&aborted, &pending, false),
        "never approved: nothing granted"
    );
    assert!(
        !needs_operator_revoke(&succeeded, &active, true),
        "the execution revoked"
    );
    assert!(!needs_operator_revoke(
        &ExecutionState::Running,
        &active,
        true
    ));
    let mut done = active.clone();
    set_condition(
        &mut done.conditions,
        REVOKED_CONDITION,
        true,
        "RevokedByOperator",
        "m",
        None,
        &Time(jiff::Timestamp::now()),
    );
    assert!(
        !needs_operator_revoke(&aborted, &done, true),
        "once done, done"
    );

    let (phase, message) = after_operator_revoke(&aborted, false, true, "2026-12-01T10:00:00Z");
    assert_eq!(phase, Phase::Revoked);
    assert!(
        message.contains("ABORTED") && message.contains("2026-12-01T10:00:00Z"),
        "{message}"
    );
    assert_eq!(
        after_operator_revoke(&failed, true, true, "t").0,
        Phase::Expired
    );
    let grant_failed = ExecutionState::Failed {
        error: "GrantFailed".into(),
        cause: "no".into(),
    };
    assert_eq!(
        after_operator_revoke(&grant_failed, false, false, "t").0,
        Phase::Failed
    );
}

#[test]
fn expiries_are_whole_seconds_from_now() {
    let now: jiff::Timestamp = "2026-12-01T10:00:00.9Z".parse().unwrap();
    assert_eq!(expiry_after(now, 3600), "2026-12-01T11:00:00Z");
    assert_eq!(expiry_after(now, 0), "2026-12-01T10:00:00Z");
}

#[test]
fn duration_defaults_from_the_role_and_explicit_users_win_over_the_template() {
    let mut r = request("bob", None, "fix");
    r.spec.requester_group = Some("developers".into());
    let input = plan(&r, Some(&role(1))).expect("valid");
    assert_eq!(input.duration_seconds, 3600);
    assert_eq!(
        input.requester_arn,
        "arn:aws:iam::123456789012:role/bob-sso"
    );
}

#[test]
fn invalid_requests_are_rejected_with_a_reason() {
    let cases: Vec<(AccessRequest, Option<AccessRole>, &str)> = vec![
        (request("alice", None, "x"), None, "UnknownRole"),
        (request("mallory", None, "x"), Some(role(1)), "NotEligible"),
        (
            request("alice", Some("5h"), "x"),
            Some(role(1)),
            "DurationTooLong",
        ),
        (
            request("alice", Some("forever"), "x"),
            Some(role(1)),
            "InvalidDuration",
        ),
        (
            request("alice", Some("0s"), "x"),
            Some(role(1)),
            "InvalidDuration",
        ),
        (
            request("alice", None, "   "),
            Some(role(1)),
            "ReasonRequired",
        ),
    ];
    for (req, role, reason) in cases {
        let err = plan(&req, role.as_ref()).expect_err(reason);
        assert_eq!(err.reason(), reason, "{err}");
        assert!(!err.to_string().is_empty());
    }
    // A role of another method without its target (the CRD refuses it; a stored object
    // from before the rule is refused here).
    let mut other_method = role(1);
    other_method.spec.method = GrantMethod::IdentityCenter;
    let err = plan(&request("alice", None, "x"), Some(&other_method)).expect_err("method");
    assert_eq!(err.reason(), "NoTarget", "{err}");
    // A username that makes no valid IAM principal.
    let mut r = request("system:serviceaccount:ns:sa", None, "x");
    r.spec.requester_group = Some("developers".into());
    let err = plan(&r, Some(&role(1))).expect_err("principal");
    assert_eq!(err.reason(), "NoPrincipal");
}

#[test]
fn reasons_and_tickets_must_match_the_roles_patterns() {
    let mut r = role(1);
    r.spec.reason_pattern = Some("INC-[0-9]+".into());
    r.spec.ticket_pattern = Some("^(INC|CHG)-[0-9]+$".into());
    r.spec.pattern_hint = Some("name the incident, as INC-1234".into());
    let with = |r: &AccessRole, reason: &str, ticket: Option<&str>| {
        let mut req = request("alice", None, reason);
        req.spec.ticket = ticket.map(str::to_owned);
        plan(&req, Some(r))
    };
    // Found anywhere in the reason; the ticket's pattern is anchored by the role.
    assert!(with(&r, "billing stuck, INC-4711", Some("CHG-12")).is_ok());
    for (reason, ticket, why) in [
        ("billing stuck", Some("INC-1"), "ReasonPatternMismatch"),
        ("INC-", Some("INC-1"), "ReasonPatternMismatch"),
        ("INC-1", Some("see INC-1"), "TicketPatternMismatch"),
        ("INC-1", None, "TicketPatternMismatch"),
        ("INC-1", Some(""), "TicketPatternMismatch"),
    ] {
        let err = with(&r, reason, ticket).expect_err(why);
        assert_eq!(err.reason(), why, "{reason:?} {ticket:?}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("name the incident, as INC-1234"),
            "{message}"
        );
        assert!(message.contains("INC"), "the pattern is shown: {message}");
    }
    // A pattern the controller cannot use rejects, saying so (the CRD refuses what the
    // apiserver cannot compile; this is the rest: a stored object, a larger expansion).
    for bad in [
        "INC-(",
        "a{,3}",
        r"^INC-\d+$",
        r"\w+",
        r"[\s]x",
        r"\bINC",
        r"\\\d",
    ] {
        r.spec.reason_pattern = Some(bad.into());
        let err = with(&r, "INC-1", Some("INC-1")).expect_err(bad);
        assert_eq!(err.reason(), "InvalidPattern", "{err}");
        assert!(err.to_string().contains("reasonPattern"), "{err}");
    }
    // An escaped backslash before d is a literal, not a Perl class.
    r.spec.reason_pattern = Some(r"^INC\\d$".into());
    assert!(with(&r, r"INC\d", Some("INC-1")).is_ok());
    // Digits of other scripts are not [0-9].
    r.spec.reason_pattern = Some("^INC-[0-9]+$".into());
    for other in ["INC-٤٧١١", "INC-４７"] {
        let err = with(&r, other, Some("INC-1")).expect_err(other);
        assert_eq!(err.reason(), "ReasonPatternMismatch");
    }
    // A long reason is cut in the message.
    let long = format!("{} no incident", "x".repeat(2000));
    let err = with(&r, &long, Some("INC-1")).expect_err("long");
    assert!(err.to_string().len() < 700, "{}", err.to_string().len());
    // No patterns: any reason and ticket (requireReason aside).
    assert!(plan(&request("alice", None, "x"), Some(&role(1))).is_ok());
}

#[test]
fn group_eligibility_needs_the_claimed_group_listed() {
    let mut r = request("erin", None, "x");
    assert_eq!(
        plan(&r, Some(&role(1))).expect_err("no group").reason(),
        "NotEligible"
    );
    r.spec.requester_group = Some("marketing".into());
    assert_eq!(
        plan(&r, Some(&role(1))).expect_err("wrong group").reason(),
        "NotEligible"
    );
    r.spec.requester_group = Some("developers".into());
    assert!(plan(&r, Some(&role(1))).is_ok());
}

#[test]
fn tally_counts_distinct_listed_approvers_and_never_the_requester() {
    let role2 = role(2);
    let (t, _) = tally(&role2, "alice", &[vote("carol", Decision::Approve)]);
    assert_eq!(t, Tally::Pending { have: 1, need: 2 });
    let (t, _) = tally(
        &role2,
        "alice",
        &[
            vote("carol", Decision::Approve),
            vote("dave", Decision::Approve),
        ],
    );
    assert_eq!(
        t,
        Tally::Approved {
            approvers: vec!["carol".into(), "dave".into()]
        }
    );
    // The same person twice counts once (the list-map prevents it; the tally too).
    let (t, ignored) = tally(
        &role2,
        "alice",
        &[
            vote("carol", Decision::Approve),
            vote("carol", Decision::Approve),
        ],
    );
    assert_eq!(t, Tally::Pending { have: 1, need: 2 });
    assert_eq!(ignored[0].why, "already voted");
    // Self-approval and non-approvers are ignored, with a reason.
    let (t, ignored) = tally(
        &role(1),
        "carol",
        &[
            vote("carol", Decision::Approve),
            vote("mallory", Decision::Approve),
        ],
    );
    assert_eq!(t, Tally::Pending { have: 0, need: 1 });
    assert_eq!(ignored.len(), 2);
}

#[test]
fn one_valid_deny_denies_but_an_ignored_one_does_not() {
    let (t, _) = tally(
        &role(2),
        "alice",
        &[
            vote("carol", Decision::Approve),
            vote("dave", Decision::Deny),
        ],
    );
    assert_eq!(
        t,
        Tally::Denied {
            by: "dave".into(),
            comment: "dave says Deny".into()
        }
    );
    let (t, _) = tally(
        &role(1),
        "alice",
        &[
            vote("mallory", Decision::Deny),
            vote("carol", Decision::Approve),
        ],
    );
    assert_eq!(
        t,
        Tally::Approved {
            approvers: vec!["carol".into()]
        }
    );
}

#[test]
fn group_votes_count_when_cast_as_a_listed_group() {
    let mut v = vote("erin", Decision::Approve);
    let (t, _) = tally(&role(1), "alice", std::slice::from_ref(&v));
    assert_eq!(t, Tally::Pending { have: 0, need: 1 });
    v.group = Some("sre".into());
    let (t, _) = tally(&role(1), "alice", &[v]);
    assert_eq!(
        t,
        Tally::Approved {
            approvers: vec!["erin".into()]
        }
    );
}

#[test]
fn slack_account_names_are_not_people_and_never_count() {
    // How older releases recorded a Slack click through a group entry: the requester
    // (or an approver who also votes by kubectl) behind `slack:<ID>` must not count.
    let mut own = vote("slack:UALICE01", Decision::Approve);
    own.group = Some("sre".into());
    own.via = ApprovalChannel::Slack;
    let (t, ignored) = tally(&role(1), "alice", std::slice::from_ref(&own));
    assert_eq!(t, Tally::Pending { have: 0, need: 1 });
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    assert_eq!(ignored[0].approver, "slack:UALICE01");
    assert!(
        ignored[0].why.contains("not a Kubernetes user"),
        "{ignored:?}"
    );
    // dave by kubectl plus dave's Slack account is one person: one approval of two.
    let mut twice = vote("slack:UDAVE001", Decision::Approve);
    twice.group = Some("sre".into());
    let (t, _) = tally(&role(2), "alice", &[vote("dave", Decision::Approve), twice]);
    assert_eq!(t, Tally::Pending { have: 1, need: 2 });
    // Nor does such a Deny deny.
    let mut deny = vote("slack:UERIN001", Decision::Deny);
    deny.group = Some("sre".into());
    let (t, _) = tally(&role(1), "alice", &[deny, vote("carol", Decision::Approve)]);
    assert_eq!(
        t,
        Tally::Approved {
            approvers: vec!["carol".into()]
        }
    );
}

#[test]
fn execution_states_map_to_phases() {
    let ok = |o| ExecutionState::Succeeded {
        outcome: Some(o),
        output: serde_json::Value::Null,
    };
    assert_eq!(phase_of(&ExecutionState::Running), None);
    assert_eq!(
        phase_of(&ok(Outcome::Expired)).map(|p| p.0),
        Some(Phase::Expired)
    );
    assert_eq!(
        phase_of(&ok(Outcome::Revoked)).map(|p| p.0),
        Some(Phase::Revoked)
    );
    assert_eq!(
        phase_of(&ok(Outcome::Denied)).map(|p| p.0),
        Some(Phase::Denied)
    );
    assert_eq!(
        phase_of(&ok(Outcome::ApprovalTimedOut)).map(|p| p.0),
        Some(Phase::Expired)
    );
    let failed = ExecutionState::Failed {
        error: "GrantFailed".into(),
        cause: "too large".into(),
    };
    let (phase, message) = phase_of(&failed).expect("ended");
    assert_eq!(phase, Phase::Failed);
    assert!(message.contains("too large"));
    let aborted = ExecutionState::Ended {
        status: "ABORTED".into(),
    };
    assert_eq!(phase_of(&aborted).map(|p| p.0), Some(Phase::Failed));
}

#[test]
fn last_transition_time_moves_only_when_status_changes() {
    let t1 = Time(jiff::Timestamp::from_second(1_000).expect("ts"));
    let t2 = Time(jiff::Timestamp::from_second(2_000).expect("ts"));
    let c = conditions_for(&[], Phase::AwaitingApproval, "waiting", Some(1), &t1);
    let c = conditions_for(&c, Phase::Approved, "approved", Some(1), &t2);
    let ready = c.iter().find(|x| x.type_ == "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(
        ready.last_transition_time, t1,
        "Ready stayed False: time kept"
    );
    assert_eq!(ready.reason, "Approved");
    let approved = c.iter().find(|x| x.type_ == "Approved").expect("Approved");
    assert_eq!(
        (approved.status.as_str(), &approved.last_transition_time),
        ("True", &t2)
    );
    let c = conditions_for(&c, Phase::Active, "granted", Some(1), &t2);
    let ready = c.iter().find(|x| x.type_ == "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), &ready.last_transition_time),
        ("True", &t2)
    );
    // Expired after approval keeps Approved=True; an unanswered request never has it.
    let c = conditions_for(&c, Phase::Expired, "expired", Some(1), &t2);
    assert!(
        c.iter()
            .any(|x| x.type_ == "Approved" && x.status == "True")
    );
    let c = conditions_for(&[], Phase::Expired, "timed out", Some(1), &t1);
    assert!(
        c.iter()
            .any(|x| x.type_ == "Approved" && x.status == "False")
    );
    assert!(
        c.iter()
            .any(|x| x.type_ == "Reconciling" && x.status == "False")
    );
    let c = conditions_for(&[], Phase::Rejected, "bad", Some(1), &t1);
    assert!(c.iter().any(|x| x.type_ == "Stalled" && x.status == "True"));
}

fn cond<'a>(c: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
    c.iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.as_str(), x.reason.as_str()))
}

/// The conditions of `phase` reached by way of `path` (each phase written in turn, as
/// the controller does).
fn after(path: &[Phase], phase: Phase) -> Vec<Condition> {
    let t = Time(jiff::Timestamp::from_second(1_000).expect("ts"));
    let mut c = Vec::new();
    for p in path.iter().chain([&phase]) {
        c = conditions_for(&c, *p, "m", Some(1), &t);
    }
    c
}

const ALL_PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::AwaitingApproval,
    Phase::Approved,
    Phase::Active,
    Phase::Expired,
    Phase::Denied,
    Phase::Rejected,
    Phase::Revoked,
    Phase::Failed,
];

#[test]
fn in_progress_phases_are_reconciling_and_active_is_ready() {
    use Phase::*;
    for phase in [Pending, AwaitingApproval, Approved] {
        let c = after(&[], phase);
        assert_eq!(
            cond(&c, "Reconciling"),
            Some(("True", format!("{phase:?}").as_str()))
        );
        assert_eq!(cond(&c, "Ready").map(|x| x.0), Some("False"));
        assert_eq!(cond(&c, "Stalled").map(|x| x.0), Some("False"));
        assert_eq!(cond(&c, ENDED_CONDITION).map(|x| x.0), Some("False"));
    }
    let c = after(&[Pending, AwaitingApproval, Approved], Active);
    assert_eq!(cond(&c, "Ready"), Some(("True", "Active")));
    assert_eq!(cond(&c, "Granted"), Some(("True", "Active")));
    assert_eq!(cond(&c, "Reconciling").map(|x| x.0), Some("False"));
    assert_eq!(cond(&c, ENDED_CONDITION).map(|x| x.0), Some("False"));
}

#[test]
fn expired_revoked_and_denied_drop_ready_and_say_ended() {
    use Phase::*;
    let granted = [Pending, AwaitingApproval, Approved, Active];
    for (path, phase) in [
        (&granted[..], Expired),
        (&granted[..], Revoked),
        (&[Pending, AwaitingApproval][..], Denied),
        // Never answered in time, and one revoked before it was granted.
        (&[Pending, AwaitingApproval][..], Expired),
        (&[Pending, AwaitingApproval, Approved][..], Revoked),
    ] {
        let c = after(path, phase);
        let reason = format!("{phase:?}");
        assert_eq!(cond(&c, "Ready"), None, "{path:?} -> {phase:?}: {c:?}");
        assert_eq!(cond(&c, ENDED_CONDITION), Some(("True", reason.as_str())));
        assert_eq!(cond(&c, "Reconciling").map(|x| x.0), Some("False"));
        assert_eq!(cond(&c, "Stalled").map(|x| x.0), Some("False"));
        assert_eq!(cond(&c, "Granted").map(|x| x.0), Some("False"));
    }
    // Approved says whether it ever was.
    assert_eq!(
        cond(&after(&granted, Revoked), "Approved").map(|x| x.0),
        Some("True")
    );
    assert_eq!(
        cond(&after(&[Pending, AwaitingApproval], Denied), "Approved").map(|x| x.0),
        Some("False")
    );
}

#[test]
fn rejected_and_failed_are_stalled_and_ended() {
    use Phase::*;
    for (path, phase) in [
        (&[][..], Rejected),
        (&[Pending, AwaitingApproval, Approved][..], Failed),
        (&[Pending, AwaitingApproval, Approved, Active][..], Failed),
        (&[][..], Failed),
    ] {
        let c = after(path, phase);
        let reason = format!("{phase:?}");
        assert_eq!(cond(&c, "Stalled"), Some(("True", reason.as_str())));
        assert_eq!(cond(&c, "Ready"), Some(("False", reason.as_str())));
        assert_eq!(cond(&c, ENDED_CONDITION), Some(("True", reason.as_str())));
        assert_eq!(cond(&c, "Reconciling").map(|x| x.0), Some("False"));
        assert_eq!(cond(&c, "Granted").map(|x| x.0), Some("False"));
    }
}

/// kstatus reads `Ready=False` with neither `Reconciling=True` nor `Stalled=True` as
/// InProgress, forever on a request that has ended: no path to a terminal phase may
/// leave that.
#[test]
fn no_ended_request_reads_as_in_progress() {
    for from in ALL_PHASES {
        for end in ALL_PHASES.into_iter().filter(|p| p.is_terminal()) {
            let c = after(&[from], end);
            let stalled = cond(&c, "Stalled").is_some_and(|x| x.0 == "True");
            let reconciling = cond(&c, "Reconciling").is_some_and(|x| x.0 == "True");
            let not_ready = cond(&c, "Ready").is_some_and(|x| x.0 != "True");
            assert!(!reconciling, "{from:?} -> {end:?}: {c:?}");
            assert!(stalled || !not_ready, "{from:?} -> {end:?}: {c:?}");
            assert_eq!(
                cond(&c, ENDED_CONDITION).map(|x| x.0),
                Some("True"),
                "{from:?} -> {end:?}"
            );
        }
    }
}

#[test]
fn requests_that_ended_without_an_ended_condition_are_rewritten_once() {
    use crate::crd::AccessRequestStatus;
    let t = Time(jiff::Timestamp::from_second(1_000).expect("ts"));
    // As an older operator left a denied request: Ready=False, no Ended.
    let mut old = Vec::new();
    for (type_, status) in [("Ready", false), ("Reconciling", false), ("Stalled", false)] {
        set_condition(&mut old, type_, status, "Denied", "m", Some(1), &t);
    }
    let status = |phase, conditions: Vec<Condition>| AccessRequestStatus {
        phase: Some(phase),
        conditions,
        ..Default::default()
    };
    assert_eq!(
        ended_in_old_terms(&status(Phase::Denied, old.clone())),
        Some(Phase::Denied)
    );
    // Rewritten: Ready gone, Ended=True; then nothing more to do.
    let new = conditions_for(&old, Phase::Denied, "m", Some(1), &t);
    assert_eq!(cond(&new, "Ready"), None);
    assert_eq!(ended_in_old_terms(&status(Phase::Denied, new)), None);
    // Live requests and today's ended ones are left alone.
    assert_eq!(ended_in_old_terms(&status(Phase::Active, old)), None);
    assert_eq!(
        ended_in_old_terms(&status(Phase::Failed, after(&[], Phase::Failed))),
        None
    );
    assert_eq!(ended_in_old_terms(&AccessRequestStatus::default()), None);
}

#[test]
fn work_groups_name_account_and_role() {
    assert_eq!(
        work_group("arn:aws:iam::123456789012:role/admin")
            .ok()
            .as_deref(),
        Some("123456789012/admin")
    );
    assert_eq!(
        work_group("arn:aws:iam::123456789012:role/a/b/admin")
            .ok()
            .as_deref(),
        Some("123456789012/admin")
    );
    assert!(work_group("arn:aws:iam::123456789012:user/admin").is_err());
    assert!(work_group("nonsense").is_err());
}

#[test]
fn revocation_is_for_the_requester_and_the_approvers() {
    let r = role(1);
    let rev = |by: &str, group: Option<&str>| crate::crd::Revocation {
        requested_by: by.into(),
        group: group.map(str::to_string),
        reason: None,
        time: None,
    };
    assert!(may_revoke(Some(&r), "alice", &rev("alice", None)));
    assert!(may_revoke(Some(&r), "alice", &rev("carol", None)));
    assert!(may_revoke(Some(&r), "alice", &rev("erin", Some("sre"))));
    assert!(!may_revoke(Some(&r), "alice", &rev("erin", None)));
    assert!(!may_revoke(
        Some(&r),
        "alice",
        &rev("bob", Some("developers"))
    ));
    assert!(!may_revoke(None, "alice", &rev("carol", None)));
}

fn identity_center_role() -> AccessRole {
    let mut r = role(1);
    r.spec.method = GrantMethod::IdentityCenter;
    r.spec.role_arn = String::new();
    r.spec.principal = PrincipalMapping {
        users: [("bob".to_string(), "bob@example.com".to_string())].into(),
        template: Some("{username}@example.com".into()),
    };
    r.spec.identity_center = Some(crate::crd::IdentityCenterTarget {
        instance_arn: "arn:aws:sso:::instance/ssoins-1234567890abcdef".into(),
        identity_store_id: "d-1234567890".into(),
        permission_set: "AdminAccess".into(),
        account_ids: vec!["111111111111".into()],
        user_attribute: crate::crd::UserAttribute::Email,
    });
    r
}

fn group_role() -> AccessRole {
    let mut r = role(1);
    r.spec.method = GrantMethod::IamGroup;
    r.spec.role_arn = String::new();
    r.spec.iam_group = Some(crate::crd::IamGroupTarget {
        group_arn: "arn:aws:iam::123456789012:group/admins".into(),
    });
    r
}

#[test]
fn identity_center_requests_map_to_a_user_and_name_the_permission_set() {
    let role = identity_center_role();
    let input = plan(&request("alice", None, "x"), Some(&role)).expect("plan");
    assert_eq!(input.method, "IdentityCenter");
    assert_eq!(input.requester_arn, "alice@example.com");
    assert_eq!(input.role_arn, "AdminAccess");
    // Nothing of the trust-policy method: no FIFO group, no session deny.
    assert_eq!(input.work_group, "");
    assert_eq!(input.session_policy_name, "");
    // Served accounts do not apply: the template bounds the member accounts.
    assert!(plan_in(&request("alice", None, "x"), Some(&role), &Scope::new([])).is_ok());
    // A name needs its ARN looked up before the approval answer.
    assert_eq!(
        grant_target(&role, "alice@example.com", None)
            .unwrap_err()
            .reason(),
        "NoTarget"
    );
    let arn = "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-0123456789abcdef";
    match grant_target(&role, "alice@example.com", Some(arn)) {
        Ok(crate::contract::GrantTarget::IdentityCenter {
            permission_set_arn,
            user,
            user_attribute_path,
            ..
        }) => {
            assert_eq!(permission_set_arn, arn);
            assert_eq!(user, "alice@example.com");
            assert_eq!(user_attribute_path, "emails.value");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A mapping to an ARN or to something with spaces is no Identity Center user.
    let mut bad = role.clone();
    bad.spec.principal.template = Some("arn:aws:iam::123456789012:user/{username}".into());
    assert_eq!(
        plan(&request("alice", None, "x"), Some(&bad))
            .unwrap_err()
            .reason(),
        "NoPrincipal"
    );
}

#[test]
fn group_requests_map_to_an_iam_user_of_the_groups_account() {
    let role = group_role();
    let input = plan(&request("alice", None, "x"), Some(&role)).expect("plan");
    assert_eq!(input.method, "IamGroup");
    assert_eq!(input.requester_arn, "arn:aws:iam::123456789012:user/alice");
    assert_eq!(input.role_arn, "arn:aws:iam::123456789012:group/admins");
    assert_eq!(
        grant_target(&role, &input.requester_arn, None),
        Ok(crate::contract::GrantTarget::IamGroup {
            group_name: "admins".into(),
            user_name: "alice".into()
        })
    );
    // The group's account must be served.
    assert_eq!(
        plan_in(
            &request("alice", None, "x"),
            Some(&role),
            &Scope::new(["210987654321".to_string()])
        )
        .unwrap_err()
        .reason(),
        "AccountNotServed"
    );
    // A role is no IAM user; nor is a user of another account.
    for template in [
        "arn:aws:iam::123456789012:role/{username}",
        "arn:aws:iam::210987654321:user/{username}",
    ] {
        let mut bad = role.clone();
        bad.spec.principal.template = Some(template.into());
        assert_eq!(
            plan(&request("alice", None, "x"), Some(&bad))
                .unwrap_err()
                .reason(),
            "NoPrincipal",
            "{template}"
        );
    }
}

/// Review (issue 12): a Kubernetes user name is substituted into the IamGroup template
/// verbatim, and an IAM user ARN's path is dropped when it becomes a user name. A
/// requester whose user name carries a `/` (an OIDC claim or certificate CN can) must
/// not be mapped to another person's IAM user: `mallory/alice` under
/// `arn:aws:iam::123456789012:user/{username}` reads as user `alice` on path `/mallory/`,
/// and the state machine adds IAM user `alice` (by name, paths ignored) to the group.
#[test]
fn review_a_slash_in_the_user_name_never_maps_to_another_iam_user() {
    let role = group_role();
    let mut req = request("mallory/alice", None, "x");
    req.spec.requester_group = Some("developers".into());
    match plan(&req, Some(&role)) {
        Err(e) => assert_eq!(e.reason(), "NoPrincipal", "{e}"),
        Ok(input) => {
            let target = grant_target(&role, &input.requester_arn, None);
            assert_ne!(
                target,
                Ok(crate::contract::GrantTarget::IamGroup {
                    group_name: "admins".into(),
                    user_name: "alice".into()
                }),
                "requester mallory/alice is granted IAM user alice's membership"
            );
        }
    }
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn watch(ending: bool, deadline: Option<&str>, last: Option<(&str, u64)>, now: &str) -> Watch {
    Watch {
        ending,
        deadline: deadline.map(at),
        moved: None,
        // A gap below the safety interval is an ending look's.
        last: last.map(|(a, gap)| Looked {
            at: at(a),
            gap: Duration::from_secs(gap),
            ending: gap < 600,
        }),
        since: at("2026-12-01T12:00:00Z"),
        safety: Duration::from_secs(600),
        now: at(now),
    }
}

/// A look now with this gap (the time is the watch's `now`, checked apart).
fn now(gap: u64, ending: bool) -> Look {
    Look::Now(Looked {
        at: at("2000-01-01T00:00:00Z"),
        gap: Duration::from_secs(gap),
        ending,
    })
}

/// [`look`] with the time of a `Now` set to the epoch above, for comparing with [`now`].
fn look_(w: &Watch) -> Look {
    match look(w) {
        Look::Now(l) => {
            assert_eq!(l.at, w.now, "a look is recorded at the time it is made");
            Look::Now(Looked {
                at: at("2000-01-01T00:00:00Z"),
                ..l
            })
        }
        other => other,
    }
}

#[test]
fn an_open_request_asks_step_functions_only_at_its_deadline_or_the_safety_recheck() {
    let s = Duration::from_secs;
    // Looked at a minute ago, deadline far: wait for the safety re-check (9 min left).
    assert_eq!(
        look_(&watch(
            false,
            Some("2026-12-01T13:00:00Z"),
            Some(("2026-12-01T12:10:00Z", 600)),
            "2026-12-01T12:11:00Z"
        )),
        Look::After(s(540))
    );
    // The deadline comes first: wake at it.
    assert_eq!(
        look_(&watch(
            false,
            Some("2026-12-01T13:00:00Z"),
            Some(("2026-12-01T12:58:00Z", 600)),
            "2026-12-01T12:59:30Z"
        )),
        Look::After(s(30))
    );
    // Never asked by this controller: the re-check counts from its start, not now (a
    // new leader does not ask about every open request at once).
    assert_eq!(
        look_(&watch(false, None, None, "2026-12-01T12:01:00Z")),
        Look::After(s(540))
    );
    // The re-check is due: ask, and the next one is a safety interval later.
    assert_eq!(
        look_(&watch(
            false,
            None,
            Some(("2026-12-01T12:01:00Z", 600)),
            "2026-12-01T12:11:00Z"
        )),
        now(600, false)
    );
    // A clock that went back (a look "in the future"): counted from the start instead.
    assert_eq!(
        look_(&watch(
            false,
            None,
            Some(("2026-12-01T12:20:00Z", 600)),
            "2026-12-01T12:10:00Z"
        )),
        now(600, false)
    );
}

#[test]
fn an_ending_execution_is_asked_about_less_and_less_often_until_it_has_ended() {
    let s = Duration::from_secs;
    // Ending (or past its deadline) and not looked at yet: now, then 1 s later.
    assert_eq!(
        look_(&watch(true, None, None, "2026-12-01T12:30:00Z")),
        now(1, true)
    );
    assert_eq!(
        look_(&watch(
            false,
            Some("2026-12-01T12:30:00Z"),
            Some(("2026-12-01T12:25:00Z", 600)),
            "2026-12-01T12:30:00Z"
        )),
        now(1, true),
        "a deadline reached ends the safety gap"
    );
    // Within the gap: wait it out (an event on the request does not add a look).
    assert_eq!(
        look_(&watch(
            true,
            None,
            Some(("2026-12-01T12:30:00Z", 4)),
            "2026-12-01T12:30:01Z"
        )),
        Look::After(s(3))
    );
    // Looks at 0, 1, 3 and 7 s: four for an execution that takes 10 s to end, and the
    // gap never grows past the safety re-check.
    let mut w = watch(true, None, None, "2026-12-01T12:30:00Z");
    let mut looks = 0;
    let mut gaps = Vec::new();
    while w.now < at("2026-12-01T12:30:10Z") {
        match look(&w) {
            Look::Now(looked) => {
                looks += 1;
                gaps.push(looked.gap.as_secs());
                w.last = Some(looked);
            }
            Look::After(d) => {
                w.now = w
                    .now
                    .checked_add(jiff::SignedDuration::try_from(d).unwrap())
                    .unwrap()
            }
        }
    }
    assert_eq!(looks, 4, "{gaps:?}");
    assert_eq!(gaps, [1, 2, 4, 8]);
    let long = watch(
        true,
        None,
        Some(("2026-12-01T12:30:00Z", 400)),
        "2026-12-01T12:40:00Z",
    );
    assert_eq!(look_(&long), now(600, true));
    // Word that it moved (the worker answered its task): a look now, whatever the gap.
    let mut told = watch(
        false,
        Some("2026-12-01T13:00:00Z"),
        Some(("2026-12-01T12:30:00Z", 600)),
        "2026-12-01T12:30:02Z",
    );
    told.moved = Some(at("2026-12-01T12:30:01Z"));
    assert_eq!(look_(&told), now(1, true));
    // Seen since: no second look for the same word, but the looks go on as for an
    // ending execution until it has ended.
    told.last = Some(Looked {
        at: at("2026-12-01T12:30:02Z"),
        gap: s(1),
        ending: true,
    });
    assert_eq!(look(&told), Look::After(s(1)));
    told.now = at("2026-12-01T12:30:02.5Z");
    assert_eq!(look(&told), Look::After(Duration::from_millis(500)));
}

#[test]
fn a_scheduled_request_is_bounded_by_the_roles_max_start_delay() {
    let at = |s: &str| Time(s.parse::<jiff::Timestamp>().unwrap());
    let mut r = request("alice", Some("1h"), "INC-1 fix");
    r.metadata.creation_timestamp = Some(at("2026-12-01T10:00:00Z"));
    r.spec.start_at = Some(at("2026-12-01T12:00:00Z"));
    let mut role = role(1);
    // A role that sets no maxStartDelay takes no scheduled requests.
    assert_eq!(
        plan(&r, Some(&role)).map(|_| ()).map_err(|e| e.reason()),
        Err("StartNotAllowed")
    );
    role.spec.max_start_delay = Some("1h".into());
    let too_far = plan(&r, Some(&role)).unwrap_err();
    assert_eq!(too_far.reason(), "StartTooFarAhead");
    assert!(
        too_far
            .to_string()
            .contains("7200s after the request was created"),
        "{too_far}"
    );
    // Within the bound: the approval waits until the start, and approvalTimeout after.
    role.spec.max_start_delay = Some("3h".into());
    let input = plan(&r, Some(&role)).unwrap();
    assert_eq!(input.approval_timeout_seconds, 30 * 60 + 2 * 3600);
    assert_eq!(input.start_at, "2026-12-01T12:00:00Z");
    // The same whenever it is planned (from the creation, not from now).
    assert_eq!(plan(&r, Some(&role)).unwrap(), input);
    // A start already past at creation: as an unscheduled request.
    r.spec.start_at = Some(at("2026-12-01T09:00:00Z"));
    assert_eq!(
        plan(&r, Some(&role)).unwrap().approval_timeout_seconds,
        30 * 60
    );
    assert_eq!(
        scheduled_start(&r, "2026-12-01T10:00:00Z".parse().unwrap()),
        None
    );
    r.spec.start_at = Some(at("2026-12-01T12:00:00Z"));
    assert_eq!(
        scheduled_start(&r, "2026-12-01T10:00:00Z".parse().unwrap()),
        Some("2026-12-01T12:00:00Z".parse().unwrap())
    );
}
