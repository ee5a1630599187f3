//! A real single-node cluster, started once per test run inside the sandbox of
//! `hack/node/sandbox.sh` (a network, PID and mount namespace of its own): etcd and
//! kube-apiserver (listening at the `kubernetes` Service's IP, 10.96.0.1:443, since no
//! kube-proxy runs), kube-scheduler, kube-controller-manager and a kubelet built from the
//! pinned `k8s.io/kubernetes` module, containerd and runc from Debian with the bridge
//! CNI plugin and host-local IPAM, a locally built pause image, and moto on every
//! address of the namespace (the pods reach it at the node's IP).
//!
//! Settings the node needs on this kind of machine (each found by trying without it):
//! cgroup v1 with the cgroupfs driver and no per-QoS cgroups, no swap check, the node IP
//! on `lo` (no `dummy` links here), and `restrict_oom_score_adj` in containerd (root has
//! no CAP_SYS_RESOURCE); image GC off, so the only copy of an image built here is never
//! collected.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::aws::Moto;
use crate::support::kube::{KubeStack, Options, User, exited};
use crate::support::procs;

pub const NODE_NAME: &str = "aws-jit-node";
/// The node's address, on `lo` in the sandbox's network namespace.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
/// The `kubernetes` Service's ClusterIP (the first of the service range), where the
/// apiserver listens: the pods' in-cluster configuration dials it directly.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const SERVICE_CIDR: &str = "10.96.0.0/24";
const POD_SUBNET: &str = "10.88.0.0/24";
pub const PAUSE_IMAGE: &str = "localhost/aws-jit-pause:1";
/// The operator's image as the tests run it (`imagePullPolicy: Never`).
pub const IMAGE_REPOSITORY: &str = "localhost/aws-jit";
pub const IMAGE_TAG: &str = "node-test";

