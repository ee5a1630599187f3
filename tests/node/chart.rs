//! The chart installed with `helm install --wait` on the node, its pods run by the
//! kubelet from the image built here. Each test has a release, namespaces and a
//! CloudFormation stack of its own.
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_jit::crd::{AccessRequest, FINALIZER, Phase};
use kube::ResourceExt;
use kube::api::Api;
use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::cluster::{self, Cluster, IMAGE_REPOSITORY, IMAGE_TAG, NODE_IP};
use crate::support::aws::{ACCOUNT_ID, AwsOutputs};
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{refused, succeeded, unique};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WAIT: Duration = Duration::from_secs(90);
/// The chart's terminationGracePeriodSeconds.
const GRACE: Duration = Duration::from_secs(45);
const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Ec2","Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "helm_install_waits_for_both_replicas_ready_and_a_request_lives_through_the_pods",
            install_and_a_request_through_the_pods,
        ),
        trial(
            "the_standby_pod_takes_over_when_the_leader_pod_is_deleted_mid_request",
            the_standby_takes_over,
        ),
        trial(
            "the_disruption_budget_refuses_to_evict_the_last_ready_replica",
            the_disruption_budget_keeps_a_replica,
        ),
        trial(
            "a_rollout_stops_each_old_pod_by_sigterm_within_its_grace_period",
            a_rollout_stops_pods_by_sigterm,
        ),
        trial(
            "helm_uninstall_runs_the_drain_job_to_completion_under_the_kubelet",
            uninstall_runs_the_drain_job,
        ),
    ]
}

fn trial<F, Fut>(name: &'static str, test: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    Trial::test(name, move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(test())
        }));
        run.map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_owned());
            Failed::from(message)
        })
    })
}

/// The node, started by the first test that needs it. A start that failed fails every
/// test after it at once, with its reason (a second start would find the first's
/// processes on the node's fixed ports).
fn node() -> &'static Cluster {
    static NODE: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let started = NODE.get_or_init(|| {
        std::panic::catch_unwind(start_node).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_owned())
        })
    });
    match started {
        Ok(cluster) => cluster,
        Err(e) => panic!("the node did not start: {e}"),
    }
}

fn start_node() -> Cluster {
    // The release binary (hack/test.sh builds it), else this build's.
    let binary = std::env::var_os("AWS_JIT_IMAGE_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("node: AWS_JIT_IMAGE_BINARY is not set; the image carries the debug binary");
            PathBuf::from(env!("CARGO_BIN_EXE_aws-jit"))
        });
    let cluster = Cluster::start(&binary);
    // The people of the tests (tests/support/kube.rs's users): their roles from
    // deploy/rbac/roles.yaml, bound to their groups.
    let kube = &cluster.kube;
    succeeded(&kube.kubectl(
        User::Admin,
        &["apply", "-f", &format!("{ROOT}/deploy/rbac/roles.yaml")],
    ));
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: 'test:requesters'}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'aws-jit:requester'}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: developers}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: 'test:approvers'}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'aws-jit:approver'}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: sre}]\n",
    ));
    cluster
}

/// Helm as the admin, its state in the node's directory.
fn helm(args: &[&str]) -> Command {
    let node = node();
    let home = node.kube.dir().join("helm");
    let mut cmd = Command::new(
        std::env::var_os("AWS_JIT_BIN_DIR")
            .map(PathBuf::from)
            .expect("AWS_JIT_BIN_DIR")
            .join("helm"),
    );
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args)
        .arg("--kubeconfig")
        .arg(node.kube.kubeconfig(User::Admin))
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run command")
}

fn kubectl(args: &[&str]) -> Output {
    node().kube.kubectl(User::Admin, args)
}

fn json(out: Output) -> Value {
    serde_json::from_str(&succeeded(&out)).expect("kubectl's JSON")
}

