//! `AccessRequest`: one person's request for time-bound access to one AccessRole.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::positive_duration_rule;

/// What a person asks for. Immutable after creation: a request that needs to change
/// is withdrawn (deleted) and asked again, so what approvers approved is what runs.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aws-jit.io",
    version = "v1alpha1",
    kind = "AccessRequest",
    namespaced,
    status = "AccessRequestStatus",
    shortname = "ar",
    shortname = "accessreq",
    category = "aws-jit",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: delete the AccessRequest and create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestSpec {
    /// Name of the (cluster-scoped) AccessRole asked for.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("role must be the name of an AccessRole (lower-case letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub role: String,

    /// The Kubernetes user the access is for. Admission accepts only the creating user,
    /// unless the creator is a trusted submitter such as a GitOps controller.
    #[schemars(length(min = 1, max = 253))]
    pub requester: String,

    /// For AccessRoles that list requesters by group: the group the requester asks as.
    /// Admission accepts only one of the creating user's own groups (a trusted
    /// submitter vouches for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub requester_group: Option<String>,

    /// How long access lasts once granted, as a Go duration (`30m`, `1h`). Defaults to
    /// the AccessRole's `defaultDuration`; may not exceed its `maxDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("duration must be a positive Go duration such as 30m or 1h"))]
    #[schemars(length(max = 32))]
    pub duration: Option<String>,

    /// Why the access is needed; shown to approvers. Required when the AccessRole says so.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,

    /// An optional ticket or incident reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub ticket: Option<String>,

    /// Break the glass: access at once, without approvals, for at most the AccessRole's
    /// `breakGlass.maxDuration`, with a reason, for those its `breakGlass.requesters`
    /// list. Every approver is alerted loudly, and the request shows `ReviewPending`
    /// until an approver records a review (`status.reviews`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,

    /// When access should start (RFC 3339), for AccessRoles that allow scheduling
    /// (`maxStartDelay`). Approvers may decide before; the request shows `Scheduled`
    /// until then, is checked against its AccessRole again at the start, and the
    /// duration counts from the start (the later of `startAt` and the approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Time>,
}

/// Where a request is in its life. Terminal phases: Expired, Denied, Rejected,
/// Revoked, Failed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted by the controller; the execution is being started.
    Pending,
    /// Waiting for approvers.
    AwaitingApproval,
    /// Approved before its `startAt`: nothing is granted until then (checked against
    /// the AccessRole again at the start).
    Scheduled,
    /// Approved; the grant is being made.
    Approved,
    /// Access is granted until `expiresAt`.
    Active,
    /// Access ran its time and was revoked, or the request was never answered in time.
    Expired,
    /// An approver denied the request.
    Denied,
    /// The request is invalid against its AccessRole; nothing was started.
    Rejected,
    /// Access was ended early (request deleted or revoke asked for).
    Revoked,
    /// The grant or revoke failed; see `message` and the execution.
    Failed,
}

impl Phase {
    /// True when nothing more happens to the request.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Expired | Phase::Denied | Phase::Rejected | Phase::Revoked | Phase::Failed
        )
    }
}

/// An approver's vote.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Decision {
    Approve,
    Deny,
}

/// Where a vote was cast.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalChannel {
    #[default]
    Kubectl,
    Slack,
}

/// One approver's decision, appended to `status.approvals`. Admission binds
/// `approver` to the authenticated user; the list is keyed by approver, so each
/// person has at most one vote.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// The Kubernetes user who decided (for Slack, the user mapped from the Slack ID).
    #[schemars(length(min = 1, max = 253))]
    pub approver: String,
    pub decision: Decision,
    /// For AccessRoles that list approvers by group: the group the vote is cast as.
    /// Admission accepts only one of the voter's own groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
    /// Why; required in spirit for a Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
    /// When the decision was made, as the approver's client reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Where the vote was cast; only the operator may record `slack`.
    #[serde(default)]
    pub via: ApprovalChannel,
}

/// An explicit request to end access early, appended to `status.revocations` by the
/// requester, an approver or an admin (`kubectl patch --subresource=status`). It is a
/// status field, not a spec change, because the spec is immutable and because it binds
/// to the caller's identity the same way approvals do: admission accepts it only in the
/// caller's own name and never lets an entry be changed or removed, so the record of who
/// ended the access stays true. Admission cannot know an AccessRole's approvers, so the
/// controller acts on the first entry of the requester, a listed approver or an admin;
/// then it ends the hold and the state machine revokes now (phase `Revoked`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// The Kubernetes user who asked for the revocation; admission binds it to the
    /// authenticated user, so the audit trail names the real person.
    #[schemars(length(min = 1, max = 253))]
    pub requested_by: String,
    /// For AccessRoles that list approvers by group: the group the revocation is asked
    /// as, so the controller can match it (it cannot look up a user's groups itself).
    /// Admission accepts only one of the caller's own groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
    /// Why access is ended early, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// When the revocation was asked for, as the caller's client reports it (the
    /// authoritative instant is `revokedAt`, written by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// The requester's ask to extend an active grant, appended to `status.extensions`
