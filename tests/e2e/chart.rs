//! The Helm chart (`charts/aws-jit/`) on the real stack, with helm built from Go modules
//! like the other binaries: lint and schema, a server-side dry run of what it renders,
//! an install whose ServiceAccount runs the real `aws-jit` binary (outside a pod: no
//! kubelet runs here) through a request's whole life, least privilege checked with
//! `kubectl auth can-i`, and an uninstall whose pre-delete drain revokes what is active.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use aws_jit::crd::{AccessRequest, FINALIZER, Phase};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;

use crate::controller::ACCOUNT;
use crate::support::aws::AwsOutputs;
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded, unique};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WAIT: Duration = Duration::from_secs(60);

fn chart_dir() -> PathBuf {
    Path::new(ROOT).join("charts/aws-jit")
}

fn ci_values() -> String {
    format!("{ROOT}/charts/aws-jit/ci/test-values.yaml")
}

/// Helm's own state (cache, config, data) in a directory of this test process.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("aws-jit-helm-")
            .tempdir()
            .expect("helm home")
            .keep();
        crate::support::procs::remove_at_exit(dir.clone());
        dir
    })
}

/// The Go-built helm (`hack/ensure-tools.sh`), found where the other binaries are.
fn helm_command(args: &[&str]) -> Command {
    let bin_dir = std::env::var_os("AWS_JIT_BIN_DIR")
        .map(PathBuf::from)
        .expect("AWS_JIT_BIN_DIR is not set: run `eval \"$(hack/ensure-tools.sh)\"` first");
    let helm = bin_dir.join("helm");
    assert!(helm.is_file(), "no helm in {}", bin_dir.display());
    let home = helm_home();
    let mut cmd = Command::new(helm);
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn helm(args: &[&str]) -> Output {
    helm_command(args).output().expect("run helm")
}

/// helm against the stack, as the admin.
fn helm_admin(args: &[&str]) -> Output {
    let kubeconfig = stack().kube.kubeconfig(User::Admin);
    let mut all: Vec<&str> = args.to_vec();
    let kc = kubeconfig.to_string_lossy().into_owned();
    all.extend(["--kubeconfig", &kc]);
    helm(&all)
}

/// `--set` values from a deployed template's outputs (what the README tells users).
fn aws_values(aws: &AwsOutputs, watch_ns: &str) -> Vec<String> {
    [
        ("aws.region", crate::support::aws::REGION),
        ("aws.stateMachineArn", &aws.state_machine_arn),
        ("aws.cleanupStateMachineArn", &aws.cleanup_state_machine_arn),
        ("aws.requestQueueUrl", &aws.request_queue_url),
        ("aws.requestDeadLetterQueueUrl", &aws.request_dlq_url),
        ("aws.workQueueUrl", &aws.work_queue_url),
        ("aws.workDeadLetterQueueUrl", &aws.work_dlq_url),
        ("aws.alertQueueUrl", &aws.alert_queue_url),
        ("aws.alertDeadLetterQueueUrl", &aws.alert_dlq_url),
        ("controller.watchNamespace", watch_ns),
        ("controller.pollInterval", "1s"),
    ]
    .iter()
    .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
    .collect()
}

fn render(release: &str, ns: &str, extra: &[&str]) -> String {
    let chart = chart_dir().to_string_lossy().into_owned();
    let values = ci_values();
    let mut args = vec!["template", release, &chart, "-n", ns, "-f", &values];
    args.extend(extra);
    succeeded(&helm(&args))
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn chart_crds_are_the_repositorys_crds() {
    let repo = std::fs::read(format!("{ROOT}/crds/aws-jit.yaml")).expect("crds/aws-jit.yaml");
    let path = chart_dir().join("crds/aws-jit.yaml");
    let meta = std::fs::symlink_metadata(&path).expect("the chart's crds/aws-jit.yaml");
    assert!(
        meta.file_type().is_file(),
        "a symlink is lost when helm packages the chart: copy crds/aws-jit.yaml"
    );
    assert!(
        std::fs::read(&path).expect("read") == repo,
        "charts/aws-jit/crds/aws-jit.yaml differs from crds/aws-jit.yaml: cp crds/aws-jit.yaml charts/aws-jit/crds/"
    );
    let copy = std::fs::read(chart_dir().join("files/admission-policies.yaml")).expect("read");
    assert!(
        copy == std::fs::read(format!("{ROOT}/deploy/admission/policies.yaml")).expect("read"),
        "charts/aws-jit/files/admission-policies.yaml differs from deploy/admission/policies.yaml: copy it"
    );
}

#[test]
fn chart_lints_strictly_and_its_schema_refuses_bad_values() {
    let chart = chart_dir().to_string_lossy().into_owned();
    let values = ci_values();
    succeeded(&helm(&["lint", "--strict", &chart]));
    succeeded(&helm(&["lint", "--strict", &chart, "-f", &values]));
    for (bad, says) in [
        ("replicaCount=two", "/replicaCount"),
        ("controller.pollInterval=soon", "/controller/pollInterval"),
        (
            "controller.trustPolicySizeLimit=10000",
            "/controller/trustPolicySizeLimit",
        ),
        ("aws.stateMachineArn=not-an-arn", "/aws/stateMachineArn"),
        ("replicas=2", "replicas"),
        ("relay.replicaCount=0", "/relay/replicaCount"),
        ("networkPolicy.enabled=maybe", "/networkPolicy/enabled"),
        (
            "admissionPolicies.trustedSubmitters.users[0]=a\\,b",
            "/admissionPolicies/trustedSubmitters/users/0",
        ),
    ] {
        let out = helm(&["lint", "--strict", &chart, "-f", &values, "--set", bad]);
        refused(&out, says);
    }
    // Rendering without the template's outputs says what is missing.
    let out = helm(&["template", "x", &chart]);
    refused(&out, "aws.region is required");
    let out = helm(&[
        "template",
        "x",
        &chart,
        "-f",
        &values,
        "--set",
        "relay.slack.existingSecret=",
    ]);
    refused(&out, "relay.slack.existingSecret is required");
}

/// The rendered admission policies are deploy/admission's, renamed after the release and
/// bound to the release's parameter, which names the release's own identities; the
/// rendered RBAC rules are deploy/rbac/operator.yaml's.
#[test]
fn chart_admission_policies_and_rbac_match_deploy() {
    let rendered = docs(&render("rel", "ops", &[]));
    let deployed = docs(
        &std::fs::read_to_string(format!("{ROOT}/deploy/admission/policies.yaml")).expect("read"),
    );
    let admission: Vec<&Value> = rendered
        .iter()
        .filter(|d| d["apiVersion"] == "admissionregistration.k8s.io/v1")
        .collect();
    assert_eq!(admission.len(), deployed.len());
    for want in &deployed {
        let name = want["metadata"]["name"].as_str().expect("name");
        let renamed = format!("rel-{name}");
        let got = find(&rendered, want["kind"].as_str().expect("kind"), &renamed);
        assert_eq!(
            got["spec"]["validations"], want["spec"]["validations"],
            "{name}"
        );
        let mut got_spec = got["spec"].clone();
        if let Some(policy) = got_spec.get_mut("policyName") {
            assert_eq!(
                *policy,
                format!(
                    "rel-{}",
                    want["spec"]["policyName"].as_str().expect("policyName")
                )
            );
            *policy = want["spec"]["policyName"].clone();
        }
        if let Some(param) = got_spec.get_mut("paramRef") {
            assert_eq!(param["name"], "rel-aws-jit-admission", "{name}");
            assert_eq!(param["namespace"], "ops", "{name}");
            assert_eq!(param["parameterNotFoundAction"], "Deny", "{name}");
            *param = want["spec"]["paramRef"].clone();
        }
        assert_eq!(
            got_spec, want["spec"],
            "{name}: the chart's spec differs from deploy/admission"
        );
        assert_eq!(
            got["metadata"]["labels"]["app.kubernetes.io/instance"],
            "rel"
        );
    }
    // The parameter: deploy/admission/params.yaml's keys, with the release's identities.
    let params = docs(
        &std::fs::read_to_string(format!("{ROOT}/deploy/admission/params.yaml")).expect("read"),
    );
    let keys = |v: &Value| -> Vec<String> {
        v["data"]
            .as_object()
            .expect("data")
            .keys()
            .cloned()
            .collect()
    };
    let config = find(&rendered, "ConfigMap", "rel-aws-jit-admission");
    assert_eq!(keys(config), keys(&params[0]));
    assert_eq!(config["metadata"]["namespace"], "ops");
    assert_eq!(
        config["data"]["operators"],
        "system:serviceaccount:ops:rel-aws-jit"
    );
    assert_eq!(
        config["data"]["relays"],
        "system:serviceaccount:ops:rel-aws-jit-relay"
    );
    assert_eq!(config["data"]["trustedSubmitters"], "");
    assert_eq!(config["data"]["adminGroups"], "system:masters");
    let custom = docs(&render(
        "rel",
        "ops",
        &[
            "--set",
            "admissionPolicies.trustedSubmitters.users={system:serviceaccount:argocd:argocd-application-controller,flux}",
            "--set",
            "admissionPolicies.trustedSubmitters.groups={gitops}",
            "--set",
            "admissionPolicies.adminGroups={platform-admins}",
            "--set",
            "relay.enabled=false",
        ],
    ));
    let config = find(&custom, "ConfigMap", "rel-aws-jit-admission");
    assert_eq!(
        config["data"]["trustedSubmitters"],
        "system:serviceaccount:argocd:argocd-application-controller,flux"
    );
    assert_eq!(config["data"]["trustedSubmitterGroups"], "gitops");
    assert_eq!(config["data"]["adminGroups"], "platform-admins");
    assert_eq!(config["data"]["relays"], "", "no relay, no relay identity");

    let operator =
        docs(&std::fs::read_to_string(format!("{ROOT}/deploy/rbac/operator.yaml")).expect("read"));
    let deployed_rules = |kind: &str, name: &str| -> Value {
        operator
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/rbac/operator.yaml"))["rules"]
            .clone()
    };
    for (kind, name) in [
        ("ClusterRole", "aws-jit:operator"),
        ("Role", "aws-jit:operator"),
        ("ClusterRole", "aws-jit:relay"),
    ] {
        let got = find(&rendered, kind, &format!("rel-{name}"));
        assert_eq!(
            got["rules"],
            deployed_rules(kind, name),
            "{kind} {name} rules differ from deploy/rbac/operator.yaml"
        );
    }
    let role = find(&rendered, "Role", "rel-aws-jit:operator");
    assert_eq!(role["metadata"]["namespace"], "ops");
    for (kind, name, sa) in [
        ("ClusterRoleBinding", "rel-aws-jit:operator", "rel-aws-jit"),
        ("RoleBinding", "rel-aws-jit:operator", "rel-aws-jit"),
        (
            "ClusterRoleBinding",
            "rel-aws-jit:relay",
            "rel-aws-jit-relay",
        ),
    ] {
        let binding = find(&rendered, kind, name);
        assert_eq!(binding["subjects"][0]["name"], sa, "{kind} {name}");
        assert_eq!(binding["subjects"].as_array().map(Vec::len), Some(1));
    }
    assert!(
        !rendered
            .iter()
            .any(|d| d["metadata"]["name"] == "rel-aws-jit:operator-requests"
                || d["metadata"]["name"] == "rel-aws-jit:relay-requests"),
        "no namespaced request Role when every namespace is watched"
    );

    // Watching one namespace: the same rules, split. AccessRoles (cluster-scoped) stay
    // in the ClusterRoles; the request rules move to Roles in the watched namespace. The
    // admission bindings match that namespace only.
    let scoped = docs(&render(
        "rel",
        "ops",
        &["--set", "controller.watchNamespace=team-a"],
    ));
    for (who, sa) in [("operator", "rel-aws-jit"), ("relay", "rel-aws-jit-relay")] {
        let cluster_rules =
            find(&scoped, "ClusterRole", &format!("rel-aws-jit:{who}"))["rules"].clone();
        let requests = find(&scoped, "Role", &format!("rel-aws-jit:{who}-requests"));
        assert_eq!(requests["metadata"]["namespace"], "team-a");
        let binding = find(
            &scoped,
            "RoleBinding",
            &format!("rel-aws-jit:{who}-requests"),
        );
        assert_eq!(binding["metadata"]["namespace"], "team-a");
        assert_eq!(binding["subjects"][0]["name"], sa);
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
        let want = deployed_rules("ClusterRole", &format!("aws-jit:{who}"))
            .as_array()
            .expect("rules")
            .clone();
        let mut joined = cluster_rules.as_array().expect("rules").clone();
        joined.extend(requests["rules"].as_array().expect("rules").iter().cloned());
        assert_eq!(
            joined, want,
            "{who}: the split rules are deploy's, no more, no less"
        );
        assert_eq!(
            cluster_rules[0]["resources"],
            serde_json::json!(["accessroles"])
        );
        // The relay also reads SlackIdentities (cluster-scoped: who a Slack user is).
        let cluster_only: Vec<String> = cluster_rules
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["resources"].to_string())
            .collect();
        let expected: &[&str] = match who {
            "relay" => &[r#"["accessroles"]"#, r#"["slackidentities"]"#],
            _ => &[r#"["accessroles"]"#],
        };
        assert_eq!(cluster_only, expected, "{who}");
    }
    for d in scoped
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
    {
        assert_eq!(
            d["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"],
            serde_json::json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]),
            "{}",
            d["metadata"]["name"]
        );
    }
}

/// The NetworkPolicies: on by default, ingress only to the metrics ports from the
/// configured peers and to the interactions port when its Service is on; egress open
/// unless rules are given; nothing rendered when off.
#[test]
fn chart_network_policies_allow_only_what_is_served() {
    let rendered = docs(&render("rel", "ops", &[]));
    let controller = find(&rendered, "NetworkPolicy", "rel-aws-jit");
    let deploy = find(&rendered, "Deployment", "rel-aws-jit");
    assert_eq!(
        controller["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        controller["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ingress = controller["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([
            {"podSelector": {}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ])
    );
    let relay = find(&rendered, "NetworkPolicy", "rel-aws-jit-relay");
    let relay_deploy = find(&rendered, "Deployment", "rel-aws-jit-relay");
    assert_eq!(
        relay["spec"]["podSelector"]["matchLabels"],
        relay_deploy["spec"]["selector"]["matchLabels"]
    );
    let ingress = relay["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1, "Socket Mode: no interactions port");
    assert_eq!(ingress[0]["ports"][0]["port"], 8082);

    let rendered = docs(&render(
        "rel",
        "ops",
        &[
            "--set",
            "relay.interactions.enabled=true",
            "--set",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=observability",
            "--set",
            "networkPolicy.interactionsFrom[0].namespaceSelector.matchLabels.ingress=yes",
            "--set",
            "networkPolicy.egress[0].ports[0].port=443",
        ],
    ));
    let relay = find(&rendered, "NetworkPolicy", "rel-aws-jit-relay");
    assert_eq!(
        relay["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(
        relay["spec"]["egress"],
        serde_json::json!([{"ports": [{"port": 443}]}])
    );
    let ingress = relay["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2);
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"team": "observability"}}}])
    );
    assert_eq!(ingress[1]["ports"][0]["port"], 8081);
    assert_eq!(
        ingress[1]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"ingress": "yes"}}}])
    );

    let off = docs(&render(
        "rel",
        "ops",
        &["--set", "networkPolicy.enabled=false"],
    ));
    assert!(
        !off.iter().any(|d| d["kind"] == "NetworkPolicy"),
        "networkPolicy.enabled=false renders none"
    );
    let no_relay = docs(&render("rel", "ops", &["--set", "relay.enabled=false"]));
    let names: Vec<&Value> = no_relay
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .map(|d| &d["metadata"]["name"])
        .collect();
    assert_eq!(names, ["rel-aws-jit"]);
}

