//! `kubectl jit`: a person's tool for aws-jit, from asking for access to using it. It
//! talks to the cluster as the person running it (their kubeconfig) and to STS with
//! their own AWS credentials. It only makes the allowed thing easy: every write is one
//! the person could make with kubectl, in their own name (the SelfSubjectReview's), and
//! admission stays the authority; before writing it asks the controller's own rules
//! ([`crate::policy::decide`]) whether the write would count, and says why not.
//!
//! - [`votes`], [`render`], [`timeline`], [`access`]: pure (may I vote, rows, the
//!   timeline, what to ask STS).
//! - [`identity`], [`commands`], [`credentials`]: I/O.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod access;
pub mod commands;
pub mod credentials;
pub mod identity;
pub mod render;
pub mod timeline;
pub mod votes;

pub use render::Output;

/// Exit codes (docs/plugin.md).
pub mod exit {
    pub const OK: i32 = 0;
    /// The cluster or AWS could not be reached or answered an error; anything unexpected.
    pub const ERROR: i32 = 1;
    /// A usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// Refused: by a rule the plugin checks, or by the apiserver (RBAC, admission).
    pub const REFUSED: i32 = 3;
    /// The request ended without access (with `--wait`), or `credentials` on a request
    /// that is not Active.
    pub const NO_ACCESS: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
}

/// What went wrong, with the exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Aws(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NoAccess(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cluster(_) | Error::Aws(_) | Error::Other(_) => exit::ERROR,
            Error::Refused(_) => exit::REFUSED,
            Error::NoAccess(_) => exit::NO_ACCESS,
            Error::NotFound(_) => exit::NOT_FOUND,
        }
    }

    /// A Kubernetes error, about `what`: not found (5), refused by RBAC or admission
    /// (3, with the apiserver's message), anything else (1), not being authenticated
    /// (401: an expired token, a wrong kubeconfig) included.
    pub fn kube(what: &str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!("{what}: not found")),
            kube::Error::Api(s) if matches!(s.code, 403 | 409 | 422) => Error::Refused(format!(
                "{what}: the apiserver refused ({}): {}",
                s.reason, s.message
            )),
            other => Error::Cluster(format!("{what}: {other}")),
        }
    }
}

impl From<votes::Refusal> for Error {
    fn from(r: votes::Refusal) -> Self {
        Error::Refused(r.to_string())
    }
}

impl From<access::NoAccess> for Error {
    fn from(e: access::NoAccess) -> Self {
        match e {
            access::NoAccess::NotYours { .. } => Error::Refused(e.to_string()),
            access::NoAccess::Incomplete { .. } => Error::Other(e.to_string()),
            _ => Error::NoAccess(e.to_string()),
        }
    }
}

impl From<render::RenderError> for Error {
    fn from(e: render::RenderError) -> Self {
        Error::Other(e.to_string())
    }
}

