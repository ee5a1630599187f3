//! The README's demo: the whole local stack, the project's manifests, a sample
//! AccessRole and AccessRequest, shown with kubectl. Run through `make demo`, which
//! builds the tools first. Everything it starts stops when it exits.
#[path = "../tests/support/mod.rs"]
mod support;

use support::kube::User;

fn show(title: &str, out: std::process::Output) {
    println!("\n=== {title}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
}

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();
    let stack = support::stack();
    println!(
        "local stack up in {:.1}s: kube-apiserver {} , moto {}",
        started.elapsed().as_secs_f64(),
        stack.kube.server(),
        stack.aws.endpoint
    );

    let aws = stack.aws.deploy("demo").await;
    println!("\n=== AWS side deployed into moto through CloudFormation (deploy/aws/aws-jit.yaml)");
    println!("state machine : {}", aws.state_machine_arn);
    println!("request queue : {}", aws.request_queue_url);
    println!("work queue    : {}", aws.work_queue_url);
    println!("alert queue   : {}", aws.alert_queue_url);

    let kube = &stack.kube;
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples");
    show(
        "a role admin defines the AccessRole",
        kube.kubectl(
            User::Admin,
            &["apply", "-f", &format!("{samples}/accessrole.yaml")],
        ),
    );
    let ns = kube.create_namespace("team-billing").await;
    show(
        "alice asks for it (kubectl apply as alice)",
        kube.kubectl(
            User::Alice,
            &[
                "apply",
                "-n",
                &ns,
                "-f",
                &format!("{samples}/accessrequest.yaml"),
            ],
        ),
    );
    show(
        "kubectl get accessroles",
        kube.kubectl(User::Alice, &["get", "accessroles"]),
    );
    show(
        "kubectl get ar",
        kube.kubectl(User::Alice, &["get", "ar", "-n", &ns]),
    );
    show(
        "alice cannot ask in bob's name (admission policy)",
        kube.kubectl_stdin(
            User::Alice,
            &["create", "-n", &ns, "-f", "-"],
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata: {name: for-bob}\n\
             spec: {role: prod-admin, requester: bob, reason: sneaky}\n",
        ),
    );
    show(
        "a malformed duration is refused by the CRD's CEL rules",
        kube.kubectl_stdin(
            User::Alice,
            &["create", "-n", &ns, "-f", "-"],
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata: {name: forever}\n\
             spec: {role: prod-admin, requester: alice, duration: forever}\n",
        ),
    );
    show(
        "carol cannot approve in dave's name (admission policy)",
        kube.kubectl(
            User::Carol,
            &[
                "patch",
                "ar",
                "fix-billing-outage",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"approvals":[{"approver":"dave","decision":"Approve"}]}}"#,
            ],
        ),
    );
    println!(
        "\nApproval, grant and expiry arrive with the controller (`aws-jit controller`, next milestone)."
    );
    println!(
        "demo done in {:.1}s; stopping the stack",
        started.elapsed().as_secs_f64()
    );
}
