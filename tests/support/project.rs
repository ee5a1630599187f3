//! Installs the project's own manifests into the stack once per process: the generated
//! CRDs, RBAC roles, admission policies, and the test users' bindings. Returns only when
//! the CRDs are Established and every admission policy is being enforced (policies load
//! asynchronously; a test that ran earlier could pass for the wrong reason).
use std::time::{Duration, Instant};

use super::kube::{KubeStack, User};
use super::succeeded;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn install(kube: &KubeStack) {
    let path = |p: &str| format!("{ROOT}/{p}");
    succeeded(&kube.kubectl(User::Admin, &["apply", "-f", &path("crds/aws-jit.yaml")]));
    succeeded(&kube.kubectl(
        User::Admin,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/accessrequests.aws-jit.io",
            "crd/accessroles.aws-jit.io",
        ],
    ));
    succeeded(&kube.kubectl(
        User::Admin,
        &["apply", "-f", &path("tests/fixtures/bindings.yaml")],
    ));
    succeeded(&kube.kubectl(User::Admin, &["apply", "-f", &path("deploy/rbac/")]));
    succeeded(&kube.kubectl(User::Admin, &["apply", "-f", &path("deploy/admission/")]));
    wait_for_policies(kube);
}

/// Probes each policy with a server-side dry run until it refuses what it must refuse.
fn wait_for_policies(kube: &KubeStack) {
    let ns = "aws-jit-probe";
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: erin-edits\n  namespace: {ns}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'test:request-editor'}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: erin}}]\n---\n\
             apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: probe\n  namespace: {ns}\n  finalizers: [aws-jit.io/revoke]\n\
             spec: {{role: probe, requester: alice, reason: probe}}\n"
        ),
    ));
    let probes: [(&str, User, Vec<&str>); 3] = [
        (
            "create policy",
            User::Alice,
            vec!["create", "--dry-run=server", "-n", ns, "-f", "-"],
        ),
        (
            "status policy",
            User::Carol,
            vec![
                "patch",
                "accessrequest",
                "probe",
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "--dry-run=server",
                "-p",
                r#"{"status":{"phase":"Active"}}"#,
            ],
        ),
        (
            "finalizer policy",
            User::Erin,
            vec![
                "patch",
                "accessrequest",
                "probe",
                "-n",
                ns,
                "--type=merge",
                "--dry-run=server",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        ),
    ];
    let forged = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: forged\n  namespace: {ns}\n\
         spec: {{role: probe, requester: bob, reason: probe}}\n"
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    for (what, user, args) in probes {
        loop {
            let out = kube.kubectl_stdin(user, &args, &forged);
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            if !out.status.success() && said.contains("ValidatingAdmissionPolicy") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {what} is not enforced after {READY_TIMEOUT:?}: {said}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
