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
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.method"}"#,
    printcolumn = r#"{"name":"Role ARN","type":"string","jsonPath":".spec.roleArn","priority":1}"#,
    printcolumn = r#"{"name":"Permission Set","type":"string","jsonPath":".spec.identityCenter.permissionSet","priority":1}"#,
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.iamGroup.groupArn","priority":1}"#,
    printcolumn = r#"{"name":"Max","type":"string","jsonPath":".spec.maxDuration"}"#,
    printcolumn = r#"{"name":"Approvals","type":"integer","jsonPath":".spec.approvalsRequired"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(durations_ordered_rule()).message("defaultDuration must not exceed maxDuration"))]
#[x_kube(validation = Rule::new(break_glass_bounded_rule()).message("breakGlass.maxDuration must not exceed maxDuration"))]
#[x_kube(validation = Rule::new("self.method != 'TrustPolicy' || (has(self.roleArn) && !has(self.identityCenter) && !has(self.iamGroup))").message("method TrustPolicy grants the IAM role in roleArn: set roleArn, and neither identityCenter nor iamGroup"))]
#[x_kube(validation = Rule::new("self.method != 'IdentityCenter' || (has(self.identityCenter) && !has(self.roleArn) && !has(self.iamGroup))").message("method IdentityCenter grants a permission set: set identityCenter (instanceArn, identityStoreId, permissionSet, accountIds), and neither roleArn nor iamGroup"))]
#[x_kube(validation = Rule::new("self.method != 'IamGroup' || (has(self.iamGroup) && !has(self.roleArn) && !has(self.identityCenter))").message("method IamGroup grants membership of the IAM group in iamGroup.groupArn: set iamGroup, and neither roleArn nor identityCenter"))]
#[x_kube(validation = Rule::new(principal_arns_rule("TrustPolicy", IAM_PRINCIPAL_RE)).message("with method TrustPolicy, principal.template and every principal.users value must be an IAM principal ARN such as arn:aws:iam::123456789012:user/{username}"))]
#[x_kube(validation = Rule::new(principal_arns_rule("IamGroup", IAM_USER_RE)).message("with method IamGroup, principal.template and every principal.users value must be an IAM user ARN such as arn:aws:iam::123456789012:user/{username}"))]
#[x_kube(validation = Rule::new(group_account_rule()).message("with method IamGroup, the IAM users of principal must be in the account of iamGroup.groupArn (IAM groups hold only their own account's users)"))]
#[x_kube(validation = Rule::new("!has(self.extension) || self.method == 'TrustPolicy'").message("extension is supported with method TrustPolicy only: an IdentityCenter or IamGroup grant is revoked at its first expiry by a cleanup started before it is made"))]
#[x_kube(validation = Rule::new(principal_arns_rule("IdentityCenter", IC_USER_RE)).message("with method IdentityCenter, principal.template and every principal.users value must be an Identity Center user name or email (such as {username}@example.com), not an ARN"))]
#[serde(rename_all = "camelCase")]
pub struct AccessRoleSpec {
    /// `TrustPolicy`: the AWS IAM role granted, e.g.
    /// `arn:aws:iam::123456789012:role/admin`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::cel_quoted(ROLE_ARN_RE))).message("roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/admin"))]
    #[schemars(length(max = 2048))]
    pub role_arn: String,

    /// How access is granted: `TrustPolicy` (a statement in `roleArn`'s trust policy),
    /// `IdentityCenter` (an account assignment of a permission set), `IamGroup` (a
    /// membership of an IAM group).
    #[serde(default)]
    pub method: GrantMethod,

    /// `IdentityCenter`: the permission set assigned, where, and how the requester's
    /// Identity Center user is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_center: Option<IdentityCenterTarget>,

    /// `IamGroup`: the IAM group the requester's IAM user joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_group: Option<IamGroupTarget>,

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