/// `kubectl get … --watch -o json` in the background: every version of the objects it
/// sees, in order, until dropped.
struct Watch {
    child: std::process::Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let node = node();
        let mut child = Command::new(node.kube.bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(node.kube.kubeconfig(User::Admin))
            .args(["get", "--watch", "-o", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("piped");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let reader = std::io::BufReader::new(stdout);
            let stream = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
            for value in stream.flatten() {
                sink.lock().expect("watch lock").push(value);
            }
        });
        // Whether the watch is established is seen by its first object (the listing).
        Watch { child, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("watch lock").clone()
    }

    /// Waits until the watch has listed `n` objects: it is established.
    async fn wait_listed(&self, n: usize) {
        eventually("the watch to list what exists", WAIT, || {
            let seen = self.seen().len();
            async move {
                match seen >= n {
                    true => Ok(()),
                    false => Err(format!("{seen} seen")),
                }
            }
        })
        .await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Release {
    name: String,
    fullname: String,
    ns: String,
    requests_ns: String,
    sdk: aws_config::SdkConfig,
    aws: AwsOutputs,
    iam_role_name: String,
    access_role: String,
}

impl Release {
    /// `helm install --wait` of the chart with the image built here, its AWS settings
    /// from a stack of its own, moto as AWS; then an IAM role and an AccessRole for it.
    async fn install(prefix: &str) -> Release {
        let node = node();
        let ns = node.kube.create_namespace(&format!("{prefix}-op")).await;
        let requests_ns = node.kube.create_namespace(prefix).await;
        let aws = node.aws.deploy(prefix).await;
        let sdk = node.aws.sdk_config().await;
        let name = unique(prefix);
        let chart = format!("{ROOT}/charts/aws-jit");
        let values = format!("{ROOT}/charts/aws-jit/ci/test-values.yaml");
        // What the pods need to reach moto: static credentials (moto checks none) and
        // the endpoint, at the node's IP.
        let env = serde_json::json!([
            {"name": "AWS_ENDPOINT_URL", "value": node.aws.endpoint},
            {"name": "AWS_ACCESS_KEY_ID", "value": "testing"},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "testing"},
            {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
        ]);
        let mut sets: Vec<String> = vec![
            ("aws.region", crate::support::aws::REGION.to_owned()),
            ("aws.stateMachineArn", aws.state_machine_arn.clone()),
            (
                "aws.cleanupStateMachineArn",
                aws.cleanup_state_machine_arn.clone(),
            ),
            ("aws.requestQueueUrl", aws.request_queue_url.clone()),
            ("aws.requestDeadLetterQueueUrl", aws.request_dlq_url.clone()),
            ("aws.workQueueUrl", aws.work_queue_url.clone()),
            ("aws.workDeadLetterQueueUrl", aws.work_dlq_url.clone()),
            ("aws.alertQueueUrl", aws.alert_queue_url.clone()),
            ("aws.alertDeadLetterQueueUrl", aws.alert_dlq_url.clone()),
            ("controller.watchNamespace", requests_ns.clone()),
            ("controller.pollInterval", "1s".to_owned()),
            ("image.repository", IMAGE_REPOSITORY.to_owned()),
            ("image.tag", IMAGE_TAG.to_owned()),
            ("image.pullPolicy", "Never".to_owned()),
            // Slack is not reachable from here, and the relay's own tests run it.
            ("relay.enabled", "false".to_owned()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")])
        .collect();
        sets.extend([
            "--set-json".to_owned(),
            format!("controller.extraEnv={env}"),
        ]);
        let mut args: Vec<&str> = vec![
            "install",
            &name,
            &chart,
            "-n",
            &ns,
            "-f",
            &values,
            "--wait",
            "--timeout=3m",
        ];
        args.extend(sets.iter().map(String::as_str));
        let started = Instant::now();
        let said = succeeded(&run(helm(&args)));
        assert!(said.contains("STATUS: deployed"), "{said}");
        eprintln!("helm install --wait: {:.1?}", started.elapsed());
        let fullname = format!("{name}-aws-jit");

        let iam_role_name = unique(&format!("{prefix}-admin"));
        let arn = aws_sdk_iam::Client::new(&sdk)
            .create_role()
            .role_name(&iam_role_name)
            .path("/jit/")
            .assume_role_policy_document(TRUST_POLICY)
            .send()
            .await
            .expect("create the IAM role")
            .role()
            .map(|r| r.arn().to_owned())
            .expect("ARN");
        let access_role = unique(prefix);
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {access_role}\nspec:\n\
             \x20 roleArn: {arn}\n  approvers: [{{user: carol}}, {{user: dave}}]\n  requesters: [{{user: alice}}]\n\
             \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT_ID}:user/{{username}}'}}\n"
        );
        succeeded(
            &node
                .kube
                .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml),
        );
        Release {
            name,
            fullname,
            ns,
            requests_ns,
            sdk,
            aws,
            iam_role_name,
            access_role,
        }
    }

    /// `helm uninstall --wait` (its drain Job included), so the next test does not
    /// share the node's two cores with this release's pods.
    fn uninstall(&self) {
        let said = succeeded(&run(helm(&[
            "uninstall",
            &self.name,
            "-n",
            &self.ns,
            "--wait",
            "--timeout=5m",
        ])));
        assert!(said.contains("uninstalled"), "{said}");
    }

    /// The controller's pods, as the apiserver has them now.
    fn pods(&self) -> Vec<Value> {
        let list = json(kubectl(&[
            "get",
            "pods",
            "-n",
            &self.ns,
            "-l",
            &format!(
                "app.kubernetes.io/instance={},app.kubernetes.io/component=controller",
                self.name
            ),
            "-o",
            "json",
        ]));
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Names of the controller pods that are Ready and not being deleted.
    fn ready_pods(&self) -> Vec<String> {
        self.pods()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && ready(p))
            .map(|p| name(p).to_owned())
            .collect()
    }

    fn leader(&self) -> String {
        let out = kubectl(&[
            "get",
            "lease",
            "aws-jit-controller",
            "-n",
            &self.ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for the Lease to name one of `among` and returns it.
    async fn wait_leader(&self, among: &[String]) -> String {
        eventually("a controller pod to hold the Lease", WAIT, || {
            let holder = self.leader();
            async move {
                if among.contains(&holder) {
                    Ok(holder)
                } else {
                    Err(format!("held by {holder:?}, not one of {among:?}"))
                }
            }
        })
        .await
    }

    async fn requests(&self) -> Api<AccessRequest> {
        Api::namespaced(node().kube.client(User::Admin).await, &self.requests_ns)
    }

    fn request(&self, name: &str, extra: &str) {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {}\n\
             spec:\n  role: {}\n  requester: alice\n  reason: node e2e\n{extra}",
            self.requests_ns, self.access_role
        );
        succeeded(
            &node()
                .kube
                .kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        );
    }

    fn approve(&self, name: &str) {
        let approval = r#"{"approver":"carol","decision":"Approve"}"#;
        succeeded(
            &node()
                .kube
                .append_approval(User::Carol, &self.requests_ns, name, approval),
        );
    }

    fn revoke(&self, name: &str) {
        let patch = r#"[{"op":"add","path":"/status/revocations/-","value":{"requestedBy":"alice","reason":"done"}}]"#;
        succeeded(
            &node()
                .kube
                .patch_status(User::Alice, &self.requests_ns, name, "json", patch),
        );
    }

    async fn wait_phase(&self, name: &str, phase: Phase) -> AccessRequest {
        let api = self.requests().await;
        eventually(&format!("{name} to reach {phase:?}"), WAIT, || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                let now = r.status.as_ref().and_then(|s| s.phase);
                match now == Some(phase) {
                    true => Ok(r),
                    false => Err(format!("phase {now:?}, status {:?}", r.status)),
                }
            }
        })
        .await
    }

    async fn grants(&self) -> Vec<aws_jit::grant::trust_policy::document::GrantInfo> {
        let role = aws_sdk_iam::Client::new(&self.sdk)
            .get_role()
            .role_name(&self.iam_role_name)
            .send()
            .await
            .expect("get role");
        let doc = role
            .role()
            .and_then(|r| r.assume_role_policy_document())
            .expect("trust policy");
        let doc = aws_jit::grant::trust_policy::document::parse(doc).expect("parse");
        aws_jit::grant::trust_policy::document::grants(&doc)
    }

    /// The request's execution: its status and the outcome in its output.
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

    /// How many executions the state machine has for request `name` (by its uid).
    async fn executions_of(&self, name: &str) -> usize {
        let uid = self
            .requests()
            .await
            .get(name)
            .await
            .expect("get")
            .uid()
            .expect("uid");
        let sfn = aws_sdk_sfn::Client::new(&self.sdk);
        let listed = sfn
            .list_executions()
            .state_machine_arn(&self.aws.state_machine_arn)
            .send()
            .await
            .expect("list executions");
        listed
            .executions()
            .iter()
            .filter(|e| e.name().contains(&uid))
            .count()
    }

    /// alice asks for an hour, carol approves; the grant is in the trust policy.
    async fn active_for_an_hour(&self, name: &str) -> AccessRequest {
        self.request(name, "  duration: 1h\n");
        self.wait_phase(name, Phase::AwaitingApproval).await;
        self.approve(name);
        let r = self.wait_phase(name, Phase::Active).await;
        let grants = self.grants().await;
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(
            grants[0].principal,
            format!("arn:aws:iam::{ACCOUNT_ID}:user/alice")
        );
        r
    }

    /// alice ends it early; the statement is removed and the execution ends Revoked.
    async fn end_early(&self, name: &str) {
        self.revoke(name);
        self.wait_phase(name, Phase::Revoked).await;
        assert!(self.grants().await.is_empty(), "the statement is removed");
        assert_eq!(self.outcome(name).await, "SUCCEEDED Revoked");
    }

    /// A pod's log, read through the kubelet (`kubectl logs`).
    fn logs(&self, pod: &str, previous: bool) -> String {
        let mut args = vec!["logs", pod, "-n", &self.ns];
        if previous {
            args.push("--previous");
        }
        succeeded(&kubectl(&args))
    }
}

fn name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The container's process as the kernel sees it: `/proc/<pid>/status` and
/// `/proc/<pid>/mountinfo`, the pid from containerd (`ctr tasks ls`).
fn container_process(pod: &Value) -> (String, String) {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .unwrap_or_else(|| panic!("no containerd container in {}", name(pod)))
        .to_owned();
    let tasks = node().ctr(&["tasks", "ls"]);
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    let pid = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("containerd runs no task {id}: {tasks}"));
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/{file}: {e}"))
    };
    (read("status"), read("mountinfo"))
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in /proc/<pid>/status"))
}

