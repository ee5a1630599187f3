//! Pure decisions of the controller, without I/O: is a request valid against its role,
//! what execution does it start, have its approvals met the role's rule, and what
//! phase and conditions does an execution's state mean. Everything here is unit-tested
//! without a cluster.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::contract::ExecutionState;
use crate::contract::{ExecutionInput, Outcome, RequestIdentity};
use crate::crd::{
    AccessRequest, AccessRole, Approval, Decision, GrantMethod, Phase, Revocation, Subject,
};

/// Why a request is refused before anything touches AWS. The `Display` text goes to
/// status.message and the Event; `reason()` is the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("AccessRole {0:?} does not exist")]
    UnknownRole(String),
    #[error("AccessRole {role:?} has method {method} but no {field} to grant")]
    NoTarget {
        role: String,
        method: &'static str,
        field: &'static str,
    },
    #[error(
        "{requester} is not allowed to request AccessRole {role:?} (not listed in its requesters{group})"
    )]
    NotEligible {
        requester: String,
        role: String,
        group: String,
    },
    #[error("duration {duration:?} exceeds AccessRole {role:?}'s maxDuration {max}")]
    TooLong {
        duration: String,
        max: String,
        role: String,
    },
    #[error("{field} {value:?} is not a positive duration: {why}")]
    BadDuration {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("AccessRole {0:?} requires a reason")]
    ReasonRequired(String),
    #[error(
        "AccessRole {role:?} requires a {field} matching `{pattern}`{hint}; this request's {field} is {value:?}: create a new AccessRequest with one that matches"
    )]
    PatternMismatch {
        role: String,
        field: &'static str,
        pattern: String,
        value: String,
        /// ` (<the role's patternHint>)`, or empty.
        hint: String,
    },
    #[error(
        "AccessRole {role:?}'s {field} `{pattern}` cannot be used ({why}); ask the AccessRole's owners to fix it"
    )]
    BadPattern {
        role: String,
        field: &'static str,
        pattern: String,
        why: String,
    },
    #[error("no AWS principal for {requester}: {why}")]
    NoPrincipal { requester: String, why: String },
    #[error("roleArn {0:?} is not an IAM role ARN")]
    BadRoleArn(String),
    #[error("{0}")]
    NoSourceIdentity(String),
    #[error("the request has no uid or namespace yet")]
    Incomplete,
    #[error(
        "{role_arn:?} is in account {account}, which this operator does not serve \
         (it serves {served}: the account of its state machine and credentials)"
    )]
    AccountNotServed {
        role_arn: String,
        account: String,
        served: String,
    },
    #[error(
        "AccessRole {0:?} does not allow scheduled requests (it sets no maxStartDelay): \
         create the request without startAt, when access is needed"
    )]
    StartNotAllowed(String),
    #[error(
        "{requester} may not break the glass on AccessRole {role:?}{why}: ask for approval \
         instead (a request without breakGlass)"
    )]
    BreakGlassNotAllowed {
        requester: String,
        role: String,
        why: String,
    },
    #[error(
        "a break-glass request of AccessRole {role:?} lasts at most {max} \
         (breakGlass.maxDuration), not {duration}"
    )]
    BreakGlassTooLong {
        role: String,
        max: String,
        duration: String,
    },
    #[error("breaking the glass needs a reason: say why, for the approvers' review")]
    BreakGlassReasonRequired,
    #[error("a break-glass request starts now: it cannot name a startAt")]
    BreakGlassScheduled,
    #[error(
        "startAt {start_at} is {delay} after the request was created; AccessRole {role:?} \
         allows at most maxStartDelay {max}: create it closer to the start"
    )]
    StartTooFarAhead {
        start_at: String,
        delay: String,
        max: String,
        role: String,
    },
    #[error(
        "{requester} already has AccessRequest {other} for AccessRole {role:?} ({phase}): {what}"
    )]
    Overlaps {
        requester: String,
        role: String,
        /// `namespace/name` of the earlier request.
        other: String,
        phase: String,
        what: &'static str,
    },
}

impl Rejection {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownRole(_) => "UnknownRole",
            Rejection::NoTarget { .. } => "NoTarget",
            Rejection::NotEligible { .. } => "NotEligible",
            Rejection::TooLong { .. } => "DurationTooLong",
            Rejection::BadDuration { .. } => "InvalidDuration",
            Rejection::ReasonRequired(_) => "ReasonRequired",
            Rejection::PatternMismatch {
                field: "reason", ..
            } => "ReasonPatternMismatch",
            Rejection::PatternMismatch { .. } => "TicketPatternMismatch",
            Rejection::BadPattern { .. } => "InvalidPattern",
            Rejection::NoPrincipal { .. } => "NoPrincipal",
            Rejection::BadRoleArn(_) => "InvalidRoleArn",
            Rejection::NoSourceIdentity(_) => "NoSourceIdentity",
            Rejection::Incomplete => "Incomplete",
            Rejection::AccountNotServed { .. } => "AccountNotServed",
            Rejection::Overlaps { .. } => "OverlapsOpenRequest",
            Rejection::StartNotAllowed(_) => "StartNotAllowed",
            Rejection::BreakGlassNotAllowed { .. } => "BreakGlassNotAllowed",
            Rejection::BreakGlassTooLong { .. } => "BreakGlassTooLong",
            Rejection::BreakGlassReasonRequired => "BreakGlassReasonRequired",
            Rejection::BreakGlassScheduled => "BreakGlassScheduled",
            Rejection::StartTooFarAhead { .. } => "StartTooFarAhead",
        }
    }
}

