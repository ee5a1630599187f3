//! How GitOps tools judge AccessRequests: kstatus (`sigs.k8s.io/cli-utils`, what Flux
//! uses) and Argo CD's Lua health check, run by the Go tool `hack/tools/kstatus`
//! (`AWS_JIT_KSTATUS`, built by `hack/ensure-tools.sh`) on objects as JSON.
//! Self-contained: also included by tests/gitops_health.rs.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// One tool's verdict.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub status: String,
    pub message: String,
}

/// Both verdicts on one object, in input order.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub resource_version: String,
    /// kstatus's `status.Compute`: InProgress, Current, Failed, Terminating, ...
    pub kstatus: Verdict,
    /// Argo CD's: Healthy, Progressing, Degraded, Suspended, ...
    pub argocd: Verdict,
}

/// The shipped Argo CD health check.
pub fn health_lua() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/gitops/argocd/health.lua")
}

/// kstatus and the shipped Lua check on `input` (JSON or YAML: one object, a list, or
/// several documents). Panics with the tool's message if it cannot judge them.
pub fn judge(input: &str) -> Vec<Health> {
    let tool = std::env::var_os("AWS_JIT_KSTATUS").unwrap_or_else(|| {
        panic!("AWS_JIT_KSTATUS is not set: run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)")
    });
    let mut child = Command::new(&tool)
        .arg("-argocd-health")
        .arg(health_lua())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.to_string_lossy()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    // From another thread: the tool may write before it has read everything.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for kstatus");
    writer.join().expect("stdin writer");
    assert!(
        out.status.success(),
        "kstatus failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kstatus printed something else than its verdicts ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// [`judge`] on one object.
pub fn judge_one(object: &serde_json::Value) -> Health {
    let mut all = judge(&object.to_string());
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// What GitOps health must say of a request in `phase` (as written by the operator,
/// without a failing revoke): (kstatus, Argo CD).
pub fn expected(phase: Option<&str>) -> (&'static str, &'static str) {
    match phase {
        Some("Pending" | "Approved") => ("InProgress", "Progressing"),
        Some("AwaitingApproval" | "Scheduled") => ("InProgress", "Suspended"),
        Some("Active") => ("Current", "Healthy"),
        Some("Expired" | "Revoked" | "Denied") => ("Current", "Healthy"),
        Some("Rejected" | "Failed") => ("Failed", "Degraded"),
        // Not yet taken up: kstatus reads an object without conditions as Current
        // (nothing it can wait on); Argo CD waits.
        None => ("Current", "Progressing"),
        Some(other) => panic!("unknown phase {other}"),
    }
}
