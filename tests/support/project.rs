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
    succeeded(&kube.kubectl(
        User::Admin,
        &["apply", "-f", &path("tests/fixtures/admission-params.yaml")],
    ));
    // One install's policies per namespace: the chart tests' releases serve namespaces
    // of their own (labelled so by the admin), with policies that name their identities.
    for policy in ["create", "status", "finalizer", "delete"] {
        succeeded(&kube.kubectl(
            User::Admin,
            &[
                "patch",
                "validatingadmissionpolicybinding",
                &format!("aws-jit-accessrequest-{policy}"),
                "--type=merge",
                "-p",
                r#"{"spec":{"matchResources":{"namespaceSelector":{"matchExpressions":[{"key":"aws-jit.dev/chart-release","operator":"DoesNotExist"}]}}}}"#,
            ],
        ));
    }
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
    let probes: [(&str, User, Vec<&str>); 4] = [
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
        (
            "delete policy",
            User::Bob,
            vec![
                "delete",
                "accessrequest",
                "probe",
                "-n",
                ns,
                "--dry-run=server",
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
            // Refused by the rule itself, not for want of its parameter (the policy's
            // ConfigMap may reach the apiserver's informer after the policy).
            if !out.status.success()
                && said.contains("ValidatingAdmissionPolicy")
                && !said.contains("failed to configure binding")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {what} is not enforced after {READY_TIMEOUT:?}: {said}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // And the parameter is the test stack's: the trusted submitter is let through.
    loop {
        let out = kube.kubectl_stdin(
            User::GitOps,
            &["create", "--dry-run=server", "-n", ns, "-f", "-"],
            &forged,
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admission parameter is not in force after {READY_TIMEOUT:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