/// A positive Go duration (`30m`, `1h30m`).
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, Rejection> {
    let bad = |why: String| Rejection::BadDuration {
        field,
        value: value.to_string(),
        why,
    };
    let parsed: kube::core::Duration = value
        .parse()
        .map_err(|e: kube::core::duration::ParseError| bad(e.to_string()))?;
    if parsed.is_negative() {
        return Err(bad("negative".into()));
    }
    let d = Duration::from(parsed);
    if d.is_zero() {
        return Err(bad("zero".into()));
    }
    Ok(d)
}

fn lists(subjects: &[Subject], user: &str, group: Option<&str>) -> bool {
    subjects.iter().any(|s| {
        s.user.as_deref() == Some(user) || (group.is_some() && s.group.as_deref() == group)
    })
}

/// The AWS identity a Kubernetes user maps to: an explicit `users` entry, else the
/// template with `{username}` replaced. It must name one identity of the kind the
/// role's method grants to: an IAM user or role (TrustPolicy), an IAM user of the
/// group's account (IamGroup), an Identity Center user name or email (IdentityCenter).
pub fn principal_for(role: &AccessRole, username: &str) -> Result<String, Rejection> {
    let mapping = &role.spec.principal;
    let mapped = match (mapping.users.get(username), &mapping.template) {
        (Some(arn), _) => arn.clone(),
        (None, Some(template)) => template.replace("{username}", username),
        (None, None) => {
            return Err(Rejection::NoPrincipal {
                requester: username.to_string(),
                why: "the AccessRole maps no principal for this user".into(),
            });
        }
    };
    let refuse = |why: String| Rejection::NoPrincipal {
        requester: username.to_string(),
        why,
    };
    // In an ARN, `/` separates the path from the name: `mallory/alice` under
    // `…:user/{username}` would read as IAM user `alice` (on path `/mallory/`), and IAM
    // acts on users by name. Only an explicit `users` entry may name such a principal.
    let templated = !mapping.users.contains_key(username);
    if templated && role.spec.method != GrantMethod::IdentityCenter && username.contains('/') {
        return Err(refuse(
            "a '/' in the user name would make the template name another IAM identity \
             (the path ends at it); map this user in principal.users"
                .into(),
        ));
    }
    match role.spec.method {
        GrantMethod::TrustPolicy => {
            crate::grant::trust_policy::document::validate_principal(&mapped)
                .map_err(|_| refuse(format!("{mapped:?} is not a valid IAM principal ARN")))?;
            if let Some(why) = unsafe_principal(&mapped) {
                return Err(refuse(format!("{mapped:?} {why}")));
            }
            Ok(mapped)
        }
        GrantMethod::IdentityCenter => crate::grant::identity_center::rules::user_for(&mapped)
            .map_err(|e| refuse(e.to_string())),
        GrantMethod::IamGroup => {
            let group = group_target(role)?;
            crate::grant::iam_group::rules::user_for(group, &mapped)
                .map_err(|e| refuse(e.to_string()))
        }
    }
}

fn role_name_of(role: &AccessRole) -> String {
    role.metadata.name.clone().unwrap_or_default()
}

/// The role's `identityCenter` (the CRD requires it for the method).
pub fn identity_center_target(
    role: &AccessRole,
) -> Result<&crate::crd::IdentityCenterTarget, Rejection> {
    role.spec
        .identity_center
        .as_ref()
        .ok_or_else(|| Rejection::NoTarget {
            role: role_name_of(role),
            method: "IdentityCenter",
            field: "identityCenter",
        })
}

/// The role's `iamGroup` (the CRD requires it for the method).
pub fn group_target(role: &AccessRole) -> Result<&crate::crd::IamGroupTarget, Rejection> {
    role.spec
        .iam_group
        .as_ref()
        .ok_or_else(|| Rejection::NoTarget {
            role: role_name_of(role),
            method: "IamGroup",
            field: "iamGroup",
        })
}

/// What the approval answer tells the state machine to grant, from the role and the
/// requester's identity as Kubernetes has them now. `permission_set_arn`: the role's
/// permission set by ARN (an IdentityCenter role may name it; the caller looks it up).
pub fn grant_target(
    role: &AccessRole,
    principal: &str,
    permission_set_arn: Option<&str>,
) -> Result<crate::contract::GrantTarget, Rejection> {
    match role.spec.method {
        GrantMethod::TrustPolicy => Ok(crate::contract::GrantTarget::TrustPolicy {}),
        GrantMethod::IdentityCenter => {
            let spec = identity_center_target(role)?;
            let arn = match permission_set_arn {
                Some(arn) => arn,
                None if crate::grant::identity_center::rules::is_permission_set_arn(
                    &spec.permission_set,
                ) =>
                {
                    &spec.permission_set
                }
                None => {
                    return Err(Rejection::NoTarget {
                        role: role_name_of(role),
                        method: "IdentityCenter",
                        field: "permission set ARN",
                    });
                }
            };
            Ok(crate::grant::identity_center::rules::target(
                spec, arn, principal,
            ))
        }
        GrantMethod::IamGroup => {
            crate::grant::iam_group::rules::target(group_target(role)?, principal).map_err(|e| {
                Rejection::NoPrincipal {
                    requester: principal.to_owned(),
                    why: e.to_string(),
                }
            })
        }
    }
}

/// Why a well-formed principal ARN still cannot stand for one person, if it cannot.
/// Only IAM users and IAM roles name an identity the account controls: an STS
/// assumed-role or federated-user ARN carries a session name its caller chooses (anyone
/// who may assume `Dev` can name a session `bob`), and an account root principal trusts
/// every identity of that account that is allowed `sts:AssumeRole`.
fn unsafe_principal(arn: &str) -> Option<&'static str> {
    let parsed = crate::policy::arn::parse(arn)?;
    if parsed.service == "sts" {
        return Some(
            "is an STS session principal: its session name is chosen by whoever assumes \
             the role, so it does not identify a person; map the requester to an IAM user or \
             role ARN",
        );
    }
    match parsed.resource.split_once('/') {
        Some(("user" | "role", rest)) if !rest.is_empty() => None,
        _ => Some(
            "is neither an IAM user nor an IAM role (an account root principal would trust \
             every identity in the account)",
        ),
    }
}

