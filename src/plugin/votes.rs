//! Pure: may the caller vote, revoke or ask now, and as which of their groups. Every
//! answer comes from the controller's own rules in [`crate::policy::decide`] (`tally`,
//! `may_revoke`, `plan`), asked about the entry the plugin is about to write: the plugin
//! refuses what the controller would ignore or reject, and never allows more than
//! admission does (admission stays the authority on every write).
use crate::crd::{
    AccessRequest, AccessRole, Approval, ApprovalChannel, Decision, Phase, Revocation, Subject,
};
use crate::policy::{decide, extension};

/// Who is calling, as the apiserver authenticated them (SelfSubjectReview).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub username: String,
    pub groups: Vec<String>,
}

/// Why the plugin does not write what was asked. Exit code 3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{name} is your own request: someone else must approve or deny it")]
    OwnRequest { name: String },
    #[error("you ({user}) already voted on {name}: {decision:?}; one person has one vote")]
    AlreadyVoted {
        name: String,
        user: String,
        decision: Decision,
    },
    #[error(
        "your vote on {name} would not count: {why} (AccessRole {role} lists as approvers: {approvers})"
    )]
    NotCounted {
        name: String,
        why: String,
        role: String,
        approvers: String,
    },
    #[error("{name} is not awaiting approval yet (phase {phase}): try again in a moment")]
    NotYetAwaiting { name: String, phase: String },
    #[error("{name} is already decided ({phase}): votes no longer change anything")]
    Decided { name: String, phase: String },
    #[error("--as-group {group}: you are not in that group (your groups: {groups})")]
    NotYourGroup { group: String, groups: String },
    #[error("AccessRole {0} does not exist (or you may not read it)")]
    NoRole(String),
    #[error("{name} has ended ({phase}): there is nothing to revoke")]
    Ended { name: String, phase: String },
    #[error("you ({user}) already asked to revoke {name}")]
    AlreadyRevoked { name: String, user: String },
    #[error(
        "you ({user}) have no say in ending {name}: only its requester ({requester}), an \
         approver of AccessRole {role} or an admin has (a revocation of yours would be ignored)"
    )]
    NoSay {
        name: String,
        user: String,
        requester: String,
        role: String,
    },
    #[error("you ({user}) may not request AccessRole {role}: {why}")]
    NotRequester {
        user: String,
        role: String,
        why: String,
    },
    #[error("the controller would reject this request: {0}")]
    WouldReject(String),
    #[error("{name} is {requester}'s request: only they may ask to extend it")]
    NotYourRequest { name: String, requester: String },
    #[error("{name} is not Active (phase {phase}): only active access can be extended")]
    NotActive { name: String, phase: String },
    #[error(
        "extension {id} of {name} is not decided yet: wait for it (kubectl jit describe {name})"
    )]
    ExtensionOpen { name: String, id: String },
    #[error("the controller would refuse this extension: {0}")]
    ExtensionRefused(String),
    #[error("{name} is not a break-glass request: there is nothing to review")]
    NotBreakGlass { name: String },
    #[error("you ({user}) already reviewed {name}")]
    AlreadyReviewed { name: String, user: String },
    #[error("{name} has no extension {id}")]
    NoSuchExtension { name: String, id: String },
    #[error("extension {id} of {name} is already decided ({phase})")]
    ExtensionDecided {
        name: String,
        id: String,
        phase: String,
    },
}

/// What an extension about to be asked for comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionAsk {
    /// Its id (the next free number).
    pub id: String,
    /// The expiry it moves the grant to.
    pub until: jiff::Timestamp,
    /// How many approvals it needs (0: applied at once).
    pub need: usize,
}

fn name_of(request: &AccessRequest) -> String {
    request.metadata.name.clone().unwrap_or_default()
}

fn phase_text(phase: Option<Phase>) -> String {
    phase.map_or_else(|| "none yet".into(), |p| format!("{p:?}"))
}