/// What the pod spec promises: hardened containers, probes on the metrics ports, the
/// environment the binary reads, Slack credentials only from the Secret.
#[test]
fn chart_deployment_is_hardened_and_wired() {
    let rendered = docs(&render("rel", "ops", &[]));
    let deploy = find(&rendered, "Deployment", "rel-aws-jit");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "rel-aws-jit");
    // The relay runs as its own ServiceAccount, so in a Deployment of its own.
    let relay_deploy = find(&rendered, "Deployment", "rel-aws-jit-relay");
    let relay_pod = &relay_deploy["spec"]["template"]["spec"];
    assert_eq!(relay_pod["serviceAccountName"], "rel-aws-jit-relay");
    assert_ne!(
        deploy["spec"]["selector"]["matchLabels"], relay_deploy["spec"]["selector"]["matchLabels"],
        "neither Deployment selects the other's pods"
    );
    assert_eq!(relay_deploy["spec"]["replicas"], 2);
    for pod in [pod, relay_pod] {
        // Longer than a queue long poll (20 s), so a rollout stops the pod cleanly.
        assert_eq!(pod["terminationGracePeriodSeconds"], 45);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }
    let mut containers = pod["containers"].as_array().expect("containers").clone();
    containers.extend(
        relay_pod["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .cloned(),
    );
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["controller", "relay"], "one container per pod");
    for c in &containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
        assert_eq!(
            c["image"], containers[0]["image"],
            "one image for both containers"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    }
    let env = |c: &Value| -> BTreeMap<String, Value> {
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().expect("name").to_string(), e.clone()))
            .collect()
    };
    let controller = env(&containers[0]);
    for name in [
        "AWS_REGION",
        "AWS_JIT_STATE_MACHINE_ARN",
        "AWS_JIT_CLEANUP_STATE_MACHINE_ARN",
        "AWS_JIT_REQUEST_QUEUE_URL",
        "AWS_JIT_REQUEST_DLQ_URL",
        "AWS_JIT_WORK_QUEUE_URL",
        "AWS_JIT_WORK_DLQ_URL",
        "AWS_JIT_ALERT_QUEUE_URL",
        "POD_NAMESPACE",
        "POD_NAME",
        "AWS_JIT_POLL_INTERVAL",
        "AWS_JIT_TRUST_POLICY_SIZE_LIMIT",
        "AWS_JIT_METRICS_ADDR",
        "AWS_JIT_LEADER_ELECTION",
        "AWS_JIT_LEASE_NAME",
        "RUST_LOG",
    ] {
        assert!(controller.contains_key(name), "controller has no {name}");
    }
    assert_eq!(controller["AWS_JIT_METRICS_ADDR"]["value"], "0.0.0.0:8080");
    assert_eq!(containers[0]["ports"][0]["name"], "metrics");
    assert_eq!(containers[0]["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(
        controller["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let relay = env(&containers[1]);
    assert_eq!(relay["AWS_JIT_METRICS_ADDR"]["value"], "0.0.0.0:8082");
    assert_eq!(
        relay["SLACK_BOT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
        "aws-jit-slack"
    );
    assert_eq!(
        relay["SLACK_APP_TOKEN"]["valueFrom"]["secretKeyRef"]["key"],
        "SLACK_APP_TOKEN"
    );
    assert!(
        !relay.contains_key("SLACK_SIGNING_SECRET"),
        "Socket Mode needs no signing secret"
    );
    assert!(!relay.contains_key("AWS_JIT_INTERACTIONS_ADDR"));
    assert!(
        !rendered
            .iter()
            .any(|d| d["metadata"]["name"] == "rel-aws-jit-interactions")
    );
    // IRSA: each role annotation lands on its own ServiceAccount.
    let sa = find(&rendered, "ServiceAccount", "rel-aws-jit");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/aws-jit-operator"
    );
    let relay_sa = find(&rendered, "ServiceAccount", "rel-aws-jit-relay");
    assert_eq!(
        relay_sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/aws-jit-relay"
    );
    // The metrics Services select each its Deployment's pods.
    let metrics = find(&rendered, "Service", "rel-aws-jit-metrics");
    assert_eq!(
        metrics["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let relay_metrics = find(&rendered, "Service", "rel-aws-jit-relay-metrics");
    assert_eq!(
        relay_metrics["spec"]["selector"],
        relay_deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        relay_metrics["spec"]["ports"][0]["targetPort"],
        "relay-metrics"
    );
    // The relay's name must not be the controller's: that would hand it the controller's
    // rights.
    let chart = chart_dir().to_string_lossy().into_owned();
    let values = ci_values();
    refused(
        &helm(&[
            "template",
            "rel",
            &chart,
            "-f",
            &values,
            "--set",
            "relay.serviceAccount.name=rel-aws-jit",
        ]),
        "relay.serviceAccount.name must differ from serviceAccount.name",
    );
    // Two replicas by default, so a PodDisruptionBudget; the drain hook is pre-delete.
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pdb = find(&rendered, "PodDisruptionBudget", "rel-aws-jit");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let pdb = find(&rendered, "PodDisruptionBudget", "rel-aws-jit-relay");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        relay_deploy["spec"]["selector"]["matchLabels"]
    );
    let job = find(&rendered, "Job", "rel-aws-jit-drain");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["drain"])
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["serviceAccountName"],
        "rel-aws-jit"
    );

    // The HTTP interactivity endpoint, when asked for: port, Service, signing secret.
    let rendered = docs(&render(
        "rel",
        "ops",
        &[
            "--set",
            "relay.interactions.enabled=true",
            "--set",
            "replicaCount=1",
            "--set",
            "relay.replicaCount=1",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    ));
    let deploy = find(&rendered, "Deployment", "rel-aws-jit-relay");
    let relay = &deploy["spec"]["template"]["spec"]["containers"][0];
    let relay_env = env(relay);
    assert_eq!(
        relay_env["AWS_JIT_INTERACTIONS_ADDR"]["value"],
        "0.0.0.0:8081"
    );
    assert!(relay_env.contains_key("SLACK_SIGNING_SECRET"));
    let svc = find(&rendered, "Service", "rel-aws-jit-interactions");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "interactions");
    assert_eq!(
        svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"],
        "the interactions Service reaches the relay's pods"
    );
    assert!(
        !rendered.iter().any(|d| d["kind"] == "PodDisruptionBudget"),
        "one replica: no PDB"
    );
    let monitor = find(&rendered, "ServiceMonitor", "rel-aws-jit");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

/// `helm upgrade --reuse-values` from a release older than a value keeps the old values,
/// without the new keys: the chart still renders, with the safe defaults (the relay's
/// own ServiceAccount, the admin group, no NetworkPolicy rather than a broken one).
#[test]
fn chart_renders_the_values_of_an_older_release() {
    let rendered = docs(&render(
        "rel",
        "ops",
        &[
            "--set",
            "relay.serviceAccount=null",
            "--set",
            "relay.replicaCount=null",
            "--set",
            "networkPolicy=null",
            "--set",
            "admissionPolicies.trustedSubmitters=null",
            "--set",
            "admissionPolicies.adminGroups=null",
        ],
    ));
    let relay = find(&rendered, "Deployment", "rel-aws-jit-relay");
    assert_eq!(
        relay["spec"]["template"]["spec"]["serviceAccountName"],
        "rel-aws-jit-relay"
    );
    assert_eq!(relay["spec"]["replicas"], 2);
    find(&rendered, "ServiceAccount", "rel-aws-jit-relay");
    let config = find(&rendered, "ConfigMap", "rel-aws-jit-admission");
    assert_eq!(config["data"]["adminGroups"], "system:masters");
    assert_eq!(config["data"]["trustedSubmitters"], "");
    assert!(!rendered.iter().any(|d| d["kind"] == "NetworkPolicy"));
}

#[tokio::test]
async fn chart_renders_what_the_apiserver_accepts() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("chart-dry").await;
    let release = unique("dry");
    let yaml = render(&release, &ns, &["--set", "relay.interactions.enabled=true"]);
    let out = kube.kubectl_stdin(
        User::Admin,
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        &yaml,
    );
    let said = succeeded(&out);
    for what in [
        "deployment.apps/",
        "serviceaccount/",
        "clusterrole.rbac.authorization.k8s.io/",
        "role.rbac.authorization.k8s.io/",
        "validatingadmissionpolicy.admissionregistration.k8s.io/",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/",
        "poddisruptionbudget.policy/",
        "job.batch/",
        "service/",
        "configmap/",
        "networkpolicy.networking.k8s.io/",
    ] {
        assert!(said.contains(what), "no {what} in the dry run: {said}");
    }
    assert!(said.contains("(server dry run)"), "{said}");
}

/// One release of the chart on the stack, with a moto stack of its own and a
/// namespace for requests (the release's operator watches only that one).
struct Release {
    name: String,
    fullname: String,
    /// The release namespace: the operator's (token Secrets, the Lease).
    ns: String,
    /// Where the requests are.
    requests_ns: String,
    sdk: aws_config::SdkConfig,
    iam_role_name: String,
    access_role: String,
    dir: tempfile::TempDir,
    installed: bool,
}

impl Release {
    async fn install(prefix: &str) -> Release {
        let stack = stack();
        let ns = stack.kube.create_namespace(&format!("{prefix}-op")).await;
        let requests_ns = stack.kube.create_namespace(prefix).await;
        let aws = stack.aws.deploy(prefix).await;
        let sdk = stack.aws.sdk_config().await;
        let name = unique(prefix);
        // This release's admission policies, which name its identities, are the ones for
        // its namespace (the test stack's own leave it alone: tests/support/project.rs).
        succeeded(&stack.kube.kubectl(
            User::Admin,
            &[
                "label",
                "namespace",
                &requests_ns,
                &format!("aws-jit.dev/chart-release={name}"),
            ],
        ));
        let chart = chart_dir().to_string_lossy().into_owned();
        let values = ci_values();
        let mut args: Vec<String> = ["install", &name, &chart, "-n", &ns, "-f", &values]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(aws_values(&aws, &requests_ns));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let said = succeeded(&helm_admin(&args));
        assert!(said.contains("STATUS: deployed"), "{said}");
        let fullname = format!("{name}-aws-jit");
        wait_for_release_policies(&fullname, &requests_ns).await;
        // An IAM role with foreign statements, and an AccessRole for it.
        let (iam_role_name, arn) = crate::controller::create_iam_role(&sdk, prefix).await;
        let access_role = unique(prefix);
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {access_role}\nspec:\n\
             \x20 roleArn: {arn}\n  approvers: [{{user: carol}}, {{user: dave}}]\n  requesters: [{{user: alice}}]\n\
             \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT}:user/{{username}}'}}\n"
        );
        succeeded(
            &stack
                .kube
                .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml),
        );
        Release {
            name,
            fullname,
            ns,
            requests_ns,
            sdk,
            iam_role_name,
            access_role,
            dir: tempfile::tempdir().expect("temp dir"),
            installed: true,
        }
    }

    fn service_account(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.ns, self.fullname)
    }

    /// The relay's ServiceAccount (the chart's default name).
    fn relay_account(&self) -> String {
        format!("{}-relay", self.fullname)
    }

    /// A kubeconfig with a token minted for the chart's (controller) ServiceAccount.
    fn service_account_kubeconfig(&self) -> PathBuf {
        self.kubeconfig_for(&self.fullname)
    }

    /// A kubeconfig with a token minted for the release's ServiceAccount `sa`.
    fn kubeconfig_for(&self, sa: &str) -> PathBuf {
        let kube = &stack().kube;
        let token = succeeded(&kube.kubectl(
            User::Admin,
            &["create", "token", sa, "-n", &self.ns, "--duration=1h"],
        ));
        let ca = std::fs::read(kube.ca_file()).expect("ca");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stack", "cluster": {
                "server": kube.server(),
                "certificate-authority-data": k8s_openapi::ByteString(ca),
            }}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "stack", "user": "sa"}}],
            "current-context": "sa",
        });
        let path = self.dir.path().join(format!("kubeconfig-{sa}.yaml"));
        std::fs::write(&path, serde_json::to_vec(&config).expect("json"))
            .expect("write kubeconfig");
        path
    }

    /// A container's environment as the chart set it on the object in the apiserver
    /// (`kind`/`name`), with the downward API resolved as a kubelet would.
    fn container_env(&self, kind: &str, name: &str, container: &str) -> Vec<(String, String)> {
        let json = succeeded(&stack().kube.kubectl(
            User::Admin,
            &["get", kind, name, "-n", &self.ns, "-o", "json"],
        ));
        let obj: Value = serde_json::from_str(&json).expect("json");
        let c = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["name"] == container)
            .unwrap_or_else(|| panic!("no container {container} in {kind} {name}"))
            .clone();
        assert_eq!(
            c["args"][0],
            if container == "drain" {
                "drain"
            } else {
                container
            }
        );
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                let key = e["name"].as_str().expect("name").to_string();
                let value = match (
                    &e["value"],
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                ) {
                    (Value::String(v), _) => v.clone(),
                    (_, Some("metadata.namespace")) => self.ns.clone(),
                    (_, Some("metadata.name")) => format!("{}-test-pod", self.fullname),
                    other => panic!("unexpected env {key}: {other:?}"),
                };
                (key, value)
            })
            .collect()
    }

    /// Runs the real binary with `args` and the chart's environment for it, as the
    /// chart's ServiceAccount, against moto.
    fn binary(&self, args: &[&str], env: Vec<(String, String)>, log: &str) -> Command {
        let kubeconfig = self.service_account_kubeconfig();
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aws-jit"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ENDPOINT_URL", &stack().aws.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Other tests run in parallel: no fixed port (the chart's 0.0.0.0:8080).
            .env("AWS_JIT_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info,aws_jit=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        cmd
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Starts `aws-jit controller` with the Deployment's controller environment.
    fn start_operator(&self) -> Running<'_> {
        self.start_operator_logging_to("controller.log")
    }

    fn start_operator_logging_to(&self, log: &str) -> Running<'_> {
        let env = self.container_env("deployment", &self.fullname, "controller");
        let child = self
            .binary(&["controller"], env, log)
            .spawn()
            .expect("start aws-jit controller");
        Running {
            child,
            release: self,
        }
    }

    fn request(&self, name: &str, extra: &str) {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {}\n\
             spec:\n  role: {}\n  requester: alice\n  reason: chart e2e\n{extra}",
            self.requests_ns, self.access_role
        );
        succeeded(
            &stack()
                .kube
                .kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        );
    }

    /// alice asks for an hour and carol approves; returns the request once Active.
    async fn approved_for_an_hour(&self, name: &str) -> AccessRequest {
        self.request(name, "  duration: 1h\n");
        self.wait_phase(name, Phase::AwaitingApproval).await;
        self.approve(name);
        self.wait_phase(name, Phase::Active).await
    }

    /// alice ends her access early; the operator revokes it: the statement is gone and
    /// the execution ends `Revoked`.
    async fn end_early(&self, name: &str) {
        self.revoke(name);
        self.wait_phase(name, Phase::Revoked).await;
        assert!(self.grants().await.is_empty(), "the statement is removed");
        assert_eq!(self.outcome(name).await, "SUCCEEDED Revoked");
    }

    /// alice ends her access early with the documented command.
    fn revoke(&self, name: &str) {
        let patch = r#"[{"op":"add","path":"/status/revocations/-","value":{"requestedBy":"alice","reason":"done"}}]"#;
        let kube = &stack().kube;
        succeeded(&kube.patch_status(User::Alice, &self.requests_ns, name, "json", patch));
    }

    fn approve(&self, name: &str) {
        let approval = r#"{"approver":"carol","decision":"Approve"}"#;
        let kube = &stack().kube;
        succeeded(&kube.append_approval(User::Carol, &self.requests_ns, name, approval));
    }

    async fn requests(&self) -> Api<AccessRequest> {
        Api::namespaced(stack().kube.client(User::Admin).await, &self.requests_ns)
    }

    async fn wait_phase(&self, name: &str, phase: Phase) -> AccessRequest {
        crate::controller::wait_phase(&self.requests().await, name, phase, WAIT).await
    }

    async fn grants(&self) -> Vec<aws_jit::grant::trust_policy::document::GrantInfo> {
        let doc = crate::controller::trust_policy(&self.sdk, &self.iam_role_name).await;
        aws_jit::grant::trust_policy::document::grants(&doc)
    }

    async fn outcome(&self, name: &str) -> String {
        let r = self.requests().await.get(name).await.expect("get");
        let arn = r
            .status
            .and_then(|s| s.execution_arn)
            .expect("executionArn");
        let exec = aws_sdk_sfn::Client::new(&self.sdk)
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .expect("describe");
        let output: Value = exec
            .output()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or_default();
        format!(
            "{} {}",
            exec.status().as_str(),
            output["outcome"].as_str().unwrap_or_default()
        )
    }

    fn can_i(&self, args: &[&str]) -> bool {
        self.can_i_as(&self.service_account(), args)
    }

    fn relay_can_i(&self, args: &[&str]) -> bool {
        let relay = format!("system:serviceaccount:{}:{}", self.ns, self.relay_account());
        self.can_i_as(&relay, args)
    }

    fn can_i_as(&self, user: &str, args: &[&str]) -> bool {
        let sa = format!("--as={user}");
        let mut all = vec!["auth", "can-i"];
        all.extend(args);
        all.push(&sa);
        let out = stack().kube.kubectl(User::Admin, &all);
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            said == "yes" || said == "no",
            "can-i {args:?}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        said == "yes"
    }
}

