//! The test stack itself: the apiserver authenticates each static-token user as the
//! rest of the suite assumes, RBAC is enforced, ValidatingAdmissionPolicy is served and
//! enforced, and service-account tokens can be minted.
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

use crate::support::kube::{KubeStack, User};
use crate::support::{stack, unique, wait::eventually};

fn kube() -> &'static KubeStack {
    &stack().kube
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (username, groups) from `kubectl auth whoami -o json`, run with `extra` args.
fn whoami(user: User, extra: &[&str]) -> (String, Vec<String>) {
    let mut args = extra.to_vec();
    args.extend(["auth", "whoami", "-o", "json"]);
    let out = kube().kubectl(user, &args);
    assert!(
        out.status.success(),
        "kubectl auth whoami as {user:?} failed: {}",
        text(&out.stderr)
    );
    let review: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("whoami prints JSON");
    let info = &review["status"]["userInfo"];
    let name = info["username"].as_str().unwrap_or_default().to_owned();
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (name, groups)
}

#[tokio::test]
async fn every_user_is_authenticated_as_named() {
    for user in User::ALL {
        let (name, groups) = whoami(user, &[]);
        assert_eq!(name, user.name(), "username of {user:?}");
        for group in user.groups().iter().chain(&["system:authenticated"]) {
            assert!(
                groups.iter().any(|g| g == group),
                "{user:?} lacks group {group}: {groups:?}"
            );
        }
    }

    // The same through kube::Client, built from the user's kubeconfig.
    let review = Api::<SelfSubjectReview>::all(kube().client(User::Carol).await)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview as carol");
    let info = review
        .status
        .and_then(|s| s.user_info)
        .expect("SelfSubjectReview has userInfo");
    assert_eq!(info.username.as_deref(), Some("carol"));
    assert!(info.groups.unwrap_or_default().contains(&"sre".to_owned()));
}

#[tokio::test]
async fn rbac_is_enforced() {
    let out = kube().kubectl(
        User::Alice,
        &["auth", "can-i", "list", "secrets", "--all-namespaces"],
    );
    assert_eq!(text(&out.stdout).trim(), "no", "alice can-i list secrets");
    assert!(!out.status.success(), "can-i exits non-zero on no");

    let denied = Api::<Secret>::all(kube().client(User::Alice).await)
        .list(&ListParams::default())
        .await;
    match denied {
        Err(kube::Error::Api(status)) if status.is_forbidden() => {}
        other => panic!("alice listing secrets: expected Forbidden, got {other:?}"),
    }

    // The positive control: the same list as admin works.
    Api::<Secret>::all(kube().client(User::Admin).await)
        .list(&ListParams::default())
        .await
        .expect("admin lists secrets");
}

#[tokio::test]
async fn validating_admission_policy_is_enforced() {
    let k = kube();
    let out = k.kubectl(
        User::Admin,
        &[
            "get",
            "validatingadmissionpolicies.v1.admissionregistration.k8s.io",
        ],
    );
    assert!(
        out.status.success(),
        "list validatingadmissionpolicies: {}",
        text(&out.stderr)
    );

    // A policy bound to one fresh namespace: ConfigMaps labelled `blocked` are denied.
    let ns = k.create_namespace("vap").await;
    let policy = unique("stack-test-policy");
    let manifests = format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}}
  validations:
  - expression: "!has(object.metadata.labels) || !('blocked' in object.metadata.labels)"
    message: stack test policy says no
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"#
    );
    let out = k.kubectl_stdin(User::Admin, &["apply", "-f", "-"], &manifests);
    assert!(out.status.success(), "apply policy: {}", text(&out.stderr));

    // The policy reaches the admission plugin asynchronously (informers, type checking).
    let mut n = 0;
    eventually("the policy to deny a labelled ConfigMap", Duration::from_secs(30), || {
        n += 1;
        let cm = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"blocked-{n}\",\"namespace\":\"{ns}\",\"labels\":{{\"blocked\":\"yes\"}}}}}}"
        );
        let out = k.kubectl_stdin(User::Admin, &["create", "-f", "-"], &cm);
        let stderr = text(&out.stderr);
        let result = if out.status.success() {
            Err("created (policy not active yet)".to_owned())
        } else if stderr.contains("stack test policy says no") {
            Ok(())
        } else {
            Err(stderr)
        };
        async move { result }
    })
    .await;

    // Only what the policy matches is denied.
    let out = k.kubectl(
        User::Admin,
        &[
            "create",
            "configmap",
            "plain",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
    );
    assert!(
        out.status.success(),
        "unlabelled ConfigMap: {}",
        text(&out.stderr)
    );

    let out = k.kubectl(
        User::Admin,
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &policy,
        ],
    );
    assert!(out.status.success(), "delete policy: {}", text(&out.stderr));
}

#[tokio::test]
async fn service_account_tokens_can_be_minted() {
    let k = kube();
    let ns = k.create_namespace("sa").await;
    let out = k.kubectl(
        User::Admin,
        &["create", "serviceaccount", "robot", "-n", &ns],
    );
    assert!(out.status.success(), "create sa: {}", text(&out.stderr));
    let out = k.kubectl(User::Admin, &["create", "token", "robot", "-n", &ns]);
    assert!(out.status.success(), "create token: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // --token overrides the kubeconfig's user.
    let (name, groups) = whoami(User::Admin, &["--token", &token]);
    assert_eq!(name, format!("system:serviceaccount:{ns}:robot"));
    assert!(groups.contains(&format!("system:serviceaccounts:{ns}")));
}