/// The people and groups a role lists, for a message: `user carol, group sre-leads`.
pub fn subjects(list: &[Subject]) -> String {
    let names: Vec<String> = list
        .iter()
        .filter_map(|s| match (&s.user, &s.group) {
            (Some(u), _) => Some(format!("user {u}")),
            (None, Some(g)) => Some(format!("group {g}")),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        "nobody".into()
    } else {
        names.join(", ")
    }
}

/// The group entries to try, in order: none (the caller's own name), then each of the
/// caller's groups; or only `as_group`, which must be one of theirs.
fn candidates(caller: &Caller, as_group: Option<&str>) -> Result<Vec<Option<String>>, Refusal> {
    match as_group {
        Some(g) if caller.groups.iter().any(|mine| mine == g) => Ok(vec![Some(g.to_owned())]),
        Some(g) => Err(Refusal::NotYourGroup {
            group: g.to_owned(),
            groups: caller.groups.join(", "),
        }),
        None => Ok(std::iter::once(None)
            .chain(caller.groups.iter().cloned().map(Some))
            .collect()),
    }
}

/// Whether `caller` may vote `decision` on `request` now, and the group to name in the
/// vote (`None`: the role lists them by name). The controller counts the vote exactly
/// when this says yes: it is its own `tally`, asked about this vote.
pub fn vote(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &Caller,
    decision: Decision,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let name = name_of(request);
    let requester = &request.spec.requester;
    if *requester == caller.username {
        return Err(Refusal::OwnRequest { name });
    }
    let status = request.status.clone().unwrap_or_default();
    if let Some(mine) = status
        .approvals
        .iter()
        .flatten()
        .find(|a| a.approver == caller.username)
    {
        return Err(Refusal::AlreadyVoted {
            name,
            user: caller.username.clone(),
            decision: mine.decision,
        });
    }
    match status.phase {
        Some(Phase::AwaitingApproval) => {}
        // Approved, but not answered before its start: a Deny still wins.
        Some(Phase::Scheduled) if decision == Decision::Deny => {}
        None | Some(Phase::Pending) => {
            return Err(Refusal::NotYetAwaiting {
                name,
                phase: phase_text(status.phase),
            });
        }
        Some(_) => {
            return Err(Refusal::Decided {
                name,
                phase: format!("phase {}", phase_text(status.phase)),
            });
        }
    }
    if status.approvals.is_none() {
        // The controller creates the list when it takes the request up.
        return Err(Refusal::NotYetAwaiting {
            name,
            phase: phase_text(status.phase),
        });
    }
    let role = role.ok_or_else(|| Refusal::NoRole(request.spec.role.clone()))?;
    // Decided by the votes already there, the controller is about to move it on.
    if status.phase != Some(Phase::Scheduled)
        && !matches!(
            decide::decision(role, request).0,
            decide::Tally::Pending { .. }
        )
    {
        return Err(Refusal::Decided {
            name,
            phase: "its votes already decide it".into(),
        });
    }
    counted_as(request, role, caller, as_group)
}

/// The group `caller` would vote (or review) as so that the controller counts it: none
/// (their own name) or one of their groups the role lists; the controller's own
/// `tally`, asked about a vote of theirs. Why not, otherwise.
fn counted_as(
    request: &AccessRequest,
    role: &AccessRole,
    caller: &Caller,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let mut why = String::new();
    for group in candidates(caller, as_group)? {
        let mine = Approval {
            approver: caller.username.clone(),
            decision: Decision::Approve,
            group: group.clone(),
            comment: None,
            time: None,
            via: ApprovalChannel::Kubectl,
        };
        let (_, ignored) = decide::tally_needing(
            role,
            1,
            &request.spec.requester,
            std::slice::from_ref(&mine),
        );
        match ignored.into_iter().next() {
            None => return Ok(group),
            Some(i) if why.is_empty() => why = i.why,
            Some(_) => {}
        }
    }
    Err(Refusal::NotCounted {
        name: name_of(request),
        why,
        role: request.spec.role.clone(),
        approvers: subjects(&role.spec.approvers),
    })
}

/// Whether `caller` may end `request` early, and the group to name (`None`: as
/// themselves). The controller acts on the revocation exactly when this says yes: it is
/// its own `may_revoke`, asked about this entry.
pub fn revoke(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &Caller,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let name = name_of(request);
    let status = request.status.clone().unwrap_or_default();
    if let Some(phase) = status.phase.filter(|p| p.is_terminal()) {
        return Err(Refusal::Ended {
            name,
            phase: format!("{phase:?}"),
        });
    }
    if status
        .revocations
        .iter()
        .flatten()
        .any(|r| r.requested_by == caller.username)
    {
        return Err(Refusal::AlreadyRevoked {
            name,
            user: caller.username.clone(),
        });
    }
    for group in candidates(caller, as_group)? {
        let mine = Revocation {
            requested_by: caller.username.clone(),
            group: group.clone(),
            reason: None,
            time: None,
        };
        if decide::may_revoke(role, &request.spec.requester, &mine) {
            return Ok(group);
        }
    }
    Err(Refusal::NoSay {
        name,
        user: caller.username.clone(),
        requester: request.spec.requester.clone(),
        role: request.spec.role.clone(),
    })
}

/// The `spec.requesterGroup` a new request of `caller` names (`None`: the role lists
/// them by name), found by the controller's own validation (`plan`) of the request
/// about to be created. Any other reason the controller would reject it is returned
/// too, before anything is created.
pub fn ask_as(
    draft: &AccessRequest,
    role: &AccessRole,
    caller: &Caller,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let mut draft = draft.clone();
    draft.spec.requester = caller.username.clone();
    // plan() needs an identity to name the session: a placeholder, nothing is sent.
    draft.metadata.uid = Some("00000000-0000-4000-8000-000000000000".into());
    if draft.metadata.namespace.is_none() {
        draft.metadata.namespace = Some("default".into());
    }
    let mut not_eligible = None;
    for group in candidates(caller, as_group)? {
        draft.spec.requester_group = group.clone();
        match decide::plan(&draft, Some(role)) {
            Ok(_) => return Ok(group),
            Err(e @ decide::Rejection::NotEligible { .. }) => {
                not_eligible.get_or_insert(e);
            }
            Err(other) => return Err(Refusal::WouldReject(other.to_string())),
        }
    }
    Err(Refusal::NotRequester {
        user: caller.username.clone(),
        role: draft.spec.role.clone(),
        why: format!(
            "{} (it lists: {})",
            not_eligible.map(|e| e.to_string()).unwrap_or_default(),
            subjects(&role.spec.requesters)
        ),
    })
}

/// Whether `caller` may ask to extend `request` by `by` now, and what the ask comes to:
/// the controller's own [`extension::next`], asked about the entry about to be written.
pub fn extend(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &Caller,
    by: &str,
    reason: &str,
    now: jiff::Timestamp,
) -> Result<ExtensionAsk, Refusal> {
    let name = name_of(request);
    if request.spec.requester != caller.username {
        return Err(Refusal::NotYourRequest {
            name,
            requester: request.spec.requester.clone(),
        });
    }
    let status = request.status.clone().unwrap_or_default();
    let window = match (status.phase, &status.granted_at, &status.expires_at) {
        (Some(Phase::Active), Some(granted), Some(expires)) => extension::Window {
            granted_at: granted.0,
            expires_at: expires.0,
            now,
        },
        _ => {
            return Err(Refusal::NotActive {
                name,
                phase: phase_text(status.phase),
            });
        }
    };
    let role = role.ok_or_else(|| Refusal::NoRole(request.spec.role.clone()))?;
    let asks = status.extensions.clone().unwrap_or_default();
    let outcomes = status.extension_outcomes.clone().unwrap_or_default();
    let settled = |id: &str| outcomes.iter().any(|o| o.id == id && o.phase.is_settled());
    if let Some(open) = asks.iter().find(|a| !settled(&a.id)) {
        return Err(Refusal::ExtensionOpen {
            name,
            id: open.id.clone(),
        });
    }
    let id = (asks.len() + 1..)
        .map(|n| n.to_string())
        .find(|id| !asks.iter().any(|a| &a.id == id))
        .unwrap_or_default();
    let mut draft = request.clone();
    draft
        .status
        .get_or_insert_with(Default::default)
        .extensions
        .get_or_insert_with(Vec::new)
        .push(crate::crd::ExtensionAsk {
            id: id.clone(),
            requested_by: caller.username.clone(),
            by: by.to_owned(),
            reason: reason.to_owned(),
            time: None,
        });
    match extension::next(role, &draft, window).0 {
        extension::Step::Refuse { refusal, .. } => {
            Err(Refusal::ExtensionRefused(refusal.to_string()))
        }
        extension::Step::Pending { need, until, .. } => Ok(ExtensionAsk { id, until, need }),
        extension::Step::Approved { until, .. } => Ok(ExtensionAsk { id, until, need: 0 }),
        // No vote on a new ask can deny it, and nothing else is in flight.
        other => Err(Refusal::ExtensionRefused(format!("{other:?}"))),
    }
}

/// Whether `caller` may vote on extension `id` of `request` now, and the group to name
/// (`None`: as themselves): the controller's own count, asked about this vote.
pub fn vote_extension(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &Caller,
    id: &str,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let name = name_of(request);
    let requester = &request.spec.requester;
    if *requester == caller.username {
        return Err(Refusal::OwnRequest { name });
    }
    let status = request.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::Active) {
        return Err(Refusal::NotActive {
            name,
            phase: phase_text(status.phase),
        });
    }
    if !status.extensions.iter().flatten().any(|a| a.id == id) {
        return Err(Refusal::NoSuchExtension {
            name,
            id: id.to_owned(),
        });
    }
    if let Some(o) = status
        .extension_outcomes
        .iter()
        .flatten()
        .find(|o| o.id == id)
    {
        return Err(Refusal::ExtensionDecided {
            name,
            id: id.to_owned(),
            phase: format!("{:?}", o.phase),
        });
    }
    if let Some(mine) = status
        .extension_approvals
        .iter()
        .flatten()
        .find(|v| v.extension == id && v.approver == caller.username)
    {
        return Err(Refusal::AlreadyVoted {
            name,
            user: caller.username.clone(),
            decision: mine.decision,
        });
    }
    let role = role.ok_or_else(|| Refusal::NoRole(request.spec.role.clone()))?;
    counted_as(request, role, caller, as_group)
}