/// Policies and their parameters load asynchronously: waits until the release's own
/// policies (named after it) refuse a request made for someone else in `ns`.
async fn wait_for_release_policies(fullname: &str, ns: &str) {
    let forged = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: forged\n  namespace: {ns}\n\
         spec: {{role: probe, requester: bob, reason: probe}}\n"
    );
    let policy = format!("{fullname}-accessrequest-create");
    eventually(
        "the release's admission policies to be enforced",
        WAIT,
        || {
            let out = stack().kube.kubectl_stdin(
                User::Alice,
                &["create", "--dry-run=server", "-f", "-"],
                &forged,
            );
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            let policy = policy.clone();
            async move {
                if !out.status.success()
                    && said.contains(&policy)
                    && !said.contains("failed to configure binding")
                {
                    Ok(())
                } else {
                    Err(said)
                }
            }
        },
    )
    .await;
}

impl Drop for Release {
    fn drop(&mut self) {
        // Cluster-scoped objects (ClusterRole, bindings, admission policies) must not
        // outlive a failed test; the hook is skipped (no kubelet runs the Job).
        if self.installed {
            let _ = helm_admin(&["uninstall", &self.name, "-n", &self.ns, "--no-hooks"]);
        }
    }
}

/// A running `aws-jit controller`: killed when dropped (a panicking test included),
/// its log shown when the test failed.
struct Running<'a> {
    child: std::process::Child,
    release: &'a Release,
}