/// How many times the kubelet probed a container (its prober metrics, read through the
/// apiserver's node proxy), by probe type and result.
fn probes(pod: &str, probe_type: &str) -> f64 {
    let metrics = succeeded(&kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics/probes", cluster::NODE_NAME),
    ]));
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("prober_probe_total{")
                && l.contains(&format!("pod=\"{pod}\""))
                && l.contains(&format!("probe_type=\"{probe_type}\""))
                && l.contains("result=\"successful\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn install_and_a_request_through_the_pods() {
    let release = Release::install("node-life").await;
    // --wait returned: both replicas are Ready, through the readiness probe the kubelet
    // ran (its prober counted successes for each), on this node, from our image.
    let pods = release.pods();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for pod in &pods {
        let pod_name = name(pod);
        assert!(ready(pod), "{pod_name} is not Ready: {:#}", pod["status"]);
        assert_eq!(pod["status"]["hostIP"], NODE_IP.to_string());
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.88.0.")),
            "{pod_name}: {}",
            pod["status"]["podIP"]
        );
        let container = &pod["status"]["containerStatuses"][0];
        assert_eq!(
            container["image"],
            format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}")
        );
        assert_eq!(container["restartCount"], 0, "{pod_name} restarted");
        for probe in ["Readiness", "Liveness"] {
            eventually(
                &format!("the kubelet to run {pod_name}'s {probe} probe"),
                WAIT,
                || async move {
                    match probes(pod_name, probe) {
                        n if n >= 1.0 => Ok(()),
                        n => Err(format!("{n} successful")),
                    }
                },
            )
            .await;
        }
        // What the kernel says of the running process: the chart's securityContext and
        // the image's USER, as runc applied them.
        let (status, mountinfo) = container_process(pod);
        assert_eq!(
            status_field(&status, "Uid").split_whitespace().next(),
            Some("65532"),
            "{pod_name} runs as another user:\n{status}"
        );
        assert_eq!(
            status_field(&status, "Gid").split_whitespace().next(),
            Some("65532")
        );
        assert_eq!(
            status_field(&status, "CapEff"),
            "0000000000000000",
            "{status}"
        );
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
        assert_eq!(
            status_field(&status, "Seccomp"),
            "2",
            "seccomp filter (RuntimeDefault)"
        );
        let root = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("no / in {pod_name}'s mountinfo:\n{mountinfo}"));
        assert!(
            root.split_whitespace()
                .nth(5)
                .is_some_and(|opts| opts.split(',').any(|o| o == "ro")),
            "{pod_name}'s root filesystem is writable: {root}"
        );
    }
    let names: Vec<String> = pods.iter().map(|p| name(p).to_owned()).collect();
    let leader = release.wait_leader(&names).await;

    // A request's whole life through the pods: the in-cluster configuration reaches the
    // apiserver, moto is reached at the node's IP.
    let r = release.active_for_an_hour("life").await;
    assert!(r.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(release.executions_of("life").await, 1);
    release.end_early("life").await;
    // The leader's log, through the kubelet: it led, and nothing was refused.
    let log = release.logs(&leader, false);
    assert!(log.contains("leading"), "{log}");
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the chart's RBAC refused something:\n{log}"
    );
    // Nothing restarted meanwhile (a failing liveness probe would have).
    for pod in release.pods() {
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    }
    release.uninstall();
}

