//! The chart's pods under a real kubelet: the image built here (hack/image/build.py), a
//! single-node cluster (see `cluster`), `helm install --wait`, and the operator's life in
//! its pods: probes, leader election, a request end to end, failover, a rollout's
//! SIGTERM, the PodDisruptionBudget and the drain Job of `helm uninstall`.
//!
//! The whole run happens inside `hack/node/sandbox.sh`: started outside it, this binary
//! runs itself again inside (so plain `cargo test` works, as root). The node starts once,
//! before the first test that needs it, and goes with the sandbox at the end.

// Built without libtest (harness = false), so the #[test] functions of support's own
// unit tests are left out and their imports unused.
#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod chart;
mod cluster;
mod image;

use std::process::{Command, ExitCode};

use libtest_mimic::Arguments;

const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/node/sandbox.sh");

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    let trials = chart::trials();
    let inside = std::env::var_os("AWS_JIT_NODE_SANDBOX").is_some();
    // Listing, or nothing selected: no node needed.
    let any = trials.iter().any(|t| selected(&args, t.name()));
    if !inside && !args.list && any {
        let exe = std::env::current_exe().expect("current exe");
        let mut sandbox = Command::new("bash");
        sandbox
            .arg(SANDBOX)
            .arg(exe)
            .args(std::env::args_os().skip(1));
        // SAFETY: one async-signal-safe call between fork and exec. The sandbox tears
        // down on SIGTERM: so it does when this process is killed outright.
        unsafe {
            use std::os::unix::process::CommandExt;
            sandbox.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = sandbox.status().expect("run hack/node/sandbox.sh");
        return match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        };
    }
    // One node, one test at a time: each test has a release of its own, but the pods
    // of several at once would share two cores with moto.
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials).exit_code()
}

/// Whether libtest's filter (`cargo test -- FILTER`, `--exact`, `--skip`) selects `name`.
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &str| match args.exact {
        true => name == pattern,
        false => name.contains(pattern),
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}