impl Running<'_> {
    /// How a rollout stops a pod: SIGTERM, then the process must stop its loops (handing
    /// back what it holds, releasing the Lease) and exit 0 on its own.
    async fn terminate(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: a signal to our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
        let child = &mut self.child;
        let status = eventually("the operator to exit after SIGTERM", WAIT, || {
            let status = child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.release.log("controller.log");
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "controller log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    }
}

#[tokio::test]
async fn chart_service_account_runs_a_request_through_its_whole_life() {
    let release = Release::install("chart-life").await;
    let _operator = release.start_operator();
    let r = release.approved_for_an_hour("life").await;
    assert!(r.finalizers().iter().any(|f| f == FINALIZER));
    let grants = release.grants().await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(
        grants[0].principal,
        format!("arn:aws:iam::{ACCOUNT}:user/alice")
    );
    // The token Secret is in the release namespace.
    let uid = r.uid().expect("uid");
    succeeded(&stack().kube.kubectl(
        User::Admin,
        &[
            "get",
            "secret",
            &aws_jit::controller::tokens::secret_name(&uid),
            "-n",
            &release.ns,
        ],
    ));
    // Another requester (RBAC grants requesters `delete`) cannot delete alice's request,
    // which would end her access: refused, and the grant stays.
    refused(
        &stack().kube.kubectl(
            User::Bob,
            &[
                "delete",
                "ar",
                "life",
                "-n",
                &release.requests_ns,
                "--wait=false",
            ],
        ),
        "only the requester (alice)",
    );
    let r = release
        .requests()
        .await
        .get("life")
        .await
        .expect("still there");
    assert!(r.metadata.deletion_timestamp.is_none(), "not being deleted");
    assert_eq!(release.grants().await.len(), 1, "the grant is untouched");
    // alice ends it early with the documented command.
    release.end_early("life").await;
    // Events were recorded (events.k8s.io create/patch).
    let events = succeeded(
        &stack()
            .kube
            .kubectl(User::Admin, &["get", "events", "-n", &release.requests_ns]),
    );
    assert!(
        events.contains("Approved") && events.contains("Revoked"),
        "{events}"
    );
    // Deleting it: the operator removes its finalizer.
    succeeded(&stack().kube.kubectl(
        User::Alice,
        &[
            "delete",
            "ar",
            "life",
            "-n",
            &release.requests_ns,
            "--wait=false",
        ],
    ));
    let api = release.requests().await;
    eventually("life to be gone", WAIT, || {
        let api = api.clone();
        async move {
            match api.get_opt("life").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) => Err(format!("still there, finalizers {:?}", r.finalizers())),
            }
        }
    })
    .await;
    let log = release.log("controller.log");
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the chart's RBAC refused something:\n{log}"
    );
    assert!(
        log.contains("leading"),
        "it ran as the Lease's leader:\n{log}"
    );
    assert_log_lines_name_their_request(&log, &uid);
}