async fn the_standby_takes_over() {
    let release = Release::install("node-failover").await;
    let pods = release.ready_pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let leader = release.wait_leader(&pods).await;
    release.request("held", "  duration: 1h\n");
    release.wait_phase("held", Phase::AwaitingApproval).await;

    // The leader pod is deleted (as a node drain or `kubectl delete pod` does): the
    // kubelet sends SIGTERM, its loops stop, it hands the Lease back, and another pod
    // (the standby, or the Deployment's replacement) leads. Its whole log is followed
    // through the kubelet until the container ends.
    let old_log = LogFollow::start(&release.ns, &leader);
    let deleted = Instant::now();
    succeeded(&kubectl(&[
        "delete",
        "pod",
        &leader,
        "-n",
        &release.ns,
        "--wait=false",
    ]));
    let new_leader = eventually("another pod to hold the Lease", GRACE + WAIT, || {
        let holder = release.leader();
        let old = leader.clone();
        async move {
            match holder.is_empty() || holder == old {
                true => Err(format!("held by {holder:?}")),
                false => Ok(holder),
            }
        }
    })
    .await;
    eprintln!(
        "{new_leader} led {:.1?} after the delete",
        deleted.elapsed()
    );
    let old_log = old_log.wait_ended(GRACE + WAIT).await;
    // Never two leaders: the old one's loops had stopped and it had released the Lease
    // before the new one started leading.
    let released = log_time(&old_log, "released the Lease")
        .unwrap_or_else(|| panic!("the old leader never released the Lease:\n{old_log}"));
    assert!(
        log_time(&old_log, "the Lease ended while the loops were stopping").is_none(),
        "{old_log}"
    );
    let new_log = release.logs(&new_leader, false);
    let leading = log_time(&new_log, "leading: reconciling and consuming queues")
        .unwrap_or_else(|| panic!("{new_leader} never led:\n{new_log}"));
    assert!(
        leading >= released,
        "{new_leader} led at {leading} while the old leader ran until {released}:\n{old_log}"
    );
    // The request goes on under the new leader: one execution, approved, granted.
    release.approve("held");
    release.wait_phase("held", Phase::Active).await;
    assert_eq!(release.grants().await.len(), 1);
    assert_eq!(release.executions_of("held").await, 1);
    release.end_early("held").await;
    release.uninstall();
}