/// (`kubectl jit extend`). Admission accepts it only from the requester, in their own
/// name, and never lets an entry be changed or removed. The controller decides each in
/// order against the AccessRole's `extension` rules and records what became of it in
/// `status.extensionOutcomes`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionAsk {
    /// Names the extension, for its votes (`status.extensionApprovals[].extension`) and
    /// its outcome: lower-case letters, digits and '-' (the plugin uses `1`, `2`, …).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("an extension's id must be lower-case letters, digits and '-', such as 1 or 2"))]
    #[schemars(length(min = 1, max = 32))]
    pub id: String,
    /// The requester (admission binds it to the authenticated user).
    #[schemars(length(min = 1, max = 253))]
    pub requested_by: String,
    /// How much longer, as a Go duration (`30m`), added to the current expiry.
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("an extension's by must be a positive Go duration such as 30m or 1h"))]
    #[schemars(length(min = 1, max = 32))]
    pub by: String,
    /// Why; checked as the request's reason is (`requireReason`, `reasonPattern`).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// When it was asked, as the requester's client reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// An approver's vote on one extension, appended to `status.extensionApprovals`. The
/// same identity rules as `approvals` (own name, never the requester, own group), one
/// vote per person per extension.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionApproval {
    /// The `id` of the extension voted on.
    #[schemars(length(min = 1, max = 32))]
    pub extension: String,
    #[schemars(length(min = 1, max = 253))]
    pub approver: String,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default)]
    pub via: ApprovalChannel,
}

impl ExtensionApproval {
    /// The vote as a request vote, for counting with the same rules.
    pub fn as_vote(&self) -> Approval {
        Approval {
            approver: self.approver.clone(),
            decision: self.decision,
            group: self.group.clone(),
            comment: self.comment.clone(),
            time: self.time.clone(),
            via: self.via,
        }
    }
}

/// What a reviewer found of a break-glass request.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReviewVerdict {
    /// The use was justified.
    Reviewed,
    /// The use needs a closer look: a Warning Event and a security alert say so.
    Flagged,
}

/// A review after the fact of a break-glass request, appended to `status.reviews` by an
/// approver of its AccessRole. The identity rules of votes: in the reviewer's own name,
/// never the requester, as one of the reviewer's own groups.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    #[schemars(length(min = 1, max = 253))]
    pub reviewer: String,
    pub verdict: ReviewVerdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default)]
    pub via: ApprovalChannel,
}

impl Review {
    /// The review as an approving vote, for counting who may review with the rules of
    /// votes.
    pub fn as_vote(&self) -> Approval {
        Approval {
            approver: self.reviewer.clone(),
            decision: Decision::Approve,
            group: self.group.clone(),
            comment: self.comment.clone(),
            time: self.time.clone(),
            via: self.via,
        }
    }
}

/// Where an extension is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExtensionPhase {
    /// Approved; the execution is moving the expiry in AWS.
    Extending,
    /// The expiry moved: access lasts until `expiresAt`.
    Extended,
    /// Not allowed by the AccessRole (see `message`); nothing changed.
    Refused,
    /// An approver denied it; nothing changed.
    Denied,
    /// Approved, but the expiry could not be moved (see `message`); the grant keeps
    /// its earlier expiry.
    Failed,
}

impl ExtensionPhase {
    /// True when nothing more happens to the extension.
    pub fn is_settled(self) -> bool {
        !matches!(self, ExtensionPhase::Extending)
    }
}

/// What became of one extension (`status.extensionOutcomes`), written by the
/// controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionOutcome {
    /// The extension's `id`.
    #[schemars(length(min = 1, max = 32))]
    pub id: String,
    pub phase: ExtensionPhase,
    /// Who approved it (`aws-jit:rule/no-approval-needed` when the role needs none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub approved_by: Vec<String>,
    /// The expiry it moves the grant to (Extending, Extended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When this outcome was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Identity of a request, carried into the execution so AWS-side records point back.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RequestRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The request's living Slack message, as the relay remembers it. Written only by the