    /// A pattern the request's reason must match (RE2 syntax, as CEL's `matches`; found
    /// anywhere in the reason unless anchored with `^…$`). For example `INC-[0-9]+`: the
    /// reason names an incident. A request whose reason does not match is `Rejected`,
    /// with the pattern and `patternHint` in its message. `\d`, `\w`, `\s` and `\b` are
    /// refused (ASCII in the apiserver's RE2, Unicode in the controller's engine: `\d`
    /// would take other scripts' digits): write `[0-9]`, `[A-Za-z0-9_]`, `[ \t]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(PATTERN_COMPILES_RULE).message("reasonPattern must be a regular expression (RE2 syntax)"))]
    #[x_kube(validation = Rule::new(no_perl_classes_rule()).message(r"reasonPattern must not use \d, \w, \s or \b (their meaning differs between engines): write [0-9], [A-Za-z0-9_], [ \t] instead"))]
    #[schemars(length(min = 1, max = 256))]
    pub reason_pattern: Option<String>,

    /// A pattern the request's ticket must match, as `reasonPattern` does for the
    /// reason. A request without a ticket is matched as the empty string: a pattern
    /// that matches it (`^(INC-[0-9]+)?$`) makes the ticket optional, one that does not
    /// (`^(INC|CHG)-[0-9]+$`) requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(PATTERN_COMPILES_RULE).message("ticketPattern must be a regular expression (RE2 syntax)"))]
    #[x_kube(validation = Rule::new(no_perl_classes_rule()).message(r"ticketPattern must not use \d, \w, \s or \b (their meaning differs between engines): write [0-9], [A-Za-z0-9_], [ \t] instead"))]
    #[schemars(length(min = 1, max = 256))]
    pub ticket_pattern: Option<String>,

    /// What to tell a requester whose reason or ticket does not match its pattern,
    /// e.g. `name the incident, as INC-1234`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub pattern_hint: Option<String>,

    /// Who may break the glass: get this role at once, without approvals, for a short
    /// time, with a reason; every approver is alerted loudly and the request needs a
    /// review after the fact (`status.reviews`). Absent: nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassPolicy>,

    /// How far ahead of its creation a request may ask to start (`spec.startAt`, Go
    /// duration, at most 720h). Absent: requests start when approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(format!("{} && duration(self) <= duration('720h')", positive_duration_rule())).message("maxStartDelay must be a positive Go duration of at most 720h (30 days), such as 168h"))]
    #[schemars(length(max = 32))]
    pub max_start_delay: Option<String>,

    /// Whether and how an active grant may be extended (`status.extensions`, `kubectl
    /// jit extend`). Absent: it may not. With method TrustPolicy only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<ExtensionPolicy>,

    /// The AWS principal each requester maps to.
    pub principal: PrincipalMapping,

    /// Slack channel (ID or name) for this role's requests; the relay's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub slack_channel: Option<String>,
}

impl AccessRoleSpec {
    /// Whether `other` grants by the same method on the same targets (IAM role,
    /// permission set and accounts, IAM group), whatever else differs.
    pub fn same_targets(&self, other: &AccessRoleSpec) -> bool {
        self.method == other.method
            && self.role_arn == other.role_arn
            && self.identity_center == other.identity_center
            && self.iam_group == other.iam_group
    }
}

/// Who may break the glass on a role, and for how long.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlassPolicy {
    /// Users or groups who may break the glass (a subset of who may ask, in practice
    /// the on-call rotation: see the README on keeping such a group current).
    #[schemars(length(min = 1, max = 64))]
    pub requesters: Vec<Subject>,
    /// The longest break-glass access (Go duration); at most the role's `maxDuration`.
    #[serde(default = "default_break_glass_duration")]
    #[x_kube(validation = Rule::new(positive_duration_rule()).message("breakGlass.maxDuration must be a positive Go duration such as 30m"))]
    #[schemars(length(max = 32))]
    pub max_duration: String,
}

fn default_break_glass_duration() -> String {
    "30m".into()
}

/// How an active grant of a role may be extended. An extension moves the grant's expiry
/// in AWS (the trust statement's `DateLessThan`, the sessions' deny, the execution's
/// hold) by the duration asked, never past `maxDuration` counted from the grant.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionPolicy {
    /// How many distinct approvers must approve an extension (votes in
    /// `status.extensionApprovals`). Default: the role's `approvalsRequired`. `0`: an
    /// extension within the bounds is granted without approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 64").message("extension.approvalsRequired must be between 0 and 64"))]
    pub approvals_required: Option<i32>,
    /// How many extensions one request may be granted.
    #[serde(default = "default_max_extensions")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("extension.maxExtensions must be between 1 and 16"))]
    pub max_extensions: i32,
}

fn default_max_extensions() -> i32 {
    1
}

