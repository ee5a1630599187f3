//! The README's sandbox tour, run as written: the sandbox of `make sandbox` set up on
//! this run's stack (tests/support/sandbox.rs), the tour's shell block extracted from
//! README.md and run with bash, as the people it names, with the built `kubectl-jit`,
//! the Go-built kubectl and the AWS CLI on their PATH. Then what the tour claims is
//! checked: carol's approval counted, the grant made in the role's trust policy and
//! used through the AWS CLI's `credential_process`, and nothing left after the revoke.
use aws_jit::crd::{AccessRequest, Phase};
use kube::api::Api;

use crate::support::kube::User;
use crate::support::sandbox::{Options, ROLE_NAME, Sandbox};
use crate::support::{stack, unique};

const README: &str = include_str!("../../README.md");
const START: &str = "<!-- sandbox-tour -->";
const END: &str = "<!-- /sandbox-tour -->";
/// Where the README says the sandbox writes the users' files.
const README_DIR: &str = "/tmp/aws-jit-sandbox";

/// The shell lines of the tour: every ```sh block between the markers, minus the
/// `make sandbox` line (the sandbox is already up here).
fn tour() -> String {
    let start = README
        .find(START)
        .expect("README has the sandbox tour's start marker");
    let end = README[start..]
        .find(END)
        .map(|e| start + e)
        .expect("README has the sandbox tour's end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in README[start..end].lines() {
        match line.trim() {
            "```sh" => in_block = true,
            "```" => in_block = false,
            l if in_block && !l.starts_with("make sandbox") => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        script.contains("kubectl jit"),
        "the tour shows the plugin: {script}"
    );
    script
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_tour_runs_as_written_in_the_sandbox() {
    let stack = stack();
    let script = tour();
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users");
    let plugin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubectl-jit"));
    let sandbox = Sandbox::start(
        stack,
        Options {
            namespace: unique("sandbox"),
            dir: users.clone(),
            watch_only_namespace: true,
            plugin_dir: plugin.parent().expect("plugin dir").to_path_buf(),
            other_methods: false,
        },
    )
    .await;
    // The users' files hold bearer tokens (the admin's is system:masters) and AWS keys:
    // the person's only, the directory too.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&users), 0o700, "{}", users.display());
        for entry in std::fs::read_dir(&users).expect("read the users' dir") {
            let path = entry.expect("entry").path();
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is readable by others",
                path.display()
            );
        }
    }
    let script = script.replace(README_DIR, &users.display().to_string());
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .output()
        .await
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture (and for a failing assertion below).
    println!("--- the tour's stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "the README's tour failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );

    let api: Api<AccessRequest> =
        Api::namespaced(stack.kube.client(User::Admin).await, &sandbox.namespace);
    let request = api.get("fix-billing").await.expect("the tour's request");
    let status = request.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Revoked), "{status:?}");
    let approvals = status.approvals.unwrap_or_default();
    assert!(
        approvals.iter().any(|a| a.approver == "carol"),
        "carol's approval: {approvals:?}"
    );
    let session = status
        .access
        .map(|a| a.session_name)
        .filter(|s| !s.is_empty())
        .or_else(|| request.metadata.uid.clone().map(|u| format!("ar-{u}")))
        .expect("a session name");
    // The AWS CLI got the role through the plugin's credential_process.
    assert!(
        stdout.contains(&format!("assumed-role/{ROLE_NAME}/{session}")),
        "the tour's aws sts get-caller-identity shows the granted session {session}:\n{stdout}"
    );
    // The trust policy the tour showed held alice's statement; the revoke removed it.
    assert!(
        stdout.contains("arn:aws:iam::123456789012:user/alice"),
        "the tour showed alice's statement in the trust policy:\n{stdout}"
    );
    let iam = aws_sdk_iam::Client::new(&stack.aws.sdk_config().await);
    let doc = iam
        .get_role()
        .role_name(ROLE_NAME)
        .send()
        .await
        .expect("get role")
        .role
        .map(|r| r.assume_role_policy_document.unwrap_or_default())
        .unwrap_or_default();
    let doc = aws_jit::grant::trust_policy::document::parse(&doc).expect("trust policy");
    let uid = request.metadata.uid.clone().unwrap_or_default();
    assert!(
        !aws_jit::grant::trust_policy::document::to_json(&doc).contains(&uid.replace('-', "")),
        "the revoked grant's statement is gone"
    );
    sandbox.stop().await;
}