/// relay (the operator's identity), never by the controller's status apply, and never
/// read from anything a requester can write (annotations are the creator's).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackMessage {
    /// The channel the message was posted to.
    #[schemars(length(max = 80))]
    pub channel: String,
    /// The message's `ts` (its ID within the channel).
    #[schemars(length(max = 32))]
    pub ts: String,
    /// The events already shown, in order (a redelivered alert is not shown twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    pub relayed: Vec<String>,
}

/// What a grant made (`status.grant`), from its execution's own record.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    /// `TrustPolicy`, `IdentityCenter` or `IamGroup`.
    #[schemars(length(max = 32))]
    pub method: String,
    /// TrustPolicy: the statement's `Sid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub statement_id: String,
    /// IdentityCenter: the instance, permission set, accounts and the identity store's
    /// user id assigned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1224))]
    pub instance_arn: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1224))]
    pub permission_set_arn: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub account_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub user_id: String,
    /// IamGroup: the group and the IAM user added to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub user_name: String,
}

/// How the requester uses an active grant (`status.access`), in the words of its method.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessInstructions {
    /// What to do, for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub how: String,
    /// TrustPolicy: the role to assume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048))]
    pub role_arn: String,
    /// TrustPolicy: the `RoleSessionName` every session must use (`ar-<request uid>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub session_name: String,
    /// TrustPolicy: the `SourceIdentity` every session must set (the requester).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub source_identity: String,
    /// TrustPolicy: a ready-to-run `aws sts assume-role` command (with the requester's
    /// own credentials).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    pub assume_role_command: String,
    /// TrustPolicy: a `~/.aws/config` profile that assumes the role this way.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    pub profile: String,
    /// IdentityCenter: the permission set assigned (as the AccessRole names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1224))]
    pub permission_set: String,
    /// IdentityCenter: the accounts it is assigned in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub account_ids: Vec<String>,
    /// IamGroup: the group the requester's IAM user is in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048))]
    pub group_arn: String,
}

/// What the controller observed and did. Written by the controller with server-side
/// apply, except `approvals`, which approvers append to, `revocations`, which the
/// requester, an approver or an admin append to to end access early, and `slack`, which
/// the relay writes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready` (access is held now; absent once the request ended as Expired, Revoked or
    /// Denied), `Ended` (reason: the final phase), `Approved`, `Granted`, and kstatus's
    /// `Reconciling` / `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The Step Functions execution that carries this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,

    /// Approvers' decisions, one per approver, append-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["approver"]))]
    #[schemars(length(max = 64))]
    pub approvals: Option<Vec<Approval>>,

    /// Explicit early revokes, one per person, append-only: the first by the requester,
    /// a listed approver or an admin ends the hold and revokes now (before approval, it
    /// cancels the request). Anyone else's entry is recorded and ignored, so it can never
    /// stand in the way of one that counts. The controller's status apply does not own
    /// the entries, so never drops them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["requestedBy"]))]
    #[schemars(length(max = 64))]
    pub revocations: Option<Vec<Revocation>>,

    /// The requester's asks to extend the grant, append-only, in order (the
    /// requester's field; the controller's apply never owns the entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    #[schemars(length(max = 16))]
    pub extensions: Option<Vec<ExtensionAsk>>,

    /// Approvers' votes on extensions, one per approver and extension, append-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["extension", "approver"]))]
    #[schemars(length(max = 128))]
    pub extension_approvals: Option<Vec<ExtensionApproval>>,

    /// What became of each extension, in the order asked (the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    #[schemars(length(max = 16))]
    pub extension_outcomes: Option<Vec<ExtensionOutcome>>,

    /// Reviews after the fact of a break-glass request, one per reviewer, append-only
    /// (the approvers' field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["reviewer"]))]
    #[schemars(length(max = 64))]
    pub reviews: Option<Vec<Review>>,

    /// When access was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,

    /// When access ends; AWS itself refuses the grant after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// What the grant made in AWS, as its execution recorded it: what the operator
    /// removes when it ends the grant in the execution's place, whatever the AccessRole
    /// says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantRecord>,

    /// When access was revoked (at expiry or early).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,

    /// How the requester uses the access, once it is granted: every session must be
    /// named `sessionName` and carry `sourceIdentity` (the role's trust policy requires
    /// both), so CloudTrail ties each AWS action to this request and this person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessInstructions>,

    /// A human-readable summary of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The request's living Slack message; the relay's field (JSON patch, field
    /// manager `aws-jit-relay`), not part of the controller's apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackMessage>,
}