/// An IAM user or role ARN (any partition, optional path): a principal a trust
/// statement may name.
pub const IAM_PRINCIPAL_RE: &str = r"^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:.+$";
/// An IAM user ARN (any partition, optional path).
pub const IAM_USER_RE: &str = r"^arn:aws[a-z-]*:iam::[0-9]{12}:user/.+$";
/// An Identity Center user name or email: printable, no spaces, not an ARN.
pub const IC_USER_RE: &str = r"^[^\s:]{1,128}$";
/// An IAM Identity Center instance ARN.
pub const IC_INSTANCE_RE: &str = r"^arn:aws[a-z-]*:sso:::instance/(sso)?ins-[a-zA-Z0-9-.]{16}$";
/// A permission set ARN.
pub const IC_PERMISSION_SET_ARN_RE: &str =
    r"^arn:aws[a-z-]*:sso:::permissionSet/(sso)?ins-[a-zA-Z0-9-.]{16}/ps-[a-zA-Z0-9-./]{16}$";
/// A permission set name.
pub const IC_PERMISSION_SET_NAME_RE: &str = r"^[\w+=,.@-]{1,32}$";
/// An identity store ID (`d-` and ten characters, or a UUID); as the template's
/// `IdentityStoreId` takes it.
pub const IDENTITY_STORE_RE: &str =
    r"^(d-[0-9a-z]{10}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$";
/// An IAM group ARN (any partition, optional path).
pub const GROUP_ARN_RE: &str =
    r"^arn:aws[a-z-]*:iam::[0-9]{12}:group/([\x21-\x7E]+/)?[\w+=,.@-]{1,128}$";

/// A pattern field compiles as a regular expression: the apiserver's CEL compiles
/// `self` as RE2 to evaluate `matches`, and a pattern that does not compile makes the
/// rule fail with the compile error (either side of the `||` errs, so it cannot
/// absorb the error). The controller compiles it again (Rust's `regex`, RE2's syntax)
/// and rejects a request whose role's pattern it cannot use.
const PATTERN_COMPILES_RULE: &str = "''.matches(self) || !''.matches(self)";

/// A Perl class or word boundary (`\d`, `\D`, `\w`, `\W`, `\s`, `\S`, `\b`, `\B`): a
/// backslash, preceded by an even number of backslashes, before one of those letters.
/// ASCII in RE2 (the apiserver's CEL), Unicode in Rust's `regex`: a pattern using them
/// would accept in the controller what the role's authors did not mean.
pub const PERL_CLASS_RE: &str = r"(^|[^\\])(\\\\)*\\[dDwWsSbB]";

fn no_perl_classes_rule() -> String {
    format!("!self.matches('{}')", super::cel_quoted(PERL_CLASS_RE))
}

/// With `method`, the principal's template and every users value match `re`.
fn principal_arns_rule(method: &str, re: &str) -> String {
    let re = super::cel_quoted(re);
    format!(
        "self.method != '{method}' || \
         ((!has(self.principal.template) || self.principal.template.matches('{re}')) && \
          (!has(self.principal.users) || self.principal.users.all(k, self.principal.users[k].matches('{re}'))))"
    )
}