/// `kubectl jit`: ask for, decide on, revoke and use just-in-time AWS access (aws-jit).
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-jit",
    bin_name = "kubectl jit",
    version,
    about = "Ask for, decide on, revoke and use just-in-time AWS access (aws-jit)",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 refused, 4 no access, 5 not found (docs/plugin.md)"
)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags kubectl users expect; `KUBECONFIG` is read as kubectl reads it.
#[derive(Debug, Clone, Args)]
pub struct KubeFlags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask for an AccessRole; with --wait, follow it until Active or ended.
    Request(RequestArgs),
    /// Approve a request, in your own name.
    Approve(VoteArgs),
    /// Deny a request, in your own name (a comment is required).
    Deny(DenyArgs),
    /// End a request's access early (or withdraw it before a decision).
    Revoke(RevokeArgs),
    /// Review a break-glass request after the fact, in your own name (an approver).
    Review(ReviewArgs),
    /// Ask for more time on your Active request (as its AccessRole allows; approvers
    /// vote with `approve NAME --extension ID`).
    Extend(ExtendArgs),
    /// List requests, like `kubectl get` with approvals and the time left.
    List(ListArgs),
    /// A request's facts and timeline (status and Events).
    Describe(DescribeArgs),
    /// AWS credentials of an Active grant, as the AWS CLI's `credential_process` JSON.
    Credentials(CredentialsArgs),
    /// A ~/.aws/config profile whose credential_process runs `kubectl-jit credentials`.
    AwsProfile(AwsProfileArgs),
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The AccessRole to ask for.
    pub role: String,
    /// Why you need it (shown to approvers).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// How long, as a Go duration (30m, 1h); default: the role's defaultDuration.
    #[arg(long)]
    pub duration: Option<String>,
    /// A ticket or incident reference.
    #[arg(long)]
    pub ticket: Option<String>,
    /// When access should start (RFC 3339, e.g. 2026-12-04T09:00:00Z), for roles that
    /// allow scheduling; approvers may decide before.
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<jiff::Timestamp>,
    /// Break the glass: access at once without approvals, for roles that allow you to
    /// (a reason is required; every approver is alerted and reviews it after).
    #[arg(long)]
    pub break_glass: bool,
    /// The request's name (default: generated from the role).
    #[arg(long)]
    pub name: Option<String>,
    /// The group of yours to ask as, when the role lists requesters by group (default:
    /// the first of yours it lists). Not impersonation: you still ask as yourself.
    #[arg(long, value_name = "GROUP")]
    pub as_group: Option<String>,
    /// Follow the request until it is Active (exit 0) or ends without access (exit 4).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (Go duration, e.g. 10m; exit 1). Default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Print the created request as json, yaml or its name.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct VoteArgs {
    /// The AccessRequest.
    pub name: String,
    /// Vote on this extension of the request (its id, as `describe` shows) rather than
    /// on the request.
    #[arg(long, value_name = "ID")]
    pub extension: Option<String>,
    /// A comment recorded with the vote.
    #[arg(long)]
    pub comment: Option<String>,
    /// The group of yours to vote as, when the role lists approvers by group (default:
    /// the first of yours it lists). Not impersonation.
    #[arg(long, value_name = "GROUP")]
    pub as_group: Option<String>,
    /// Print the request after the vote as json, yaml or its name.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The AccessRequest.
    pub name: String,
    /// Deny this extension of the request (its id) rather than the request.
    #[arg(long, value_name = "ID")]
    pub extension: Option<String>,
    /// Why (required for a denial; the requester sees it).
    #[arg(long, required = true)]
    pub comment: String,
    /// The group of yours to vote as. Not impersonation.
    #[arg(long, value_name = "GROUP")]
    pub as_group: Option<String>,
    /// Print as json, yaml or name(s) (as `kubectl get -o`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The AccessRequest.
    pub name: String,
    /// Why access ends early, for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    /// The group of yours to revoke as (an approver group, or system:masters). Not
    /// impersonation.
    #[arg(long, value_name = "GROUP")]
    pub as_group: Option<String>,
    /// Print as json, yaml or name(s) (as `kubectl get -o`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The break-glass AccessRequest.
    pub name: String,
    /// `Reviewed` (the use was justified) or `Flagged` (it needs a closer look: a
    /// Warning Event and a security alert).
    #[arg(long, value_parser = ["Reviewed", "Flagged"])]
    pub verdict: String,
    /// What you found (required to flag).
    #[arg(long)]
    pub comment: Option<String>,
    /// The group of yours to review as. Not impersonation.
    #[arg(long, value_name = "GROUP")]
    pub as_group: Option<String>,
    /// Print as json, yaml or name(s) (as `kubectl get -o`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// Your Active AccessRequest.
    pub name: String,
    /// How much longer, as a Go duration (30m, 1h), added to its current expiry.
    #[arg(long, value_parser = go_duration_text)]
    pub by: String,
    /// Why (checked as a request's reason is).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Print as json, yaml or name(s) (as `kubectl get -o`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only what you may approve or deny now.
    #[arg(long)]
    pub pending_for_me: bool,
    /// Only your own requests.
    #[arg(long)]
    pub mine: bool,
    /// Print as json, yaml or name(s) (as `kubectl get -o`).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The AccessRequest.
    pub name: String,
    /// The request object as json or yaml (or its name) instead of the page.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// An AccessRequest of yours, or an AccessRole (then: your Active request for it).
    pub target: String,
    /// The AWS profile of your own (base) credentials; default: the SDK's default chain.
    #[arg(long, value_name = "PROFILE")]
    pub source_profile: Option<String>,
}

