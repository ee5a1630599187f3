//! `make sandbox`: the local stack (kube-apiserver + etcd, moto running the shipped state
//! machine) with the operator running, the sample AccessRoles (one per grant method), and files to
//! become each sample user, for trying aws-jit and the `kubectl jit` plugin by hand.
//! Stays up until Ctrl-C (or SIGTERM), then stops everything it started.
//!
//! `AWS_JIT_SANDBOX_DIR` (default `/tmp/aws-jit-sandbox`) is where the users' files go;
//! `AWS_JIT_SANDBOX_NAMESPACE` (default `team-billing`) the namespace they work in.
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Instant;

use support::sandbox::{Options, PEOPLE, Sandbox};

#[tokio::main]
async fn main() {
    let dir = PathBuf::from(
        std::env::var_os("AWS_JIT_SANDBOX_DIR").unwrap_or_else(|| "/tmp/aws-jit-sandbox".into()),
    );
    let namespace =
        std::env::var("AWS_JIT_SANDBOX_NAMESPACE").unwrap_or_else(|_| "team-billing".into());
    if let Some(pid) = running_sandbox(&dir) {
        eprintln!(
            "another sandbox (pid {pid}) uses {}: stop it first (Ctrl-C in its terminal), or set AWS_JIT_SANDBOX_DIR",
            dir.display()
        );
        std::process::exit(1);
    }
    // Watched from the start: a Ctrl-C (or a closed terminal) while the stack comes up
    // would otherwise kill this process before it cleans up (the users' files with
    // their tokens and keys left behind); now the sandbox comes up, then stops at once.
    let mut stop = Stop::watch();
    let started = Instant::now();
    let stack = support::stack();
    // The plugin sits beside this example's directory: target/<profile>/kubectl-jit.
    let plugin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(|d| d.parent()).map(PathBuf::from))
        .unwrap_or_default();
    let sandbox = Sandbox::start(
        stack,
        Options {
            namespace,
            dir: dir.clone(),
            watch_only_namespace: false,
            plugin_dir: plugin_dir.clone(),
            other_methods: true,
        },
    )
    .await;
    let pid_file = dir.join("pid");
    if let Err(e) = std::fs::write(&pid_file, std::process::id().to_string()) {
        eprintln!("cannot write {}: {e}", pid_file.display());
    }
    if !plugin_dir.join("kubectl-jit").is_file() {
        eprintln!(
            "note: {} has no kubectl-jit: `cargo build --bin kubectl-jit` (make sandbox does)",
            plugin_dir.display()
        );
    }

    println!(
        "\naws-jit sandbox up in {:.0}s: kube-apiserver {}, moto {} (AWS account {}).",
        started.elapsed().as_secs_f64(),
        stack.kube.server(),
        stack.aws.endpoint,
        support::aws::ACCOUNT_ID,
    );
    println!(
        "The operator runs here, with the samples of deploy/samples/ (kubectl get accessroles):\n  \
         prod-admin         TrustPolicy     IAM role {}\n  \
         prod-admin-sso     IdentityCenter  permission set AdminAccess in 111111111111, 222222222222\n  \
         prod-admins-group  IamGroup        IAM group /jit/admins\n",
        support::sandbox::ROLE_NAME
    );
    println!(
        "Become a user in another terminal (namespace {}):",
        sandbox.namespace
    );
    for (user, what) in PEOPLE {
        println!(
            "  source {:<42} # {:<6} {what}",
            sandbox.env_file(user).display(),
            user.name()
        );
    }
    println!(
        "\nor use every user from one kubeconfig: KUBECONFIG={} kubectl --context carol ...",
        dir.join("kubeconfig").display()
    );
    println!("The README's \"Five minutes in the sandbox\" walks through it.");
    println!("\nsandbox ready; Ctrl-C stops it and everything it started.");

    stop.wait().await;
    println!("\nstopping the sandbox...");
    // Bounded, and a second Ctrl-C stops at once: the users' files go and the stack's
    // processes stop at exit either way (an operator stopped the moment it started can
    // hang in its shutdown).
    let stopped = tokio::select! {
        done = tokio::time::timeout(std::time::Duration::from_secs(20), sandbox.stop()) => done.is_ok(),
        () = stop.wait() => false,
    };
    if !stopped {
        eprintln!("the operator did not stop in time: stopping everything now");
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The stack's processes (etcd, kube-apiserver, moto) and its directories go with
    // this process: tests/support/procs.rs stops them at exit.
    println!("stopped");
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed), each handled from the
/// moment it is watched.
struct Stop {
    signals: Vec<tokio::signal::unix::Signal>,
}

impl Stop {
    fn watch() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .filter_map(|kind| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("cannot watch signal {}: {e}", kind.as_raw_value());
                None
            }
        })
        .collect();
        Stop { signals }
    }

    async fn wait(&mut self) {
        if self.signals.is_empty() {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
        let any = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
        let _ = futures::future::select_all(any).await;
    }
}

/// The pid of a live sandbox that owns `dir`, if any.
fn running_sandbox(dir: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
    (alive && pid != std::process::id()).then_some(pid)
}