/// `kubectl logs -f` of a pod's container, through the kubelet, until it ends.
struct LogFollow {
    child: std::process::Child,
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LogFollow {
    fn start(ns: &str, pod: &str) -> LogFollow {
        let node = node();
        let mut child = Command::new(node.kube.bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(node.kube.kubeconfig(User::Admin))
            .args(["logs", "-f", pod, "-n", ns])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl logs -f");
        let mut stdout = child.stdout.take().expect("piped");
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("log lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LogFollow {
            child,
            text,
            reader: Some(reader),
        }
    }

    /// The whole log, once the container (and so the stream) has ended.
    async fn wait_ended(mut self, within: Duration) -> String {
        let child = &mut self.child;
        eventually("the followed container to end", within, || {
            let exited = child.try_wait().map(|s| s.is_some());
            async move {
                match exited {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("still streaming".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        self.text.lock().expect("log lock").clone()
    }
}

impl Drop for LogFollow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When the operator logged `message` (its JSON lines' timestamp), if it did.
fn log_time(log: &str, message: &str) -> Option<jiff::Timestamp> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .and_then(|v| v["timestamp"].as_str()?.parse().ok())
}

async fn the_disruption_budget_keeps_a_replica() {
    let release = Release::install("node-pdb").await;
    let pods = release.ready_pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let budget = release.fullname.clone();
    eventually(
        "the disruption controller to allow one eviction",
        WAIT,
        || {
            let out = kubectl(&[
                "get",
                "pdb",
                &budget,
                "-n",
                &release.ns,
                "-o",
                "jsonpath={.status.disruptionsAllowed}",
            ]);
            async move {
                match String::from_utf8_lossy(&out.stdout).as_ref() {
                    "1" => Ok(()),
                    other => Err(format!("disruptionsAllowed {other:?}")),
                }
            }
        },
    )
    .await;
    let evict = |pod: &str| {
        let body = serde_json::json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": release.ns},
        });
        node().kube.kubectl_stdin(
            User::Admin,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{}/pods/{pod}/eviction", release.ns),
                "-f",
                "-",
            ],
            &body.to_string(),
        )
    };
    // One goes; the other is the last Ready replica until the replacement is Ready.
    succeeded(&evict(&pods[0]));
    refused(&evict(&pods[1]), "disruption budget");
    // The replacement comes up Ready through its probe, and the budget allows one again.
    eventually("a replacement to be Ready", WAIT, || {
        let ready = release.ready_pods();
        let first = pods[0].clone();
        async move {
            match ready.len() == 2 && !ready.contains(&first) {
                true => Ok(()),
                false => Err(format!("ready: {ready:?}")),
            }
        }
    })
    .await;
    release.uninstall();
}

async fn a_rollout_stops_pods_by_sigterm() {
    let release = Release::install("node-rollout").await;
    let old = release.ready_pods();
    assert_eq!(old.len(), 2, "{old:?}");
    release.wait_leader(&old).await;
    release.active_for_an_hour("held").await;
    let watch = Watch::start(&[
        "pods",
        "-n",
        &release.ns,
        "-l",
        &format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=controller",
            release.name
        ),
    ]);
    watch.wait_listed(2).await;
    // `helm upgrade` with a changed setting: a new pod template, rolled out.
    let chart = format!("{ROOT}/charts/aws-jit");
    let said = succeeded(&run(helm(&[
        "upgrade",
        &release.name,
        &chart,
        "-n",
        &release.ns,
        "--reuse-values",
        "--set",
        "controller.pollInterval=2s",
        "--wait",
        "--timeout=3m",
    ])));
    assert!(said.contains("STATUS: deployed"), "{said}");
    // Each old pod's container ended with status 0: it handled SIGTERM and exited by
    // itself (a process killed by SIGTERM or, after the grace period, SIGKILL has 143 or
    // 137), well within the grace period.
    for pod in &old {
        let versions: Vec<Value> = eventually(
            &format!("the watch to see {pod}'s container end"),
            WAIT,
            || {
                let seen = watch.seen();
                async move {
                    let versions: Vec<Value> =
                        seen.into_iter().filter(|p| name(p) == pod).collect();
                    match versions.iter().any(|p| {
                        !p["status"]["containerStatuses"][0]["state"]["terminated"].is_null()
                    }) {
                        true => Ok(versions),
                        false => Err(format!("{} versions, none terminated", versions.len())),
                    }
                }
            },
        )
        .await;
        let ended = versions
            .iter()
            .find(|p| !p["status"]["containerStatuses"][0]["state"]["terminated"].is_null())
            .expect("a terminated version");
        let terminated = &ended["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(
            terminated["exitCode"], 0,
            "{pod} did not stop cleanly on SIGTERM: {terminated:#}"
        );
        // deletionTimestamp is when the grace period ends: the delete was that minus
        // deletionGracePeriodSeconds.
        let deadline: jiff::Timestamp = ended["metadata"]["deletionTimestamp"]
            .as_str()
            .expect("deleted by the rollout")
            .parse()
            .expect("deletionTimestamp");
        let grace = ended["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .expect("deletionGracePeriodSeconds");
        assert_eq!(grace, GRACE.as_secs() as i64, "the chart's grace period");
        let finished: jiff::Timestamp = terminated["finishedAt"]
            .as_str()
            .expect("finishedAt")
            .parse()
            .expect("finishedAt");
        let took = finished.duration_since(deadline) + jiff::SignedDuration::from_secs(grace);
        eprintln!("{pod} stopped {:.1}s after its delete", took.as_secs_f64());
        assert!(
            took < jiff::SignedDuration::from_secs(grace),
            "{pod} took {took:?} to stop"
        );
    }
    drop(watch);
    // The grant lived through the rollout, and the new pods end it.
    let new = release.ready_pods();
    assert!(new.iter().all(|p| !old.contains(p)), "{new:?} vs {old:?}");
    release.wait_leader(&new).await;
    release.wait_phase("held", Phase::Active).await;
    release.end_early("held").await;
    release.uninstall();
}

async fn uninstall_runs_the_drain_job() {
    let release = Release::install("node-drain").await;
    release.wait_leader(&release.ready_pods()).await;
    // Asked before `active` is approved: one validated after it would be refused (one
    // grant per person and role).
    release.request("pending", "");
    release.wait_phase("pending", Phase::AwaitingApproval).await;
    release.active_for_an_hour("active").await;
    // Every pod of the release: the controller's, listed at once, say the watch works
    // before the uninstall; the drain Job's come later.
    let watch = Watch::start(&[
        "pods",
        "-n",
        &release.ns,
        "-l",
        &format!("app.kubernetes.io/instance={}", release.name),
    ]);
    watch.wait_listed(2).await;
    let said = succeeded(&run(helm(&[
        "uninstall",
        &release.name,
        "-n",
        &release.ns,
        "--wait",
        "--timeout=5m",
    ])));
    assert!(said.contains("uninstalled"), "{said}");
    // The pre-delete Job's pod ran on the node, to completion, with status 0, at the
    // first attempt (backoffLimit would hide a failed one).
    let drain_pods: Vec<Value> = watch
        .seen()
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "drain")
        .collect();
    assert!(
        !drain_pods.iter().any(|p| p["status"]["phase"] == "Failed"),
        "a drain pod failed: {drain_pods:#?}"
    );
    let drained: Vec<Value> = drain_pods
        .into_iter()
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .collect();
    let pod = drained
        .first()
        .unwrap_or_else(|| panic!("no drain pod Succeeded; the watch saw: {:#?}", watch.seen()));
    assert_eq!(pod["status"]["hostIP"], NODE_IP.to_string());
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    drop(watch);
    // What it did: the active grant revoked, the pending request cancelled, the records
    // kept without their finalizers.
    let active = release.wait_phase("active", Phase::Revoked).await;
    assert!(release.grants().await.is_empty(), "nothing granted is left");
    assert_eq!(release.outcome("active").await, "SUCCEEDED Revoked");
    let pending = release.wait_phase("pending", Phase::Revoked).await;
    assert_eq!(release.outcome("pending").await, "SUCCEEDED Cancelled");
    for r in [&active, &pending] {
        assert!(!r.finalizers().iter().any(|f| f == FINALIZER));
    }
    // The controller's pods stop (gracefully: the uninstall does not wait for them).
    eventually("the controller's pods to be gone", GRACE + WAIT, || {
        let left: Vec<String> = release.pods().iter().map(|p| name(p).to_owned()).collect();
        async move {
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("left: {left:?}")),
            }
        }
    })
    .await;
}