/// The binary logs JSON lines, and every line about a request (any line that mentions
/// its uid, e.g. through its execution's ARN) names it, in a span or its own fields:
/// namespace, name and uid, which is what a log query filters on.
fn assert_log_lines_name_their_request(log: &str, uid: &str) {
    let mut about = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if !line.contains(uid) {
            continue;
        }
        about += 1;
        // In a span, or in the line's own fields.
        let mut spans = v["spans"].as_array().cloned().unwrap_or_default();
        spans.push(v["fields"].clone());
        assert!(
            spans.iter().any(|s| s["request_uid"] == uid
                && s["request_name"] == "life"
                && s["request_namespace"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())),
            "a line about the request without its identity: {line}"
        );
    }
    assert!(about >= 3, "only {about} lines about the request:\n{log}");
}

#[tokio::test]
async fn an_upgrade_rolls_the_operator_and_keeps_a_grant_in_flight() {
    let release = Release::install("chart-upgrade").await;
    let old = release.start_operator();
    release.approved_for_an_hour("held").await;
    assert_eq!(release.grants().await.len(), 1);
    // `helm upgrade --reuse-values` with a changed setting, as the README says.
    let chart = chart_dir().to_string_lossy().into_owned();
    let said = succeeded(&helm_admin(&[
        "upgrade",
        &release.name,
        &chart,
        "-n",
        &release.ns,
        "--reuse-values",
        "--set",
        "controller.pollInterval=2s",
    ]));
    assert!(said.contains("STATUS: deployed"), "{said}");
    let env = release.container_env("deployment", &release.fullname, "controller");
    assert!(
        env.contains(&("AWS_JIT_POLL_INTERVAL".to_string(), "2s".to_string())),
        "{env:?}"
    );
    // The rollout: the old pod is stopped as the kubelet stops it, and the new one (the
    // upgraded Deployment's env) takes over.
    old.terminate().await;
    let _new = release.start_operator_logging_to("controller-upgraded.log");
    // The grant survived the rollout and the new operator still ends it.
    let r = release.wait_phase("held", Phase::Active).await;
    assert!(r.finalizers().iter().any(|f| f == FINALIZER));
    release.end_early("held").await;
}