/// IamGroup: the users' account is the group's (the fifth field of both ARNs).
fn group_account_rule() -> String {
    "self.method != 'IamGroup' || !has(self.iamGroup) || \
     ((!has(self.principal.template) || self.principal.template.split(':').size() < 5 || \
       self.principal.template.split(':')[4] == self.iamGroup.groupArn.split(':')[4]) && \
      (!has(self.principal.users) || self.principal.users.all(k, \
        self.principal.users[k].split(':').size() < 5 || \
        self.principal.users[k].split(':')[4] == self.iamGroup.groupArn.split(':')[4])))"
        .into()
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

/// breakGlass.maxDuration <= maxDuration, when both are well-formed.
fn break_glass_bounded_rule() -> String {
    let re = super::cel_quoted(super::GO_DURATION_RE);
    format!(
        "!has(self.breakGlass) || !self.breakGlass.maxDuration.matches('{re}') || \
         !self.maxDuration.matches('{re}') || \
         duration(self.breakGlass.maxDuration) <= duration(self.maxDuration)"
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

/// How access is granted. The one list of grant methods: the CRD, the state machine's
/// messages and the metrics' `method` label all use it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum GrantMethod {
    /// A statement in the role's trust policy, with an expiry AWS enforces.
    #[default]
    TrustPolicy,
    /// A membership of an IAM group, added and removed by the state machine.
    IamGroup,
    /// An IAM Identity Center account assignment, created and deleted by the state
    /// machine.
    IdentityCenter,
}

impl GrantMethod {
    /// The name as written in the CRD and the state machine's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustPolicy => "TrustPolicy",
            Self::IamGroup => "IamGroup",
            Self::IdentityCenter => "IdentityCenter",
        }
    }

    /// The name, back from the state machine's messages.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::TrustPolicy, Self::IamGroup, Self::IdentityCenter]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// `IdentityCenter`: a permission set assigned to the requester's Identity Center user
/// in each of `accountIds`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityCenterTarget {
    /// The Identity Center instance, e.g. `arn:aws:sso:::instance/ssoins-1234567890abcdef`.
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::cel_quoted(IC_INSTANCE_RE))).message("identityCenter.instanceArn must be an Identity Center instance ARN such as arn:aws:sso:::instance/ssoins-1234567890abcdef"))]
    #[schemars(length(max = 1224))]
    pub instance_arn: String,
    /// The instance's identity store, e.g. `d-1234567890`, where the requester's user is
    /// looked up.
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::cel_quoted(IDENTITY_STORE_RE))).message("identityCenter.identityStoreId must be an identity store ID such as d-1234567890"))]
    #[schemars(length(max = 64))]
    pub identity_store_id: String,
    /// The permission set: its ARN, or its name (looked up in the instance).
    #[x_kube(validation = Rule::new(format!("self.matches('{}') || self.matches('{}')", super::cel_quoted(IC_PERMISSION_SET_ARN_RE), super::cel_quoted(IC_PERMISSION_SET_NAME_RE))).message("identityCenter.permissionSet must be a permission set ARN (arn:aws:sso:::permissionSet/ssoins-…/ps-…) or a permission set name (1-32 of letters, digits and +=,.@_-)"))]
    #[schemars(length(max = 1224))]
    pub permission_set: String,
    /// The AWS accounts the permission set is assigned in (12 digits each).
    #[schemars(length(min = 1, max = 10))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(a, a.matches('^[0-9]{12}$'))").message("identityCenter.accountIds must be 12-digit AWS account IDs"))]
    pub account_ids: Vec<String>,
    /// Which attribute of the Identity Center user the principal mapping gives:
    /// `UserName` (default) or `Email`.
    #[serde(default)]
    pub user_attribute: UserAttribute,
}

/// The attribute an Identity Center user is found by (`identitystore:GetUserId`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UserAttribute {
    /// The user's `userName`.
    #[default]
    UserName,
    /// The user's email (`emails.value`).
    Email,
}

impl UserAttribute {
    /// The attribute path `identitystore:GetUserId` takes.
    pub fn path(self) -> &'static str {
        match self {
            Self::UserName => "userName",
            Self::Email => "emails.value",
        }
    }
}

/// `IamGroup`: the IAM group the requester's IAM user is added to.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IamGroupTarget {
    /// The group, e.g. `arn:aws:iam::123456789012:group/admins`.
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::cel_quoted(GROUP_ARN_RE))).message("iamGroup.groupArn must be an IAM group ARN such as arn:aws:iam::123456789012:group/admins"))]
    #[schemars(length(max = 2048))]
    pub group_arn: String,
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

/// How a Kubernetes username becomes the AWS identity granted (an IAM principal ARN for
/// `TrustPolicy`, an IAM user ARN for `IamGroup`, an Identity Center user name or email
/// for `IdentityCenter`): an explicit entry in `users` wins; otherwise `template` with
/// `{username}` replaced.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.template) || (has(self.users) && size(self.users) > 0)").message("set principal.template or at least one principal.users entry"))]
#[serde(rename_all = "camelCase")]
pub struct PrincipalMapping {
    /// Username → principal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 128, "additionalProperties" = {"type": "string", "maxLength": 512}))]
    pub users: BTreeMap<String, String>,
    /// e.g. `arn:aws:iam::123456789012:user/{username}`, or `{username}@example.com` for
    /// `IdentityCenter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.contains('{username}')").message("principal.template must contain {username}"))]
    #[schemars(length(max = 2048))]
    pub template: Option<String>,
}