const START_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Cluster {
    pub kube: KubeStack,
    pub aws: Moto,
    dir: PathBuf,
    runtime: PathBuf,
    bin_dir: PathBuf,
    pids: Vec<(&'static str, u32)>,
}

fn env_path(name: &str, hint: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set: {hint}"))
}

impl Cluster {
    /// Starts everything and returns once the node is Ready, both images are in
    /// containerd and the controller manager has published the cluster's CA.
    pub fn start(binary: &Path) -> Cluster {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let tools = "run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)";
        let runtime = env_path("AWS_JIT_NODE_RUNTIME", tools);
        let bin_dir = env_path("AWS_JIT_BIN_DIR", tools);
        let dir = env_path(
            "AWS_JIT_NODE_DIR",
            "the node runs only inside hack/node/sandbox.sh",
        );
        let kube = KubeStack::start_with(Options {
            address: SERVICE_IP,
            port: Some(443),
            service_cidr: SERVICE_CIDR,
            node: Some(NODE_NAME),
        });
        let aws = Moto::start_at(Ipv4Addr::UNSPECIFIED, NODE_IP);
        let mut cluster = Cluster {
            kube,
            aws,
            dir,
            runtime,
            bin_dir,
            pids: Vec::new(),
        };
        cluster.start_containerd(deadline);
        cluster.import_images(binary);
        cluster.start_control_plane();
        cluster.start_kubelet();
        cluster.wait_ready(deadline);
        eprintln!(
            "node: {NODE_NAME} Ready in {:.1?} ({})",
            started.elapsed(),
            cluster.dir.display()
        );
        cluster
    }

    fn usr(&self, path: &str) -> PathBuf {
        self.runtime.join("root/usr").join(path)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// PATH for containerd: its shims and runc come from the unpacked packages.
    fn path(&self) -> String {
        format!(
            "{}:{}:{}",
            self.usr("bin").display(),
            self.usr("sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) {
        cmd.env("PATH", self.path());
        let log = self.log(name);
        let pid = procs::spawn_service(cmd, log).unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.pids.push((name, pid));
    }

    /// The log of one of the node's processes.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Panics with the tail of each log when one of the node's processes has died.
    pub fn assert_running(&self) {
        for (name, pid) in &self.pids {
            if exited(*pid) {
                panic!(
                    "{name} (pid {pid}) exited; tail of its log:\n{}",
                    tail(&self.log(name), 40)
                );
            }
        }
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn start_containerd(&mut self, deadline: Instant) {
        let d = self.dir.display().to_string();
        let cni = format!(
            r#"{{"cniVersion": "0.4.0", "name": "aws-jit-pods", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "dataDir": "{d}/cni/ipam",
              "ranges": [[{{"subnet": "{POD_SUBNET}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}
]}}"#
        );
        self.write("cni/net.d/10-aws-jit.conflist", &cni);
        let config = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{d}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
"#,
            sock = self.sock().display(),
            cni_bin = self.usr("lib/cni").display(),
            runc = self.usr("sbin/runc").display(),
        );
        let path = self.write("containerd/config.toml", &config);
        let mut cmd = Command::new(self.usr("bin/containerd"));
        cmd.arg("--config").arg(path);
        self.spawn("containerd", cmd);
        loop {
            let out = self.ctr(&["version"]);
            if out.status.success() {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Paces the polling; the condition is containerd answering.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr` against the node's containerd, in the kubelet's namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(self.usr("bin/ctr"))
            .arg("--address")
            .arg(self.sock())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn import_images(&self, binary: &Path) {
        let build = |kind: &str, bin: &Path, reference: &str| {
            let out = self.dir.join(format!("{kind}.oci.tar"));
            crate::image::build(kind, bin, reference, &out);
            let said = self.ctr(&["images", "import", &out.to_string_lossy()]);
            assert!(
                said.status.success(),
                "ctr images import {kind}: {}{}",
                String::from_utf8_lossy(&said.stdout),
                String::from_utf8_lossy(&said.stderr)
            );
        };
        build("pause", &self.runtime.join("pause"), PAUSE_IMAGE);
        build(
            "aws-jit",
            binary,
            &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
        );
        let listed = self.ctr(&["images", "ls", "-q"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        for image in [
            PAUSE_IMAGE.to_owned(),
            format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
        ] {
            assert!(
                listed.lines().any(|l| l == image),
                "{image} is not in containerd after the import: {listed}"
            );
        }
    }

    fn start_control_plane(&mut self) {
        let kube_dir = self.kube.dir().to_path_buf();
        let file = |name: &str| kube_dir.join(name).display().to_string();
        let mut scheduler = Command::new(self.bin_dir.join("kube-scheduler"));
        scheduler
            .arg(format!(
                "--kubeconfig={}",
                self.kube
                    .component_kubeconfig("system:kube-scheduler")
                    .display()
            ))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=10259");
        self.spawn("kube-scheduler", scheduler);
        let mut kcm = Command::new(self.bin_dir.join("kube-controller-manager"));
        kcm.arg(format!(
            "--kubeconfig={}",
            self.kube
                .component_kubeconfig("system:kube-controller-manager")
                .display()
        ))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=10257")
        // Published to every namespace as kube-root-ca.crt, which projected
        // service-account volumes mount.
        .arg(format!("--root-ca-file={}", file("ca.crt")))
        .arg(format!(
            "--service-account-private-key-file={}",
            file("sa.key")
        ))
        // Each controller as its own ServiceAccount, with its system:controller:* role
        // (the system:kube-controller-manager role alone lets it do little else).
        .arg("--use-service-account-credentials=true")
        // No node IPAM: the CNI plugin's host-local range gives the pods their IPs.
        .arg("--controllers=*,-node-ipam-controller");
        self.spawn("kube-controller-manager", kcm);
    }

    fn start_kubelet(&mut self) {
        let d = self.dir.display().to_string();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: AlwaysAllow
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1%"
  nodefs.available: "1%"
  imagefs.available: "1%"
podLogsDir: {d}/kubelet/pod-logs
volumePluginDir: {d}/kubelet/volume-plugins
resolvConf: ""
clusterDomain: cluster.local
maxPods: 30
serializeImagePulls: false
"#,
            sock = self.sock().display(),
            ca = self.kube.ca_file().display(),
        );
        let path = self.write("kubelet/config.yaml", &config);
        let mut cmd = Command::new(self.bin_dir.join("kubelet"));
        cmd.arg(format!("--config={}", path.display()))
            .arg(format!(
                "--kubeconfig={}",
                self.kube
                    .component_kubeconfig(&format!("system:node:{NODE_NAME}"))
                    .display()
            ))
            .arg(format!("--root-dir={d}/kubelet/root"))
            .arg(format!("--cert-dir={d}/kubelet/pki"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg(format!("--hostname-override={NODE_NAME}"));
        self.spawn("kubelet", cmd);
    }

    fn wait_ready(&self, deadline: Instant) {
        loop {
            self.assert_running();
            let node = self.kube.kubectl(
                User::Admin,
                &[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            );
            let ca = self.kube.kubectl(
                User::Admin,
                &["get", "configmap", "kube-root-ca.crt", "-n", "default"],
            );
            let sa = self.kube.kubectl(
                User::Admin,
                &["get", "serviceaccount", "default", "-n", "default"],
            );
            let ready = String::from_utf8_lossy(&node.stdout) == "True";
            if ready && ca.status.success() && sa.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node was not Ready in {START_TIMEOUT:?} (Ready={:?} {}); kubelet:\n{}",
                String::from_utf8_lossy(&node.stdout),
                String::from_utf8_lossy(&node.stderr),
                tail(&self.log("kubelet"), 40)
            );
            // Paces the polling; the condition is the node's Ready condition.
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
