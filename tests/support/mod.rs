//! Test support shared by the integration tests and the demo: one local stack
//! (etcd + kube-apiserver + moto) per process, started on first use, torn down at exit.
#![allow(dead_code)]

pub mod aws;
pub mod gitops;
pub mod kube;
pub mod measure;
pub mod outage;
pub mod policy_eval;
pub mod procs;
pub mod project;
pub mod sandbox;
pub mod slack;
pub mod slack_interactions;
pub mod slack_socket;
pub mod stale_iam;
pub mod throttle;
pub mod wait;

use std::sync::OnceLock;

/// The whole local stack. Plain data only (endpoints, paths, tokens): every test builds
/// its own clients, because `#[tokio::test]` gives each test its own runtime and a client
/// must not outlive the runtime it was made on.
pub struct Stack {
    pub kube: kube::KubeStack,
    pub aws: aws::Moto,
}

impl Stack {
    /// `aws-jit <subcommand>`, the binary in the target directory of the running
    /// example (built first by hack/bench.sh, hack/relay-bench.sh), with the
    /// environment of an operator pod on this stack: the operator's kubeconfig, moto as
    /// AWS, `RUST_LOG=info`, nothing inherited but `PATH`.
    pub fn operator_command(&self, subcommand: &str) -> std::process::Command {
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe
            .parent()
            .and_then(std::path::Path::parent)
            .map(|d| d.join("aws-jit"))
            .expect("target dir");
        assert!(
            bin.is_file(),
            "{} is missing: build it first (`cargo build --bin aws-jit`, which the hack/ scripts do)",
            bin.display()
        );
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg(subcommand)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", self.kube.kubeconfig(kube::User::Operator))
            .env("AWS_ENDPOINT_URL", &self.aws.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", aws::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            // Tests run several binaries at once: no fixed probe port.
            .env("AWS_JIT_METRICS_ADDR", "127.0.0.1:0");
        cmd
    }
}

static STACK: OnceLock<Result<Stack, String>> = OnceLock::new();

/// The stack of this process, started on first call. Panics with a clear message when a
/// part cannot start: the tests that need the stack fail loudly, they never skip. A
/// failed start is remembered, so every later test fails at once with the same reason
/// instead of starting another stack.
pub fn stack() -> &'static Stack {
    let started = STACK.get_or_init(|| {
        install_crypto_provider();
        std::panic::catch_unwind(|| {
            let (kube, aws) = std::thread::scope(|s| {
                let k = s.spawn(kube::KubeStack::start);
                let a = s.spawn(aws::Moto::start);
                (
                    k.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    a.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                )
            });
            project::install(&kube);
            Stack { kube, aws }
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    });
    match started {
        Ok(stack) => stack,
        Err(reason) => panic!("the local stack did not start: {reason}"),
    }
}

/// The stdout of a command that must succeed; panics with its stderr otherwise.
#[track_caller]
pub fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that a command failed and said `needle` (in stdout or stderr).
#[track_caller]
pub fn refused(out: &std::process::Output, needle: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "expected a refusal saying {needle:?}, but it succeeded: {text}"
    );
    assert!(
        text.contains(needle),
        "refused, but without {needle:?}: {text}"
    );
}

/// The same crypto provider the binary installs (see `aws_jit::install_crypto_provider`).
pub fn install_crypto_provider() {
    aws_jit::install_crypto_provider();
}

/// A short random suffix for names that must not collide between tests or runs.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{n}", t % 0xfffff)
}
