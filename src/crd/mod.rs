//! The custom resources of aws-jit (group `aws-jit.io`, version `v1alpha1`).
//!
//! The Rust types are the source of truth: `aws-jit crdgen` writes `crds/*.yaml` from
//! them, and a test fails when the checked-in files drift. Validation that the
//! apiserver can do (shape of ARNs and durations, immutability) lives here as schema
//! and CEL rules, so a malformed object is refused before any controller sees it.

mod access_request;
mod access_role;
mod slack_identity;

pub use access_request::{
    AccessInstructions, AccessRequest, AccessRequestSpec, AccessRequestStatus, Approval,
    ApprovalChannel, Decision, ExtensionApproval, ExtensionAsk, ExtensionOutcome, ExtensionPhase,
    GrantRecord, Phase, RequestRef, Review, ReviewVerdict, Revocation, SlackMessage,
};
pub use access_role::{
    AccessRole, AccessRoleSpec, BreakGlassPolicy, ExtensionPolicy, GrantMethod, IamGroupTarget,
    IdentityCenterTarget, PERL_CLASS_RE, PrincipalMapping, Subject, UserAttribute,
};
pub use slack_identity::{SLACK_USER_ID_RE, SlackIdentity, SlackIdentitySpec};

use kube::CustomResourceExt;

/// API group of every aws-jit resource.
pub const GROUP: &str = "aws-jit.io";

/// The finalizer the controller puts on every AccessRequest so that deleting one
/// revokes access before the object goes away.
pub const FINALIZER: &str = "aws-jit.io/revoke";

/// Regular expression (RE2 and Rust `regex` compatible) of a Go duration string as
/// `time.ParseDuration` accepts it, without sign.
pub const GO_DURATION_RE: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$";

/// A CEL rule that holds for a positive Go duration string. The regular expression is
/// checked first, so a malformed string gets the rule's message rather than a CEL
/// evaluation error (`&&` short-circuits on false).
pub(crate) fn positive_duration_rule() -> String {
    format!(
        "self.matches('{}') && duration(self) > duration('0s')",
        cel_quoted(GO_DURATION_RE)
    )
}

/// A regular expression escaped for a single-quoted CEL string literal.
pub(crate) fn cel_quoted(re: &str) -> String {
    re.replace('\\', "\\\\")
}

/// Every CRD of the project, in a stable order, as `crdgen` writes them.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        AccessRequest::crd(),
        AccessRole::crd(),
        SlackIdentity::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream.
pub fn to_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