#[derive(Debug, Args)]
pub struct AwsProfileArgs {
    /// An AccessRequest of yours, or an AccessRole.
    pub target: String,
    /// The profile's name (default: aws-jit-<target>).
    #[arg(long)]
    pub profile_name: Option<String>,
    /// The AWS profile of your own credentials, passed on to `credentials`.
    #[arg(long, value_name = "PROFILE")]
    pub source_profile: Option<String>,
}

/// A positive Go duration flag (`10m`, `1h30m`), read as the controller reads durations.
fn go_duration(value: &str) -> Result<std::time::Duration, String> {
    crate::policy::decide::parse_duration("duration", value).map_err(|e| e.to_string())
}

/// A positive Go duration flag, kept as written (the controller reads it again).
fn go_duration_text(value: &str) -> Result<String, String> {
    go_duration(value).map(|_| value.to_owned())
}

/// Runs one command; what it prints goes to stdout (progress of --wait to stderr).
pub async fn run(cli: Cli) -> Result<(), Error> {
    commands::run(cli).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// docs/plugin.md: exit 1 is "not authenticated" (an expired token, a wrong
    /// kubeconfig), exit 3 a refusal of who the caller is (RBAC, admission). A script
    /// that retries on 1 and gives up on 3 must not read a stale token as "forbidden".
    #[test]
    fn not_authenticated_is_an_error_not_a_refusal() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: "Unauthorized".into(),
                message: "Unauthorized".into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            super::Error::kube("x", api(401)).exit_code(),
            super::exit::ERROR
        );
        assert_eq!(
            super::Error::kube("x", api(403)).exit_code(),
            super::exit::REFUSED
        );
        assert_eq!(
            super::Error::kube("x", api(404)).exit_code(),
            super::exit::NOT_FOUND
        );
    }

    #[test]
    fn the_cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// plugins/jit.yaml installs this binary, at this crate's version, on every
    /// platform it lists, from an archive whose URL and sha256 a release fills in.
    #[test]
    fn the_krew_manifest_installs_this_binary() {
        let manifest: serde_json::Value =
            serde_yaml::from_str(include_str!("../../plugins/jit.yaml")).expect("yaml");
        assert_eq!(manifest["kind"], "Plugin");
        assert_eq!(manifest["metadata"]["name"], "jit");
        assert_eq!(
            manifest["spec"]["version"],
            format!("v{}", env!("CARGO_PKG_VERSION"))
        );
        let platforms = manifest["spec"]["platforms"].as_array().expect("platforms");
        assert!(platforms.len() >= 4);
        for p in platforms {
            assert_eq!(p["bin"], "kubectl-jit", "{p}");
            let sha = p["sha256"].as_str().expect("sha256");
            assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()));
            let uri = p["uri"].as_str().expect("uri");
            let os = p["selector"]["matchLabels"]["os"].as_str().expect("os");
            let arch = p["selector"]["matchLabels"]["arch"].as_str().expect("arch");
            assert!(
                uri.ends_with(&format!(
                    "kubectl-jit-v{}-{os}-{arch}.tar.gz",
                    env!("CARGO_PKG_VERSION")
                )),
                "{uri}"
            );
            let files: Vec<&str> = p["files"]
                .as_array()
                .expect("files")
                .iter()
                .filter_map(|f| f["from"].as_str())
                .collect();
            assert_eq!(files, ["kubectl-jit", "LICENSE"]);
        }
    }
}