/// Which AWS accounts the operator may grant roles in: the roles an AccessRole names
/// must be in one of them (by default the operator's own account, the state machine's).
/// The worker edits a role by name in the account its credentials are in, so a role ARN
/// in another account would otherwise edit the same-named role here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    accounts: Vec<String>,
}

impl Scope {
    pub fn new(accounts: impl IntoIterator<Item = String>) -> Self {
        Self {
            accounts: accounts.into_iter().collect(),
        }
    }

    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// Refuses a role (or, for IamGroup, group) ARN outside the served accounts.
    pub fn check_role(&self, role_arn: &str) -> Result<(), Rejection> {
        let (account, _) = crate::policy::arn::role(role_arn)
            .or_else(|| crate::policy::arn::group(role_arn))
            .ok_or_else(|| Rejection::BadRoleArn(role_arn.into()))?;
        if self.accounts.iter().any(|a| a == account) {
            return Ok(());
        }
        Err(Rejection::AccountNotServed {
            role_arn: role_arn.to_string(),
            account: account.to_string(),
            served: if self.accounts.is_empty() {
                "no account".into()
            } else {
                self.accounts.join(", ")
            },
        })
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn only_users_and_roles_stand_for_a_person() {
        for ok in [
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:iam::123456789012:user/people/alice",
            "arn:aws:iam::123456789012:role/alice-sso",
        ] {
            assert_eq!(unsafe_principal(ok), None, "{ok}");
        }
        for bad in [
            "arn:aws:sts::123456789012:assumed-role/Dev/bob",
            "arn:aws:sts::123456789012:federated-user/bob",
            "arn:aws:iam::123456789012:root",
            "arn:aws:iam::123456789012:group/admins",
            "arn:aws:iam::123456789012:user/",
        ] {
            assert!(unsafe_principal(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn roles_outside_the_served_accounts_are_refused() {
        let scope = Scope::new(["123456789012".to_string()]);
        assert_eq!(
            scope.check_role("arn:aws:iam::123456789012:role/jit/admin"),
            Ok(())
        );
        let err = scope
            .check_role("arn:aws:iam::210987654321:role/jit/admin")
            .unwrap_err();
        assert_eq!(err.reason(), "AccountNotServed");
        assert!(err.to_string().contains("210987654321"), "{err}");
        assert_eq!(
            Scope::new([])
                .check_role("arn:aws:iam::123456789012:role/a")
                .unwrap_err()
                .reason(),
            "AccountNotServed"
        );
    }
}

/// [`plan`], and the role's account must be one the operator serves.
pub fn plan_in(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    scope: &Scope,
) -> Result<ExecutionInput, Rejection> {
    let input = plan(request, role)?;
    // Identity Center assigns in member accounts, which the template's
    // ManagedAccountIds bound; the other methods edit IAM in the served accounts.
    if input.method != GrantMethod::IdentityCenter.as_str() {
        scope.check_role(&input.role_arn)?;
    }
    Ok(input)
}

/// `<account>/<role name>`: one FIFO message group per target role.
pub fn work_group(role_arn: &str) -> Result<String, Rejection> {
    crate::policy::arn::role(role_arn)
        .map(|(account, name)| format!("{account}/{name}"))
        .ok_or_else(|| Rejection::BadRoleArn(role_arn.to_string()))
}

/// Validates a request against its role and, if it may go ahead, builds the
/// execution's input.
pub fn plan(
    request: &AccessRequest,
    role: Option<&AccessRole>,
) -> Result<ExecutionInput, Rejection> {
    let spec = &request.spec;
    let role = role.ok_or_else(|| Rejection::UnknownRole(spec.role.clone()))?;
    let role_name = spec.role.clone();
    if !lists(
        &role.spec.requesters,
        &spec.requester,
        spec.requester_group.as_deref(),
    ) {
        return Err(Rejection::NotEligible {
            requester: spec.requester.clone(),
            role: role_name,
            group: spec
                .requester_group
                .as_ref()
                .map(|g| format!(", nor is group {g:?}"))
                .unwrap_or_default(),
        });
    }
    let max = parse_duration("maxDuration", &role.spec.max_duration)?;
    let duration_text = spec
        .duration
        .clone()
        .unwrap_or_else(|| role.spec.default_duration.clone());
    let field = if spec.duration.is_some() {
        "duration"
    } else {
        "defaultDuration"
    };
    let duration = parse_duration(field, &duration_text)?;
    if duration > max {
        return Err(Rejection::TooLong {
            duration: duration_text,
            max: role.spec.max_duration.clone(),
            role: role_name,
        });
    }
    let approval_timeout = parse_duration("approvalTimeout", &role.spec.approval_timeout)?;
    let start_delay = start_delay(request, role)?;
    if spec.break_glass {
        check_break_glass(request, role, &duration_text, duration)?;
    }
    if role.spec.require_reason && spec.reason.trim().is_empty() {
        return Err(Rejection::ReasonRequired(role_name));
    }
    let ticket = spec.ticket.clone().unwrap_or_default();
    for (field, field_name, pattern, value) in [
        (
            "reason",
            "reasonPattern",
            &role.spec.reason_pattern,
            &spec.reason,
        ),
        (
            "ticket",
            "ticketPattern",
            &role.spec.ticket_pattern,
            &ticket,
        ),
    ] {
        if let Some(pattern) = pattern {
            check_pattern(role, &role_name, (field, field_name), pattern, value)?;
        }
    }
    match role.spec.method {
        GrantMethod::TrustPolicy => {}
        GrantMethod::IdentityCenter => drop(identity_center_target(role)?),
        GrantMethod::IamGroup => drop(group_target(role)?),
    }
    let requester_arn = principal_for(role, &spec.requester)?;
    let (Some(namespace), Some(uid)) = (
        request.metadata.namespace.clone(),
        request.metadata.uid.clone(),
    ) else {
        return Err(Rejection::Incomplete);
    };
    let session_name = crate::grant::trust_policy::session::session_name(&uid)
        .map_err(|_| Rejection::Incomplete)?;
    let mut input = ExecutionInput {
        requester_arn,
        requester_name: spec.requester.clone(),
        reason: spec.reason.clone(),
        ticket: spec.ticket.clone().unwrap_or_default(),
        role_arn: String::new(),
        method: role.spec.method.as_str().into(),
        work_group: String::new(),
        duration_seconds: duration.as_secs().max(1),
        // A scheduled request waits for approvals until its start, and as long again as
        // an unscheduled one after it.
        approval_timeout_seconds: approval_timeout
            .saturating_add(start_delay)
            .as_secs()
            .max(1),
        start_at: spec
            .start_at
            .as_ref()
            .map(|t| expiry_after(t.0, 0))
            .unwrap_or_default(),
        break_glass: spec.break_glass,
        role_name: String::new(),
        session_name,
        source_identity: String::new(),
        session_policy_name: String::new(),
        request: RequestIdentity {
            namespace,
            name: request.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
        },
    };
    match role.spec.method {
        GrantMethod::TrustPolicy => {
            input.role_arn = role.spec.role_arn.clone();
            input.work_group = work_group(&role.spec.role_arn)?;
            input.role_name = crate::policy::arn::role(&role.spec.role_arn)
                .map(|(_, name)| name.to_owned())
                .ok_or_else(|| Rejection::BadRoleArn(role.spec.role_arn.clone()))?;
            input.source_identity =
                crate::grant::trust_policy::session::source_identity(&spec.requester)
                    .map_err(|e| Rejection::NoSourceIdentity(e.to_string()))?;
            input.session_policy_name = crate::grant::trust_policy::session::policy_name(&uid);
        }
        // What is granted, as the role names it: informational in the input (the state
        // machine acts on the approval answer's target only).
        GrantMethod::IdentityCenter => {
            input.role_arn = identity_center_target(role)?.permission_set.clone();
        }
        GrantMethod::IamGroup => {
            input.role_arn = group_target(role)?.group_arn.clone();
        }
    }
    Ok(input)
}

/// How long after its creation a request asks to start (`spec.startAt`; zero without
/// one, or for a start already past), within the role's `maxStartDelay`. Measured from
/// the creation, not from now, so every plan of the request says the same.
fn start_delay(request: &AccessRequest, role: &AccessRole) -> Result<Duration, Rejection> {
    let Some(start) = request.spec.start_at.as_ref().map(|t| t.0) else {
        return Ok(Duration::ZERO);
    };
    let role_name = request.spec.role.clone();
    let Some(max_text) = role.spec.max_start_delay.as_deref() else {
        return Err(Rejection::StartNotAllowed(role_name));
    };
    let max = parse_duration("maxStartDelay", max_text)?;
    let created = request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .ok_or(Rejection::Incomplete)?;
    let delay = Duration::try_from(start.duration_since(created)).unwrap_or(Duration::ZERO);
    if delay > max {
        return Err(Rejection::StartTooFarAhead {
            start_at: expiry_after(start, 0),
            delay: format!("{}s", delay.as_secs()),
            max: max_text.to_owned(),
            role: role_name,
        });
    }
    Ok(delay)
}

/// Who approves a break-glass request: nobody; it is recorded as this.
pub const BREAK_GLASS: &str = "aws-jit:break-glass";

/// A break-glass request: the role lets the requester (by name, or the group asked as)
/// break the glass, for no longer than its `breakGlass.maxDuration`, with a reason, now.
fn check_break_glass(
    request: &AccessRequest,
    role: &AccessRole,
    duration_text: &str,
    duration: Duration,
) -> Result<(), Rejection> {
    let spec = &request.spec;
    let not_allowed = |why: &str| Rejection::BreakGlassNotAllowed {
        requester: spec.requester.clone(),
        role: spec.role.clone(),
        why: why.to_owned(),
    };
    let Some(policy) = role.spec.break_glass.as_ref() else {
        return Err(not_allowed(" (it allows no break glass)"));
    };
    if !lists(
        &policy.requesters,
        &spec.requester,
        spec.requester_group.as_deref(),
    ) {
        return Err(not_allowed(" (not listed in its breakGlass.requesters)"));
    }
    let max = parse_duration("breakGlass.maxDuration", &policy.max_duration)?;
    if duration > max {
        return Err(Rejection::BreakGlassTooLong {
            role: spec.role.clone(),
            max: policy.max_duration.clone(),
            duration: duration_text.to_owned(),
        });
    }
    if spec.reason.trim().is_empty() {
        return Err(Rejection::BreakGlassReasonRequired);
    }
    if spec.start_at.is_some() {
        return Err(Rejection::BreakGlassScheduled);
    }
    Ok(())
}

/// Where `request`'s approval stands: its votes counted against the role's rule, or,
/// for a break-glass request the role allows, approved without votes (a valid Deny
/// cast before the answer still denies). The one decision every reader of a request
/// asks (the controller, the worker's re-check, the drift sweep, the plugin).
pub fn decision(role: &AccessRole, request: &AccessRequest) -> (Tally, Vec<Ignored>) {
    let votes = request
        .status
        .as_ref()
        .and_then(|s| s.approvals.clone())
        .unwrap_or_default();
    let requester = &request.spec.requester;
    if request.spec.break_glass && plan(request, Some(role)).is_ok() {
        return match tally_needing(role, 0, requester, &votes) {
            (Tally::Approved { .. }, ignored) => (
                Tally::Approved {
                    approvers: vec![BREAK_GLASS.to_owned()],
                },
                ignored,
            ),
            other => other,
        };
    }
    tally(role, requester, &votes)
}

/// The condition a break-glass request carries until an approver reviewed it.
pub const REVIEW_PENDING: &str = "ReviewPending";

/// Where the review after the fact of a break-glass request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// Not a break-glass request, or nothing was granted (nothing to review).
    None,
    /// Granted; no review by an approver yet.
    Pending,
    Reviewed {
        by: String,
    },
    /// An approver flagged it (a flag wins over any other review).
    Flagged {
        by: String,
        comment: String,
    },
}

/// The review of `request`: valid reviews are those votes would be (a listed approver,
/// never the requester, each person once); reviews not counted come back too.
pub fn review(role: &AccessRole, request: &AccessRequest) -> (Review, Vec<Ignored>) {
    let status = request.status.clone().unwrap_or_default();
    // Only what got access is reviewed (a break glass withdrawn, or failed, before its
    // grant asks nobody for a review).
    if !request.spec.break_glass || status.granted_at.is_none() {
        return (Review::None, Vec::new());
    }
    let reviews = status.reviews.unwrap_or_default();
    let votes: Vec<Approval> = reviews.iter().map(crate::crd::Review::as_vote).collect();
    let (_, ignored) = tally_needing(role, 1, &request.spec.requester, &votes);
    let counted = |r: &&crate::crd::Review| !ignored.iter().any(|i| i.approver == r.reviewer);
    let valid: Vec<&crate::crd::Review> = reviews.iter().filter(counted).collect();
    let review = match (
        valid
            .iter()
            .find(|r| r.verdict == crate::crd::ReviewVerdict::Flagged),
        valid.first(),
    ) {
        (Some(flag), _) => Review::Flagged {
            by: flag.reviewer.clone(),
            comment: flag.comment.clone().unwrap_or_default(),
        },
        (None, Some(first)) => Review::Reviewed {
            by: first.reviewer.clone(),
        },
        (None, None) => Review::Pending,
    };
    (review, ignored)
}

/// When a request's access may start: its `startAt`, if that is later than `now`.
pub fn scheduled_start(request: &AccessRequest, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    request
        .spec
        .start_at
        .as_ref()
        .map(|t| t.0)
        .filter(|start| *start > now)
}

/// How much of a reason or ticket a rejection repeats (the Event's note is bounded).
const SHOWN_VALUE: usize = 120;

/// `value` matches the role's `pattern` (its spec field `field_name`) for the request's
/// `field` (anywhere, as CEL's `matches`).
/// Linear-time matching (no backtracking), so a request cannot stall the controller;
/// compiled per check (a request is planned a few times in its life).
pub(crate) fn check_pattern(
    role: &AccessRole,
    role_name: &str,
    (field, field_name): (&'static str, &'static str),
    pattern: &str,
    value: &str,
) -> Result<(), Rejection> {
    let bad = |why: String| Rejection::BadPattern {
        role: role_name.to_owned(),
        field: field_name,
        pattern: pattern.to_owned(),
        why,
    };
    // What the CRD refuses, refused here too (a role stored before the rule): Perl
    // classes are ASCII in the apiserver's RE2 and Unicode here.
    let perl = regex::Regex::new(crate::crd::PERL_CLASS_RE).map_err(|e| bad(e.to_string()))?;
    if perl.is_match(pattern) {
        return Err(bad(
            r"\d, \w, \s and \b differ between engines; write [0-9], [A-Za-z0-9_], [ \t]".into(),
        ));
    }
    // The engine's default compiled-size limit bounds what a short pattern expands to.
    let compiled = regex::Regex::new(pattern).map_err(|e| {
        let text = e.to_string();
        bad(text.lines().last().unwrap_or_default().trim().to_owned())
    })?;
    if compiled.is_match(value) {
        return Ok(());
    }
    let shown: String = value.chars().take(SHOWN_VALUE).collect();
    Err(Rejection::PatternMismatch {
        role: role_name.to_owned(),
        field,
        pattern: pattern.to_owned(),
        value: if shown.len() < value.len() {
            format!("{shown}…")
        } else {
            shown
        },
        hint: role
            .spec
            .pattern_hint
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .map(|h| format!(" ({h})"))
            .unwrap_or_default(),
    })
}

/// `now + duration_seconds`, in whole seconds, as IAM and Step Functions write times
/// (`2026-12-01T13:00:00Z`). Rounded down: access never outlasts what was approved.
pub fn expiry_after(now: jiff::Timestamp, duration_seconds: u64) -> String {
    let whole = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    let seconds = i64::try_from(duration_seconds).unwrap_or(i64::MAX);
    whole
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

/// Where the approvals of a request stand against its role's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    Pending { have: usize, need: usize },
    Approved { approvers: Vec<String> },
    Denied { by: String, comment: String },
}

/// A vote the controller does not count, and why (reported as an Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub approver: String,
    pub why: String,
}

/// Counts the valid votes: each person once, never the requester, only approvers the
/// role lists (by user, or by the group the vote was cast as, which admission checked
/// against the voter's real groups). One valid Deny denies. An approver named
/// `slack:<ID>` (how older releases recorded a Slack click through a group entry) is a
/// Slack account, not a person: it is not counted, because it could be the requester or
/// someone who also votes under their own name.
pub fn tally(role: &AccessRole, requester: &str, approvals: &[Approval]) -> (Tally, Vec<Ignored>) {
    let need = usize::try_from(role.spec.approvals_required.max(1)).unwrap_or(1);
    tally_needing(role, need, requester, approvals)
}

/// [`tally`] against `need` approvals (0: approved unless a valid vote denies).
pub fn tally_needing(
    role: &AccessRole,
    need: usize,
    requester: &str,
    approvals: &[Approval],
) -> (Tally, Vec<Ignored>) {
    let mut approvers: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for vote in approvals {
        let why = if vote.approver.starts_with("slack:") {
            Some("a Slack account, not a Kubernetes user: map it with a SlackIdentity")
        } else if vote.approver == requester {
            Some("the requester cannot decide on their own request")
        } else if !lists(&role.spec.approvers, &vote.approver, vote.group.as_deref()) {
            Some("not an approver of this AccessRole")
        } else if approvers.contains(&vote.approver) {
            Some("already voted")
        } else {
            None
        };
        if let Some(why) = why {
            ignored.push(Ignored {
                approver: vote.approver.clone(),
                why: why.into(),
            });
            continue;
        }
        if vote.decision == Decision::Deny {
            return (
                Tally::Denied {
                    by: vote.approver.clone(),
                    comment: vote.comment.clone().unwrap_or_default(),
                },
                ignored,
            );
        }
        approvers.push(vote.approver.clone());
    }
    if approvers.len() >= need {
        (Tally::Approved { approvers }, ignored)
    } else {
        (
            Tally::Pending {
                have: approvers.len(),
                need,
            },
            ignored,
        )
    }
}

/// The group whose members are cluster admins (they hold every verb); a revocation
/// asked as this group (admission checks the caller is in it) is an admin's.
pub const ADMIN_GROUP: &str = "system:masters";

/// Whether a revocation may end access early: the requester, an approver of the role
/// (by user, or by the group claimed, which admission checked), or a cluster admin (as
/// [`ADMIN_GROUP`]).
pub fn may_revoke(role: Option<&AccessRole>, requester: &str, revocation: &Revocation) -> bool {
    revocation.requested_by == requester
        || revocation.group.as_deref() == Some(ADMIN_GROUP)
        || role.is_some_and(|r| {
            lists(
                &r.spec.approvers,
                &revocation.requested_by,
                revocation.group.as_deref(),
            )
        })
}

/// The revocation that counts: the first one by someone with a say (the requester, a
/// listed approver, an admin). Entries of anyone else are ignored, never in the way.
pub fn effective_revocation<'a>(
    role: Option<&AccessRole>,
    requester: &str,
    revocations: &'a [Revocation],
) -> Option<&'a Revocation> {
    revocations.iter().find(|r| may_revoke(role, requester, r))
}

/// How the requester uses a grant of `input` (`status.access`), by its role's method.
pub fn access_instructions(
    input: &ExecutionInput,
    role: Option<&AccessRole>,
) -> crate::crd::AccessInstructions {
    use crate::grant::trust_policy::session;
    let method = GrantMethod::parse(&input.method).unwrap_or_default();
    match method {
        GrantMethod::TrustPolicy => {
            let profile_name = format!("aws-jit-{}", input.request.name);
            crate::crd::AccessInstructions {
                how: format!(
                    "assume {} with your own AWS credentials, as session {} with source \
                     identity {} (the command and profile below do)",
                    input.role_arn, input.session_name, input.source_identity
                ),
                role_arn: input.role_arn.clone(),
                session_name: input.session_name.clone(),
                source_identity: input.source_identity.clone(),
                assume_role_command: session::assume_role_command(
                    &input.role_arn,
                    &input.session_name,
                    &input.source_identity,
                ),
                profile: session::config_profile(
                    &profile_name,
                    &input.role_arn,
                    &input.session_name,
                    &input.source_identity,
                ),
                ..Default::default()
            }
        }
        GrantMethod::IdentityCenter => {
            let accounts = role
                .and_then(|r| r.spec.identity_center.as_ref())
                .map(|t| t.account_ids.clone())
                .unwrap_or_default();
            crate::crd::AccessInstructions {
                how: format!(
                    "sign in to your AWS access portal as {} and choose permission set {} in \
                     account{} {}; sessions you start last up to the permission set's session \
                     duration, also past the grant's end",
                    input.requester_arn,
                    input.role_arn,
                    if accounts.len() == 1 { "" } else { "s" },
                    accounts.join(", ")
                ),
                permission_set: input.role_arn.clone(),
                account_ids: accounts,
                ..Default::default()
            }
        }
        GrantMethod::IamGroup => crate::crd::AccessInstructions {
            how: format!(
                "use {}'s own credentials: the IAM user is in group {} until the grant ends \
                 (role sessions started with the group's rights last until they expire)",
                input.requester_arn, input.role_arn
            ),
            group_arn: input.role_arn.clone(),
            ..Default::default()
        },
    }
}

/// The condition the controller keeps while it ends a grant itself (an execution that
/// ended without revoking): False `RevokeFailing` while that fails, True
/// `RevokedByOperator` once done.
pub const REVOKED_CONDITION: &str = "Revoked";

/// Whether the controller must end access itself: the execution ended outside its flow
/// (stopped, timed out) or failed, after the request was approved (a grant may exist,
/// or may still be written by a work item in flight), and that was not done yet.
pub fn needs_operator_revoke(
    state: &ExecutionState,
    status: &crate::crd::AccessRequestStatus,
    approved: bool,
) -> bool {
    let ended_outside = matches!(
        state,
        ExecutionState::Failed { .. } | ExecutionState::Ended { .. }
    );
    let granted = approved
        || status.granted_at.is_some()
        || matches!(status.phase, Some(Phase::Approved | Phase::Active));
    let done = status
        .conditions
        .iter()
        .any(|c| c.type_ == REVOKED_CONDITION && c.status == "True");
    ended_outside && granted && !done
}

/// The phase and message once the controller ended a grant its execution did not: what
/// really happened, not just "failed".
pub fn after_operator_revoke(
    state: &ExecutionState,
    expired: bool,
    tightened: bool,
    at: &str,
) -> (Phase, String) {
    let ended = if tightened {
        format!(
            "the operator ended access at {at}: the sessions' deny was tightened (live \
             sessions end) and the trust statement removed"
        )
    } else {
        format!(
            "the operator ended access at {at}: the trust statement removed (no session of \
             the grant was left to end)"
        )
    };
    after_operator_end(state, expired, ended)
}

/// [`after_operator_revoke`] for any method: `ended` says what the operator did.
pub fn after_operator_end(state: &ExecutionState, expired: bool, ended: String) -> (Phase, String) {
    match state {
        ExecutionState::Failed { error, cause }
            if error == crate::contract::errors::GRANT_FAILED =>
        {
            (
                Phase::Failed,
                format!("the grant failed (nothing is granted): {cause}; {ended}"),
            )
        }
        ExecutionState::Failed { error, cause } => (
            if expired {
                Phase::Expired
            } else {
                Phase::Revoked
            },
            format!("the execution failed ({error}: {cause}) without revoking; {ended}"),
        ),
        ExecutionState::Ended { status } => (
            if expired {
                Phase::Expired
            } else {
                Phase::Revoked
            },
            format!("the execution ended {status} while access could be live; {ended}"),
        ),
        _ => (Phase::Revoked, ended),
    }
}

/// The phase and message an ended execution means.
pub fn phase_of(state: &ExecutionState) -> Option<(Phase, String)> {
    Some(match state {
        ExecutionState::Running => return None,
        ExecutionState::Succeeded { outcome, output } => match outcome {
            Some(Outcome::Expired) => (Phase::Expired, "access expired and was revoked".into()),
            Some(Outcome::Revoked) => (Phase::Revoked, "access was ended early and revoked".into()),
            Some(Outcome::Denied) => (Phase::Denied, denial_message(output)),
            Some(Outcome::Cancelled) => (
                Phase::Revoked,
                "cancelled before a decision (withdrawn, deleted, or drained at uninstall)".into(),
            ),
            Some(Outcome::ApprovalTimedOut) => (
                Phase::Expired,
                "nobody decided within the AccessRole's approvalTimeout".into(),
            ),
            None => (
                Phase::Failed,
                "the execution ended without an outcome".into(),
            ),
        },
        ExecutionState::Failed { error, cause } => (
            Phase::Failed,
            match error.as_str() {
                crate::contract::errors::GRANT_FAILED => {
                    format!("the grant failed (nothing is granted): {cause}")
                }
                crate::contract::errors::REVOKE_FAILED => {
                    format!("the revoke failed; AWS still ends access at expiresAt: {cause}")
                }
                _ => format!("the execution failed: {error}: {cause}"),
            },
        ),
        ExecutionState::Ended { status } => (
            Phase::Failed,
            format!("the execution ended with status {status}"),
        ),
    })
}

/// "denied by dave: not now", from the `Denied` failure's cause the execution kept
/// (`output.error.Cause`, a [`crate::contract::DenialCause`] as JSON).
fn denial_message(output: &serde_json::Value) -> String {
    let cause = output
        .pointer("/error/Cause")
        .and_then(|c| c.as_str())
        .and_then(|c| serde_json::from_str::<crate::contract::DenialCause>(c).ok());
    match cause {
        Some(c) if c.comment.is_empty() => format!("denied by {}", c.approver_name),
        Some(c) => format!("denied by {}: {}", c.approver_name, c.comment),
        None => "the request was denied".into(),
    }
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change
/// (cert-manager's convention; so do `kubectl wait`, Argo CD and Flux expect).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The condition that says a request has ended, whatever the outcome (reason: the
/// phase): `kubectl wait --for=condition=Ended` waits for the end.
pub const ENDED_CONDITION: &str = "Ended";

/// When the controller asks Step Functions where a started request's execution is
/// (`DescribeExecution`). Everything that moves a request arrives as an event the
/// controller watches: votes, revocations and deletion on the request, its role, and
/// each task in the token store (approval, hold). What no event says is seen only by
/// asking: that the execution ended. So it asks
/// - when the execution is expected to end soon without telling anyone ([`Ending`]): a
///   deadline of its own has passed (the approval's, the grant's expiry), or it was
///   answered in a way that ends it (denied, cancelled, access ended early), or word
///   came that it moved ([`Watch::moved`]); then after 1 s, 2 s, 4 s … (`gap` doubling,
///   `safety` at most) until it has ended;
/// - otherwise at its next deadline, and on a safety re-check `safety` after the last
///   look (for an execution stopped or failed from outside), counted from `since` when
///   it was never asked (a new leader spreads its first looks by each request's own
///   `safety`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The execution is expected to end soon: look now, then with a doubling gap.
    pub ending: bool,
    /// The request's own next deadline (approval deadline, expiry), if any.
    pub deadline: Option<jiff::Timestamp>,
    /// The last time something said the execution moved with no word on how (the
    /// worker answered its grant or revoke task, an answer came back "task already
    /// over"): a look after it is due now.
    pub moved: Option<jiff::Timestamp>,
    /// The last look and the gap after it (None: never asked by this controller).
    pub last: Option<Looked>,
    /// When this controller started (the baseline of a request it never asked about).
    pub since: jiff::Timestamp,
    /// The safety re-check (already spread per request).
    pub safety: Duration,
    pub now: jiff::Timestamp,
}

/// A look at an execution: when, how long until the next one at the earliest, and
/// whether it was a look at an ending execution (whose gap doubles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Looked {
    pub at: jiff::Timestamp,
    pub gap: Duration,
    pub ending: bool,
}