/// Whether `caller` may review the break-glass `request`, and the group to name: the
/// controller's own count of reviews ([`decide::review`]), asked about this one.
pub fn review(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &Caller,
    as_group: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let name = name_of(request);
    if !request.spec.break_glass {
        return Err(Refusal::NotBreakGlass { name });
    }
    if request.spec.requester == caller.username {
        return Err(Refusal::OwnRequest { name });
    }
    let status = request.status.clone().unwrap_or_default();
    if status
        .reviews
        .iter()
        .flatten()
        .any(|r| r.reviewer == caller.username)
    {
        return Err(Refusal::AlreadyReviewed {
            name,
            user: caller.username.clone(),
        });
    }
    let role = role.ok_or_else(|| Refusal::NoRole(request.spec.role.clone()))?;
    counted_as(request, role, caller, as_group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn role() -> AccessRole {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                "approvalsRequired": 2,
                "maxDuration": "2h",
                "approvers": [{"user": "carol"}, {"user": "dave"}, {"group": "sre-leads"}],
                "requesters": [{"user": "alice"}, {"group": "developers"}],
                "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
            }
        }))
        .unwrap()
    }

    fn request(status: serde_json::Value) -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team",
                         "uid": "0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e"},
            "spec": {"role": "prod-admin", "requester": "alice", "reason": "INC-1"},
            "status": status
        }))
        .unwrap()
    }

    fn caller(name: &str, groups: &[&str]) -> Caller {
        Caller {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn awaiting(approvals: serde_json::Value) -> AccessRequest {
        request(json!({"phase": "AwaitingApproval", "approvals": approvals}))
    }

    #[test]
    fn a_listed_approver_votes_in_their_own_name() {
        let r = awaiting(json!([]));
        let carol = caller("carol", &["sre"]);
        assert_eq!(
            vote(&r, Some(&role()), &carol, Decision::Approve, None),
            Ok(None)
        );
    }

    #[test]
    fn an_approver_by_group_names_the_group_the_role_lists() {
        let r = awaiting(json!([]));
        let frank = caller("frank", &["ops", "sre-leads", "other"]);
        assert_eq!(
            vote(&r, Some(&role()), &frank, Decision::Deny, None),
            Ok(Some("sre-leads".into()))
        );
        // --as-group must be one of theirs, and one that counts.
        assert_eq!(
            vote(&r, Some(&role()), &frank, Decision::Deny, Some("sre-leads")),
            Ok(Some("sre-leads".into()))
        );
        assert!(matches!(
            vote(&r, Some(&role()), &frank, Decision::Deny, Some("admins")),
            Err(Refusal::NotYourGroup { .. })
        ));
        assert!(matches!(
            vote(&r, Some(&role()), &frank, Decision::Deny, Some("ops")),
            Err(Refusal::NotCounted { .. })
        ));
    }

    #[test]
    fn the_requester_never_votes_on_their_own_request() {
        // Even when the role lists them as an approver too.
        let mut both = role();
        both.spec.approvers.push(Subject {
            user: Some("alice".into()),
            group: None,
            slack_user_id: None,
        });
        let r = awaiting(json!([]));
        let alice = caller("alice", &["developers", "sre-leads"]);
        for decision in [Decision::Approve, Decision::Deny] {
            assert_eq!(
                vote(&r, Some(&both), &alice, decision, None),
                Err(Refusal::OwnRequest { name: "fix".into() })
            );
        }
    }

    #[test]
    fn one_person_one_vote_even_after_an_ignored_one() {
        let r = awaiting(json!([{"approver": "carol", "decision": "Approve"}]));
        let err = vote(
            &r,
            Some(&role()),
            &caller("carol", &[]),
            Decision::Deny,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::AlreadyVoted { .. }), "{err}");
        assert!(err.to_string().contains("already voted"), "{err}");
        // A vote the controller ignored still takes the person's one entry (admission's
        // list is keyed by approver).
        let r = awaiting(json!([{"approver": "bob", "decision": "Approve"}]));
        assert!(matches!(
            vote(
                &r,
                Some(&role()),
                &caller("bob", &[]),
                Decision::Approve,
                None
            ),
            Err(Refusal::AlreadyVoted { .. })
        ));
    }

    #[test]
    fn someone_the_role_does_not_list_is_told_who_is() {
        let r = awaiting(json!([]));
        let err = vote(
            &r,
            Some(&role()),
            &caller("bob", &["developers"]),
            Decision::Approve,
            None,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not an approver of this AccessRole"),
            "{text}"
        );
        assert!(
            text.contains("user carol, user dave, group sre-leads"),
            "{text}"
        );
        // A Slack account name is never a person (the controller's own rule).
        let err = vote(
            &r,
            Some(&role()),
            &caller("slack:U123", &["sre-leads"]),
            Decision::Approve,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::NotCounted { .. }), "{err}");
    }

    #[test]
    fn only_a_request_awaiting_approval_takes_votes() {
        let carol = caller("carol", &[]);
        for (status, pending) in [
            (json!(null), true),
            (json!({"phase": "Pending"}), true),
            (json!({"phase": "AwaitingApproval"}), true),
            (json!({"phase": "Approved", "approvals": []}), false),
            (json!({"phase": "Active", "approvals": []}), false),
            (json!({"phase": "Denied", "approvals": []}), false),
            (json!({"phase": "Expired", "approvals": []}), false),
        ] {
            let err = vote(
                &request(status.clone()),
                Some(&role()),
                &carol,
                Decision::Approve,
                None,
            )
            .unwrap_err();
            if pending {
                assert!(matches!(err, Refusal::NotYetAwaiting { .. }), "{status}");
            } else {
                assert!(matches!(err, Refusal::Decided { .. }), "{status}");
            }
        }
        // Votes already there that deny it: decided, whatever the phase says yet.
        let r = awaiting(json!([{"approver": "dave", "decision": "Deny"}]));
        assert!(matches!(
            vote(&r, Some(&role()), &carol, Decision::Approve, None),
            Err(Refusal::Decided { .. })
        ));
        assert_eq!(
            vote(
                &awaiting(json!([])),
                None,
                &caller("erin", &[]),
                Decision::Approve,
                None
            ),
            Err(Refusal::NoRole("prod-admin".into()))
        );
    }

    #[test]
    fn the_requester_an_approver_or_an_admin_may_revoke() {
        let r = request(json!({"phase": "Active", "approvals": [], "revocations": []}));
        assert_eq!(
            revoke(&r, Some(&role()), &caller("alice", &["developers"]), None),
            Ok(None)
        );
        assert_eq!(
            revoke(&r, Some(&role()), &caller("dave", &[]), None),
            Ok(None)
        );
        assert_eq!(
            revoke(&r, Some(&role()), &caller("frank", &["sre-leads"]), None),
            Ok(Some("sre-leads".into()))
        );
        assert_eq!(
            revoke(&r, None, &caller("root", &["system:masters"]), None),
            Ok(Some("system:masters".into()))
        );
        assert!(matches!(
            revoke(&r, Some(&role()), &caller("bob", &["developers"]), None),
            Err(Refusal::NoSay { .. })
        ));
        let done = request(json!({"phase": "Revoked"}));
        assert!(matches!(
            revoke(&done, Some(&role()), &caller("alice", &[]), None),
            Err(Refusal::Ended { .. })
        ));
        let asked = request(json!({"phase": "Active", "revocations": [{"requestedBy": "alice"}]}));
        assert!(matches!(
            revoke(&asked, Some(&role()), &caller("alice", &[]), None),
            Err(Refusal::AlreadyRevoked { .. })
        ));
    }

    #[test]
    fn a_request_is_asked_as_the_group_the_role_lists() {
        let draft = request(json!(null));
        assert_eq!(
            ask_as(&draft, &role(), &caller("alice", &["developers"]), None),
            Ok(None)
        );
        assert_eq!(
            ask_as(&draft, &role(), &caller("bob", &["x", "developers"]), None),
            Ok(Some("developers".into()))
        );
        let err = ask_as(&draft, &role(), &caller("carol", &["sre"]), None).unwrap_err();
        assert!(matches!(err, Refusal::NotRequester { .. }), "{err}");
        assert!(
            err.to_string().contains("user alice, group developers"),
            "{err}"
        );
        // What else the controller would reject, said before anything is created.
        let mut long = draft.clone();
        long.spec.duration = Some("3h".into());
        let err = ask_as(&long, &role(), &caller("alice", &[]), None).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    fn active(extra: serde_json::Value) -> AccessRequest {
        let mut status = json!({"phase": "Active", "grantedAt": "2026-12-01T10:00:00Z",
            "expiresAt": "2026-12-01T11:00:00Z", "approvals": []});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            status[k] = v;
        }
        let mut r = request(status);
        r.spec.reason = "fix".into();
        r
    }

    fn at() -> jiff::Timestamp {
        "2026-12-01T10:30:00Z".parse().unwrap()
    }

    fn extendable() -> AccessRole {
        let mut r = role();
        r.spec.extension = Some(serde_json::from_value(json!({"maxExtensions": 2})).unwrap());
        r
    }

    #[test]
    fn the_requester_extends_an_active_request_as_the_controller_would_decide() {
        let alice = caller("alice", &[]);
        let ask = extend(
            &active(json!({})),
            Some(&extendable()),
            &alice,
            "30m",
            "more",
            at(),
        )
        .unwrap();
        assert_eq!(ask.id, "1");
        assert_eq!(ask.need, 2);
        assert_eq!(ask.until, "2026-12-01T11:30:00Z".parse().unwrap());
        // Not someone else, not before Active, not past maxDuration, not without a policy.
        assert!(matches!(
            extend(
                &active(json!({})),
                Some(&extendable()),
                &caller("carol", &[]),
                "30m",
                "",
                at()
            ),
            Err(Refusal::NotYourRequest { .. })
        ));
        assert!(matches!(
            extend(
                &awaiting(json!([])),
                Some(&extendable()),
                &alice,
                "30m",
                "",
                at()
            ),
            Err(Refusal::NotActive { .. })
        ));
        let refused = extend(
            &active(json!({})),
            Some(&extendable()),
            &alice,
            "2h",
            "",
            at(),
        );
        assert!(
            matches!(&refused, Err(Refusal::ExtensionRefused(m)) if m.contains("past maxDuration")),
            "{refused:?}"
        );
        assert!(matches!(
            extend(&active(json!({})), Some(&role()), &alice, "30m", "", at()),
            Err(Refusal::ExtensionRefused(_))
        ));
        // One at a time: an undecided ask first; then the next id.
        let open =
            active(json!({"extensions": [{"id": "1", "requestedBy": "alice", "by": "10m"}]}));
        assert!(matches!(
            extend(&open, Some(&extendable()), &alice, "30m", "", at()),
            Err(Refusal::ExtensionOpen { .. })
        ));
        let done = active(json!({
            "extensions": [{"id": "1", "requestedBy": "alice", "by": "10m"}],
            "extensionOutcomes": [{"id": "1", "phase": "Denied"}]}));
        assert_eq!(
            extend(&done, Some(&extendable()), &alice, "30m", "", at())
                .unwrap()
                .id,
            "2"
        );
    }

    #[test]
    fn a_vote_on_an_extension_counts_as_the_controller_counts_it() {
        let asked = active(json!({
            "extensions": [{"id": "1", "requestedBy": "alice", "by": "10m"}],
            "extensionApprovals": [{"extension": "1", "approver": "dave", "decision": "Approve"}]}));
        let role = extendable();
        assert_eq!(
            vote_extension(&asked, Some(&role), &caller("carol", &[]), "1", None),
            Ok(None)
        );
        assert_eq!(
            vote_extension(
                &asked,
                Some(&role),
                &caller("erin", &["sre-leads"]),
                "1",
                None
            ),
            Ok(Some("sre-leads".into()))
        );
        assert!(matches!(
            vote_extension(&asked, Some(&role), &caller("alice", &[]), "1", None),
            Err(Refusal::OwnRequest { .. })
        ));
        assert!(matches!(
            vote_extension(&asked, Some(&role), &caller("dave", &[]), "1", None),
            Err(Refusal::AlreadyVoted { .. })
        ));
        assert!(matches!(
            vote_extension(&asked, Some(&role), &caller("mallory", &[]), "1", None),
            Err(Refusal::NotCounted { .. })
        ));
        assert!(matches!(
            vote_extension(&asked, Some(&role), &caller("carol", &[]), "2", None),
            Err(Refusal::NoSuchExtension { .. })
        ));
    }
}
