//! `AccessRole`: an AWS role that may be granted just in time, and the rules for it.
use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::positive_duration_rule;

/// Shape of an IAM role ARN (any partition, optional path).
pub const ROLE_ARN_RE: &str =
    r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/([\x21-\x7E]+/)?[\w+=,.@-]{1,64}$";

/// Who may ask for, and who may approve, access to one AWS role.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aws-jit.io",
    version = "v1alpha1",
    kind = "AccessRole",
    category = "aws-jit",
    printcolumn = r#"{"name":"Role ARN","type":"string","jsonPath":".spec.roleArn"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.method"}"#,
    printcolumn = r#"{"name":"Max","type":"string","jsonPath":".spec.maxDuration"}"#,
    printcolumn = r#"{"name":"Approvals","type":"integer","jsonPath":".spec.approvalsRequired"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(durations_ordered_rule()).message("defaultDuration must not exceed maxDuration"))]
#[serde(rename_all = "camelCase")]
pub struct AccessRoleSpec {
    /// The AWS IAM role granted, e.g. `arn:aws:iam::123456789012:role/admin`.
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::cel_quoted(ROLE_ARN_RE))).message("roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/admin"))]
    #[schemars(length(max = 2048))]
    pub role_arn: String,

    /// How access is granted. Only `TrustPolicy` is implemented today.
    #[serde(default)]
    pub method: GrantMethod,

    /// The longest duration a request may ask for (Go duration).
    #[serde(default = "default_max_duration")]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("maxDuration must be a positive Go duration such as 4h"))]
    #[schemars(length(max = 32))]
    pub max_duration: String,

    /// The duration of a request that names none (Go duration).
    #[serde(default = "default_duration")]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("defaultDuration must be a positive Go duration such as 1h"))]
    #[schemars(length(max = 32))]
    pub default_duration: String,

    /// How long a request waits for its approvals before it expires unanswered.
    #[serde(default = "default_duration")]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("approvalTimeout must be a positive Go duration such as 1h"))]
    #[schemars(length(max = 32))]
    pub approval_timeout: String,

    /// How many distinct approvers must approve (N of M). One Deny denies.
    #[serde(default = "default_approvals_required")]
    #[x_kube(validation = Rule::new("self >= 1").message("approvalsRequired must be at least 1"))]
    pub approvals_required: i32,

    /// Who may approve: users or groups (from Slack too, once a SlackIdentity maps the
    /// person's Slack user to their username).
    #[schemars(length(min = 1, max = 64))]
    pub approvers: Vec<Subject>,

    /// Who may ask: users or groups.
    #[schemars(length(min = 1, max = 256))]
    pub requesters: Vec<Subject>,

    /// Refuse requests without a reason.
    #[serde(default)]
    pub require_reason: bool,

    /// The AWS principal each requester maps to.
    pub principal: PrincipalMapping,

    /// Slack channel (ID or name) for this role's requests; the relay's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub slack_channel: Option<String>,
}

/// defaultDuration <= maxDuration, evaluated only when both are well-formed (the fields'
/// own rules report malformed ones).
fn durations_ordered_rule() -> String {
    let re = super::cel_quoted(super::GO_DURATION_RE);
    format!(
        "!self.defaultDuration.matches('{re}') || !self.maxDuration.matches('{re}') || \
         duration(self.defaultDuration) <= duration(self.maxDuration)"
    )
}

fn default_max_duration() -> String {
    "4h".into()
}
fn default_duration() -> String {
    "1h".into()
}
fn default_approvals_required() -> i32 {
    1
}

/// How access to the role is granted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GrantMethod {
    /// A statement in the role's trust policy, with an expiry AWS enforces.
    #[default]
    TrustPolicy,
    /// Reserved: membership in an IAM group.
    IamGroup,
    /// Reserved: an IAM Identity Center account assignment.
    IdentityCenter,
}

/// A Kubernetes user or group, with an optional Slack identity.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.user) != has(self.group)").message("set exactly one of user or group"))]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
    /// Slack user ID (e.g. `U012AB3CD`) to @-mention in this role's alerts. It does not
    /// let anyone approve from Slack: a click counts only for the person a
    /// SlackIdentity maps the Slack user to (deprecated as a mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[UW][A-Z0-9]{2,20}$')").message("slackUserId must be a Slack user ID such as U012AB3CD"))]
    #[schemars(length(max = 24))]
    pub slack_user_id: Option<String>,
}

/// How a Kubernetes username becomes an AWS principal ARN: an explicit entry in
/// `users` wins; otherwise `template` with `{username}` replaced.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.template) || (has(self.users) && size(self.users) > 0)").message("set principal.template or at least one principal.users entry"))]
#[serde(rename_all = "camelCase")]
pub struct PrincipalMapping {
    /// Username → principal ARN.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 128, "additionalProperties" = {"type": "string", "maxLength": 512}))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:.+$'))").message("each principal.users value must be an IAM principal ARN"))]
    pub users: BTreeMap<String, String>,
    /// e.g. `arn:aws:iam::123456789012:user/{username}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.contains('{username}') && self.matches('^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:.+$')").message("principal.template must be an IAM principal ARN containing {username}"))]
    #[schemars(length(max = 2048))]
    pub template: Option<String>,
}