/// What [`look`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Ask Step Functions now, and remember this look.
    Now(Looked),
    /// Nothing to ask before this long (an event may wake the request earlier).
    After(Duration),
}

/// The first gap of an ending execution.
const FIRST_ENDING_GAP: Duration = Duration::from_secs(1);

/// When to ask Step Functions next (see [`Watch`]).
pub fn look(w: &Watch) -> Look {
    let until =
        |t: jiff::Timestamp| Duration::try_from(t.duration_since(w.now)).unwrap_or_default();
    let deadline_passed = w.deadline.is_some_and(|d| d <= w.now);
    // A look "in the future" (the clock went back) is not trusted.
    let last = w.last.filter(|l| l.at <= w.now);
    if let Some(moved) = w.moved
        && last.is_none_or(|l| l.at < moved)
    {
        return Look::Now(Looked {
            at: w.now,
            gap: FIRST_ENDING_GAP,
            ending: true,
        });
    }
    // Once looking at an ending execution, it goes on (the gap doubling, `safety` at
    // most) until the execution has ended and the request with it.
    if w.ending || deadline_passed || last.is_some_and(|l| l.ending) {
        let gap = match last {
            // Already looking at an ending execution: wait out the gap, then double it.
            Some(last) if last.ending => {
                let due = last.at.checked_add(last.gap).unwrap_or(last.at);
                // A deadline of its own that comes first (not one already looked past).
                let due = w
                    .deadline
                    .filter(|d| *d > last.at)
                    .map_or(due, |d| d.min(due));
                if due > w.now {
                    return Look::After(until(due));
                }
                (last.gap * 2).clamp(FIRST_ENDING_GAP, w.safety)
            }
            _ => FIRST_ENDING_GAP,
        };
        return Look::Now(Looked {
            at: w.now,
            gap,
            ending: true,
        });
    }
    let from = last.map_or(w.since, |l| l.at);
    let safety = from.checked_add(w.safety).unwrap_or(from);
    let due = w.deadline.map_or(safety, |d| d.min(safety));
    if due > w.now {
        Look::After(until(due))
    } else {
        Look::Now(Looked {
            at: w.now,
            gap: w.safety,
            ending: false,
        })
    }
}