#[tokio::test]
async fn chart_service_account_has_only_what_it_needs() {
    let release = Release::install("chart-rbac").await;
    let (ns, other) = (release.ns.as_str(), release.requests_ns.as_str());
    let lease = "lease/aws-jit-controller";
    // What the controller, the relay and the drain call (the release watches `other`).
    for needed in [
        vec!["list", "accessrequests.aws-jit.io", "-n", other],
        vec!["watch", "accessrequests.aws-jit.io", "-n", other],
        vec!["patch", "accessrequests.aws-jit.io", "-n", other],
        vec![
            "patch",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            other,
        ],
        vec!["list", "accessroles.aws-jit.io"],
        vec!["get", "accessroles.aws-jit.io"],
        vec!["create", "events.events.k8s.io", "-n", other],
        vec!["create", "secrets", "-n", ns],
        vec!["watch", "secrets", "-n", ns],
        vec!["delete", "secrets", "-n", ns],
        vec!["create", "leases.coordination.k8s.io", "-n", ns],
        vec!["get", lease, "-n", ns],
        vec!["patch", lease, "-n", ns],
    ] {
        assert!(
            release.can_i(&needed),
            "the chart's ServiceAccount cannot {needed:?}"
        );
    }
    // And nothing more: not even requests outside the namespace it watches.
    for refused in [
        vec!["list", "accessrequests.aws-jit.io", "-A"],
        vec!["get", "accessrequests.aws-jit.io", "-n", "kube-system"],
        vec![
            "patch",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            "kube-system",
        ],
        vec!["create", "events.events.k8s.io", "-n", "kube-system"],
        vec!["get", "secrets", "-n", other],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["list", "secrets", "-A"],
        vec!["update", "secrets", "-n", ns],
        vec!["create", "accessroles.aws-jit.io"],
        vec!["update", "accessroles.aws-jit.io"],
        vec!["patch", "accessroles.aws-jit.io"],
        vec!["delete", "accessroles.aws-jit.io"],
        vec!["create", "accessrequests.aws-jit.io", "-n", other],
        vec!["delete", "accessrequests.aws-jit.io", "-n", other],
        vec!["update", "accessrequests.aws-jit.io", "-n", other],
        vec![
            "update",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            other,
        ],
        vec![
            "submit-for-others",
            "accessrequests.aws-jit.io",
            "-n",
            other,
        ],
        vec![
            "manage",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            other,
        ],
        vec!["create", "pods", "-n", ns],
        vec!["create", "leases.coordination.k8s.io", "-n", other],
        vec!["get", "lease/someone-elses", "-n", ns],
        vec!["delete", lease, "-n", ns],
        vec!["create", "clusterrolebindings"],
        vec!["delete", "events.events.k8s.io", "-n", other],
    ] {
        assert!(
            !release.can_i(&refused),
            "the chart's ServiceAccount may {refused:?}"
        );
    }
    // The relay's own ServiceAccount: read requests and roles, patch status (Slack votes,
    // status.slack), record Events. Nothing of the controller's.
    for needed in [
        vec!["get", "accessrequests.aws-jit.io", "-n", other],
        vec!["list", "accessrequests.aws-jit.io", "-n", other],
        vec!["watch", "accessrequests.aws-jit.io", "-n", other],
        vec![
            "patch",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            other,
        ],
        vec!["get", "accessroles.aws-jit.io"],
        vec!["list", "accessroles.aws-jit.io"],
        vec!["create", "events.events.k8s.io", "-n", other],
    ] {
        assert!(
            release.relay_can_i(&needed),
            "the relay's ServiceAccount cannot {needed:?}"
        );
    }
    for refused in [
        vec!["get", "secrets", "-n", ns],
        vec!["list", "secrets", "-n", ns],
        vec!["create", "secrets", "-n", ns],
        vec!["create", "serviceaccounts/token", "-n", ns],
        vec!["create", "leases.coordination.k8s.io", "-n", ns],
        vec!["get", lease, "-n", ns],
        // The finalizer is on the request itself: no write to it at all.
        vec!["patch", "accessrequests.aws-jit.io", "-n", other],
        vec!["update", "accessrequests.aws-jit.io", "-n", other],
        vec!["delete", "accessrequests.aws-jit.io", "-n", other],
        vec!["create", "accessrequests.aws-jit.io", "-n", other],
        vec![
            "update",
            "accessrequests.aws-jit.io",
            "--subresource=status",
            "-n",
            other,
        ],
        vec!["list", "accessrequests.aws-jit.io", "-A"],
        vec!["patch", "accessroles.aws-jit.io"],
        vec!["create", "pods", "-n", ns],
    ] {
        assert!(
            !release.relay_can_i(&refused),
            "the relay's ServiceAccount may {refused:?}"
        );
    }

    // Admission decides fields: as the relay (a real token for its ServiceAccount) a
    // Slack vote passes, an operator field does not; the controller's passes.
    let kube = &stack().kube;
    release.request("fields", "");
    let relay_kubeconfig = release.kubeconfig_for(&release.relay_account());
    let controller_kubeconfig = release.service_account_kubeconfig();
    let patch_as = |kubeconfig: &Path, patch: &str| {
        let mut cmd = Command::new(kube.bin_dir().join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "patch",
                "accessrequest",
                "fields",
                "-n",
                other,
                "--subresource=status",
                "--type=merge",
                "-p",
                patch,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    };
    refused(
        &patch_as(&relay_kubeconfig, r#"{"status":{"phase":"Active"}}"#),
        "only the aws-jit operator may change status fields other than approvals, revocations, extensions, extensionApprovals and reviews (changed: phase)",
    );
    refused(
        &patch_as(
            &relay_kubeconfig,
            r#"{"status":{"approvals":[{"approver":"alice","decision":"Approve","via":"slack"}]}}"#,
        ),
        "you may not approve or deny your own AccessRequest",
    );
    succeeded(&patch_as(
        &relay_kubeconfig,
        r#"{"status":{"approvals":[{"approver":"carol","decision":"Approve","via":"slack"}]}}"#,
    ));
    succeeded(&patch_as(
        &controller_kubeconfig,
        r#"{"status":{"message":"the controller's own field"}}"#,
    ));
}

/// `helm uninstall`: the pre-delete Job is created by helm; the test plays kubelet for
/// it (no kubelet runs here): it runs the Job's command with the Job's environment as
/// the chart's ServiceAccount while the chart's operator runs, then reports the Job
/// complete so helm goes on.
#[tokio::test]
async fn uninstall_drains_active_grants_revoked_pending_cancelled_records_kept() {
    let mut release = Release::install("chart-drain").await;
    let operator = release.start_operator();
    release.request("active", "  duration: 1h\n");
    release.request("pending", "");
    // Asked before `active` is approved: a request validated after it would be refused
    // (one grant per person and role).
    release.request("late", "  duration: 1h\n");
    release.wait_phase("active", Phase::AwaitingApproval).await;
    release.approve("active");
    release.wait_phase("active", Phase::Active).await;
    release.wait_phase("pending", Phase::AwaitingApproval).await;
    assert_eq!(release.grants().await.len(), 1);
    // Approved just before the uninstall: caught in between (vote not yet counted, or
    // the grant in progress), it must end revoked all the same.
    release.wait_phase("late", Phase::AwaitingApproval).await;
    release.approve("late");

    let admin_kubeconfig = stack().kube.kubeconfig(User::Admin);
    let uninstall = helm_command(&[
        "uninstall",
        &release.name,
        "-n",
        &release.ns,
        "--timeout=5m",
        "--kubeconfig",
        &admin_kubeconfig.to_string_lossy(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("helm uninstall");
    let job = format!("{}-drain", release.fullname);
    eventually("helm to create the drain Job", WAIT, || {
        let out = stack()
            .kube
            .kubectl(User::Admin, &["get", "job", &job, "-n", &release.ns]);
        async move {
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    })
    .await;
    let env = release.container_env("job", &job, "drain");
    assert!(
        env.iter()
            .any(|(k, v)| k == "AWS_JIT_WATCH_NAMESPACE" && *v == release.requests_ns)
    );
    let drained = release
        .binary(&["drain"], env, "drain.log")
        .env("AWS_JIT_POLL_INTERVAL", "1s")
        .status()
        .expect("run aws-jit drain");
    let log = release.log("drain.log");
    assert!(drained.success(), "aws-jit drain failed:\n{log}");

    // The active grant was revoked, in the drain's name; the pending request cancelled.
    let active = release.wait_phase("active", Phase::Revoked).await;
    assert!(
        release.grants().await.is_empty(),
        "the statement is removed"
    );
    assert_eq!(release.outcome("active").await, "SUCCEEDED Revoked");
    let revocation = active
        .status
        .as_ref()
        .and_then(|s| s.revocations.clone())
        .and_then(|r| {
            r.into_iter()
                .find(|r| r.requested_by == release.service_account())
        })
        .expect("revocation record");
    assert_eq!(revocation.requested_by, release.service_account());
    assert_eq!(
        revocation.reason.as_deref(),
        Some(aws_jit::run::drain::REASON)
    );
    assert!(
        active
            .status
            .as_ref()
            .and_then(|s| s.revoked_at.clone())
            .is_some()
    );
    let pending = release.wait_phase("pending", Phase::Revoked).await;
    assert_eq!(release.outcome("pending").await, "SUCCEEDED Cancelled");
    let late = release.wait_phase("late", Phase::Revoked).await;
    assert!(
        ["SUCCEEDED Revoked", "SUCCEEDED Cancelled"]
            .contains(&release.outcome("late").await.as_str()),
        "{:?}",
        late.status
    );
    assert!(release.grants().await.is_empty(), "nothing granted is left");
    // Records kept, finalizers released, and released they stay while the operator runs.
    for r in [&active, &pending, &late] {
        assert!(
            !r.finalizers().iter().any(|f| f == FINALIZER),
            "{} keeps its finalizer",
            r.name_any()
        );
    }
    assert!(log.contains("drained"), "{log}");

    // The kubelet's part: the Job's pod succeeded.
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "startTime": now, "completionTime": now, "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
        ],
    }});
    succeeded(&stack().kube.kubectl(
        User::Admin,
        &[
            "patch",
            "job",
            &job,
            "-n",
            &release.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
    ));
    let out = tokio::task::spawn_blocking(move || uninstall.wait_with_output())
        .await
        .expect("join")
        .expect("helm uninstall");
    let said = succeeded(&out);
    assert!(said.contains("uninstalled"), "{said}");
    drop(operator);
    release.installed = false;

    // Everything the chart made is gone, cluster-scoped objects included.
    for (kind, name) in [
        ("clusterrole", format!("{}:operator", release.fullname)),
        (
            "validatingadmissionpolicy",
            format!("{}-accessrequest-status", release.fullname),
        ),
    ] {
        refused(
            &stack().kube.kubectl(User::Admin, &["get", kind, &name]),
            "NotFound",
        );
    }
    refused(
        &stack().kube.kubectl(
            User::Admin,
            &["get", "deployment", &release.fullname, "-n", &release.ns],
        ),
        "NotFound",
    );
    // The records remain, without finalizers: deleting them needs no operator.
    let api = release.requests().await;
    for name in ["active", "pending", "late"] {
        let r = api.get(name).await.expect("the record is kept");
        assert!(r.finalizers().is_empty(), "{name}: {:?}", r.finalizers());
    }
    // Until the apiserver has seen the release's admission policies go, their binding
    // may outlive its parameter ConfigMap, and refuses (fails closed) meanwhile.
    let ns = release.requests_ns.clone();
    eventually("deleting a drained record to succeed", WAIT, || {
        let out = stack().kube.kubectl(
            User::Admin,
            &[
                "delete",
                "ar",
                "active",
                "-n",
                &ns,
                "--wait=true",
                "--timeout=30s",
            ],
        );
        async move {
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            match out.status.success() {
                true => Ok(()),
                false if said.contains("no params found") => Err(said),
                false => panic!("delete refused for another reason: {said}"),
            }
        }
    })
    .await;
}

/// The Dockerfile (no Docker engine runs here; `hack/check-dockerfile.sh` lints it and
/// runs its build commands): it builds, locked, the binary its runtime stage copies and
/// runs as the entrypoint, as the user the chart expects, and the binary serves every
/// subcommand the chart's containers and hook pass as args.
#[test]
fn dockerfile_builds_and_runs_the_binary_the_chart_uses() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: a builder and a runtime: {froms:?}"
    );
    assert!(froms[0].ends_with(" AS builder"), "{}", froms[0]);
    assert_eq!(*froms[1], "FROM gcr.io/distroless/cc-debian12:nonroot");
    let build = instructions
        .iter()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .expect("a RUN with cargo build");
    for flag in ["--release", "--locked", "--bin aws-jit"] {
        assert!(build.contains(flag), "the build must use {flag}: {build}");
    }
    assert!(
        build.contains("target/release/aws-jit /out/aws-jit"),
        "{build}"
    );
    assert!(instructions.contains(&"RUN cargo fetch --locked"));
    let runtime: Vec<&&str> = instructions
        .iter()
        .skip_while(|l| !l.starts_with("FROM gcr.io"))
        .collect();
    assert!(
        runtime.contains(&&"COPY --from=builder /out/aws-jit /aws-jit"),
        "{runtime:?}"
    );
    assert!(
        runtime.contains(&&"ENTRYPOINT [\"/aws-jit\"]"),
        "{runtime:?}"
    );
    // The user the chart's podSecurityContext names.
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let uid = values["podSecurityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert!(
        runtime.contains(&&format!("USER {uid}:{uid}").as_str()),
        "{runtime:?}"
    );
    let ignore = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).expect(".dockerignore");
    for kept in ["!Cargo.toml", "!Cargo.lock", "!src/"] {
        assert!(
            ignore.lines().any(|l| l == kept),
            ".dockerignore drops {kept}"
        );
    }
    // Every args[0] the chart passes is a subcommand of the binary.
    let rendered = docs(&render("rel", "ops", &[]));
    let mut subcommands = Vec::new();
    for d in &rendered {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            subcommands.push(c["args"][0].as_str().expect("args[0]").to_string());
        }
    }
    subcommands.sort();
    assert_eq!(subcommands, ["controller", "drain", "relay"]);
    for sub in &subcommands {
        let out = Command::new(env!("CARGO_BIN_EXE_aws-jit"))
            .args([sub.as_str(), "--help"])
            .output()
            .expect("run aws-jit");
        succeeded(&out);
    }
}

/// Without a running operator nothing can be revoked: the drain says so by its deadline
/// and fails (so `helm uninstall` stops before deleting anything), naming what is left.
#[tokio::test]
async fn drain_fails_at_its_deadline_naming_what_is_left() {
    let release = Release::install("chart-stuck").await;
    release.request("orphan", "");
    let drain_env = release.container_env("deployment", &release.fullname, "controller");
    let out = release
        .binary(&["drain"], drain_env, "drain.log")
        .env("AWS_JIT_DRAIN_TIMEOUT", "2s")
        .env("AWS_JIT_POLL_INTERVAL", "500ms")
        .status()
        .expect("run aws-jit drain");
    let log = release.log("drain.log");
    assert!(
        !out.success(),
        "the drain must fail when it cannot finish:\n{log}"
    );
    assert!(
        log.contains("1 request(s) not drained after 2s")
            && log.contains(&format!(
                "{}/orphan: not taken up by the operator yet",
                release.requests_ns
            )),
        "{log}"
    );
}
