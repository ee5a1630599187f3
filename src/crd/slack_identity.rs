//! `SlackIdentity`: who a Slack user is in Kubernetes, as an admin says.
//!
//! A click in Slack carries only a Slack user ID. To count it as a vote, aws-jit must
//! know which person clicked, in the same terms as a `kubectl` vote: the Kubernetes
//! username (and the groups the person may approve as). This cluster-scoped resource is
//! that mapping; only admins may write it (RBAC: `aws-jit:role-admin`). Its name is the
//! Slack user ID in lower case, so one Slack user has at most one identity (the
//! apiserver refuses a second object of the same name).
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Shape of a Slack user ID (`U…`, or `W…` on Enterprise Grid).
pub const SLACK_USER_ID_RE: &str = "^[UW][A-Z0-9]{2,20}$";

/// The Kubernetes identity of one Slack user.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "aws-jit.io",
    version = "v1alpha1",
    kind = "SlackIdentity",
    category = "aws-jit",
    printcolumn = r#"{"name":"Slack user","type":"string","jsonPath":".spec.slackUserId"}"#,
    printcolumn = r#"{"name":"Username","type":"string","jsonPath":".spec.username"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name == self.spec.slackUserId.lowerAscii()").message("metadata.name must be spec.slackUserId in lower case (one SlackIdentity per Slack user)")
)]
#[serde(rename_all = "camelCase")]
pub struct SlackIdentitySpec {
    /// The Slack user ID (e.g. `U012AB3CD`): in Slack, the member's profile, "Copy
    /// member ID".
    #[x_kube(validation = Rule::new(format!("self.matches('{SLACK_USER_ID_RE}')")).message("slackUserId must be a Slack user ID such as U012AB3CD"))]
    #[schemars(length(max = 24))]
    pub slack_user_id: String,

    /// The Kubernetes username this person authenticates as: exactly what their
    /// `kubectl` votes carry as `approver` (for example the OIDC `username` claim).
    #[x_kube(validation = Rule::new("!self.startsWith('slack:') && !self.startsWith('system:')").message("username must be a person's Kubernetes username (not slack:… nor a system: identity)"))]
    #[schemars(length(min = 1, max = 253))]
    pub username: String,

    /// The groups this person may approve as from Slack (matched against AccessRoles'
    /// `approvers[].group`). Kubernetes does not tell aws-jit a user's groups outside a
    /// request, so they are listed here; keep them in step with your identity provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub groups: Vec<String>,
}

impl SlackIdentity {
    /// The object name of a Slack user's identity.
    pub fn name_for(slack_user_id: &str) -> String {
        slack_user_id.to_ascii_lowercase()
    }
}