/// The conditions of a phase: `Ready` (true while access is usable), `Approved`,
/// `Granted`, [`ENDED_CONDITION`], and kstatus's `Reconciling` (in progress) /
/// `Stalled` (needs a person). What GitOps tools read from them (kstatus, as Flux
/// does):
/// - Pending, AwaitingApproval, Approved: `Reconciling=True`, InProgress.
/// - Active: `Ready=True`, Current.
/// - Expired, Revoked, Denied: finished work, Current. `Ready` is removed (kstatus reads
///   `Ready=False` without `Reconciling`/`Stalled` as InProgress forever, so a Flux
///   Kustomization with one ended request would never be Ready again), `Ended=True`.
/// - Rejected, Failed: `Stalled=True`, `Ready=False`, Failed: the manifest or the system
///   needs a person (an unknown role, an ineligible requester, AWS refused the grant).
///   `Ended=True` too.
pub fn conditions_for(
    existing: &[Condition],
    phase: Phase,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut c = existing.to_vec();
    let reason = format!("{phase:?}");
    let ready = phase == Phase::Active;
    if matches!(phase, Phase::Expired | Phase::Revoked | Phase::Denied) {
        c.retain(|x| x.type_ != "Ready");
    } else {
        set_condition(&mut c, "Ready", ready, &reason, message, generation, now);
    }
    let approved = matches!(
        phase,
        Phase::Approved | Phase::Active | Phase::Expired | Phase::Revoked
    ) && existing_or(&c, "Approved", phase);
    set_condition(
        &mut c, "Approved", approved, &reason, message, generation, now,
    );
    set_condition(&mut c, "Granted", ready, &reason, message, generation, now);
    let in_progress = matches!(
        phase,
        Phase::Pending | Phase::AwaitingApproval | Phase::Scheduled | Phase::Approved
    );
    set_condition(
        &mut c,
        "Reconciling",
        in_progress,
        &reason,
        message,
        generation,
        now,
    );
    let stalled = matches!(phase, Phase::Rejected | Phase::Failed);
    set_condition(
        &mut c, "Stalled", stalled, &reason, message, generation, now,
    );
    set_condition(
        &mut c,
        ENDED_CONDITION,
        phase.is_terminal(),
        &reason,
        message,
        generation,
        now,
    );
    c
}

/// A request that ended under an operator that did not yet write [`ENDED_CONDITION`]
/// (its ended phases kept `Ready=False`, which kstatus reads as InProgress forever): its
/// phase, so the controller writes the conditions once more in today's terms.
pub fn ended_in_old_terms(status: &crate::crd::AccessRequestStatus) -> Option<Phase> {
    status
        .phase
        .filter(|p| p.is_terminal())
        .filter(|_| !status.conditions.iter().any(|c| c.type_ == ENDED_CONDITION))
}

/// Expired/Revoked after an approval keep `Approved=True`; an approval that timed out
/// (Expired without ever being approved) does not.
fn existing_or(c: &[Condition], type_: &str, phase: Phase) -> bool {
    match phase {
        Phase::Approved | Phase::Active => true,
        _ => c.iter().any(|x| x.type_ == type_ && x.status == "True"),
    }
}

#[cfg(test)]
mod tests;
