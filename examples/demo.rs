//! The README's demo: one request's whole life on the local stack. A role admin
//! defines an AccessRole, alice asks for it with kubectl, carol approves with the
//! documented kubectl command, the operator grants access through the shipped state
//! machine (running on moto), the role's trust policy holds an expiring statement,
//! and when the duration is over it is revoked. A second request is ended early with
//! the revoke action. Then one request each for the other two grant methods: an IAM
//! Identity Center permission set and an IAM group, made and removed by the state machine
//! itself. Everything started here stops when the demo exits.
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aws_jit::crd::{AccessRequest, Phase};
use kube::api::Api;
use support::kube::User;

fn show(title: &str, out: std::process::Output) {
    println!("\n=== {title}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
}

async fn wait_phase(api: &Api<AccessRequest>, name: &str, phase: Phase, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = api
            .get(name)
            .await
            .ok()
            .and_then(|r| r.status)
            .and_then(|s| s.phase);
        if now == Some(phase) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {phase:?} within {within:?} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn print_trust_policy(iam: &aws_sdk_iam::Client, role: &str) {
    let got = iam
        .get_role()
        .role_name(role)
        .send()
        .await
        .expect("get role");
    let raw = got
        .role()
        .and_then(|r| r.assume_role_policy_document())
        .unwrap_or_default();
    let doc = aws_jit::grant::trust_policy::document::parse(raw).expect("trust policy");
    let pretty: serde_json::Value =
        serde_json::from_str(&aws_jit::grant::trust_policy::document::to_json(&doc))
            .unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&pretty).unwrap_or_default()
    );
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let stack = support::stack();
    println!(
        "local stack up in {:.1}s: kube-apiserver {} , moto {}",
        started.elapsed().as_secs_f64(),
        stack.kube.server(),
        stack.aws.endpoint
    );
    // What the other two grant methods grant: a permission set of Identity Center (in
    // moto's instance) and an IAM group, both named to the stack as managed.
    let sdk = stack.aws.sdk_config().await;
    let sso = aws_sdk_ssoadmin::Client::new(&sdk);
    let instance = sso.list_instances().send().await.expect("list instances");
    let instance = instance.instances()[0].clone();
    let instance_arn = instance.instance_arn().expect("instance").to_string();
    let store_id = instance.identity_store_id().expect("store").to_string();
    let permission_set = sso
        .create_permission_set()
        .instance_arn(&instance_arn)
        .name("AdminAccess")
        .send()
        .await
        .expect("create permission set")
        .permission_set()
        .and_then(|p| p.permission_set_arn())
        .expect("permission set arn")
        .to_string();
    let iam = aws_sdk_iam::Client::new(&sdk);
    iam.create_group()
        .group_name("admins")
        .path("/jit/")
        .send()
        .await
        .expect("create group");
    let group_arn = format!("arn:aws:iam::{}:group/jit/admins", support::aws::ACCOUNT_ID);
    let aws = stack
        .aws
        .deploy_with_params(
            "demo",
            &[],
            &[
                ("IdentityCenterInstanceArn", &instance_arn),
                ("IdentityStoreId", &store_id),
                ("ManagedPermissionSetArns", &permission_set),
                ("ManagedAccountIds", "111111111111"),
                ("ManagedGroupArns", &group_arn),
            ],
        )
        .await;
    println!("\n=== AWS side deployed into moto through CloudFormation (deploy/aws/aws-jit.yaml)");
    println!("state machine : {}", aws.state_machine_arn);
    println!(
        "request queue : {}\nwork queue    : {}\nalert queue   : {}",
        aws.request_queue_url, aws.work_queue_url, aws.alert_queue_url
    );

    // The AWS role people may get, with a trust policy of its own.
    let base = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Ec2","Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.create_role()
        .role_name("prod-admin")
        .assume_role_policy_document(base)
        .send()
        .await
        .expect("create role");

    // The operator, with its own identity, the same code the `controller` subcommand runs.
    let kube_ns = stack.kube.create_namespace("team-billing").await;
    let operator_kube = stack.kube.client(User::Operator).await;
    let config = aws.operator_config(Some(kube_ns.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn({
        let sdk = sdk.clone();
        async move {
            aws_jit::run::operator::run(operator_kube, &sdk, config, async move {
                let _ = stopped.await;
            })
            .await
        }
    });

    let kube = &stack.kube;
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples");
    show(
        "a role admin defines the AccessRole (deploy/samples/accessrole.yaml)",
        kube.kubectl(
            User::Admin,
            &["apply", "-f", &format!("{samples}/accessrole.yaml")],
        ),
    );
    let request = String::from(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: fix-billing-outage\n\
         spec:\n  role: prod-admin\n  requester: alice\n  requesterGroup: developers\n  duration: 20s\n  reason: \"Billing job stuck, INC-4711\"\n  ticket: INC-4711\n",
    );
    show(
        "alice asks for 20 seconds of prod-admin (kubectl create, as alice)",
        kube.kubectl_stdin(
            User::Alice,
            &["create", "-n", &kube_ns, "-f", "-"],
            &request,
        ),
    );
    let api: Api<AccessRequest> = Api::namespaced(stack.kube.client(User::Admin).await, &kube_ns);
    wait_phase(
        &api,
        "fix-billing-outage",
        Phase::AwaitingApproval,
        Duration::from_secs(60),
    )
    .await;
    show(
        "the request waits for an approver",
        kube.kubectl(User::Alice, &["get", "ar", "-n", &kube_ns]),
    );
    show(
        "alice cannot approve her own request (admission policy)",
        kube.kubectl(
            User::Alice,
            &["patch", "ar", "fix-billing-outage", "-n", &kube_ns, "--subresource=status", "--type=json",
              "-p", r#"[{"op":"add","path":"/status/approvals/-","value":{"approver":"alice","decision":"Approve"}}]"#],
        ),
    );
    show(
        "carol approves (the README's command)",
        kube.kubectl(
            User::Carol,
            &["patch", "ar", "fix-billing-outage", "-n", &kube_ns, "--subresource=status", "--type=json",
              "-p", r#"[{"op":"add","path":"/status/approvals/-","value":{"approver":"carol","decision":"Approve","comment":"go ahead"}}]"#],
        ),
    );
    wait_phase(
        &api,
        "fix-billing-outage",
        Phase::Active,
        Duration::from_secs(60),
    )
    .await;
    show(
        "access is granted",
        kube.kubectl(User::Alice, &["get", "ar", "-n", &kube_ns]),
    );
    show(
        "alice reads how to use it (status.access: the session name and source identity the role requires)",
        kube.kubectl(
            User::Alice,
            &[
                "get",
                "ar",
                "fix-billing-outage",
                "-n",
                &kube_ns,
                "-o",
                "jsonpath={.status.access.assumeRoleCommand}{\"\\n\\n\"}{.status.access.profile}",
            ],
        ),
    );
    println!("\n=== the role's trust policy in AWS now holds an expiring statement for alice:");
    print_trust_policy(&iam, "prod-admin").await;
    println!(
        "\n(AWS itself refuses the statement after aws:CurrentTime passes the expiry, even if every revoke were lost.)"
    );
    let uid = api
        .get("fix-billing-outage")
        .await
        .ok()
        .and_then(|r| r.metadata.uid)
        .unwrap_or_default();
    let policy = aws_jit::grant::trust_policy::session::policy_name(&uid);
    println!(
        "\n=== and the execution put {policy} on the role: it ends the request's live sessions at the expiry"
    );
    if let Ok(out) = iam
        .get_role_policy()
        .role_name("prod-admin")
        .policy_name(&policy)
        .send()
        .await
    {
        let doc = aws_jit::grant::trust_policy::document::decode_json(out.policy_document())
            .unwrap_or_default();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }

    println!("\n=== waiting for the 20 seconds to run out...");
    wait_phase(
        &api,
        "fix-billing-outage",
        Phase::Expired,
        Duration::from_secs(90),
    )
    .await;
    show(
        "the request has expired",
        kube.kubectl(User::Alice, &["get", "ar", "-n", &kube_ns]),
    );
    println!("\n=== and the statement is gone from the trust policy:");
    print_trust_policy(&iam, "prod-admin").await;
    show(
        "what happened, as Events",
        kube.kubectl(
            User::Admin,
            &[
                "get",
                "events",
                "-n",
                &kube_ns,
                "--sort-by=.metadata.creationTimestamp",
                "-o",
                "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
            ],
        ),
    );

    // A second request, ended early with the revoke action.
    let early = request
        .replace("fix-billing-outage", "quick-look")
        .replace("20s", "1h");
    succeeded_quietly(kube.kubectl_stdin(
        User::Alice,
        &["create", "-n", &kube_ns, "-f", "-"],
        &early,
    ));
    wait_phase(
        &api,
        "quick-look",
        Phase::AwaitingApproval,
        Duration::from_secs(60),
    )
    .await;
    succeeded_quietly(kube.kubectl(
        User::Dave,
        &["patch", "ar", "quick-look", "-n", &kube_ns, "--subresource=status", "--type=json",
          "-p", r#"[{"op":"add","path":"/status/approvals/-","value":{"approver":"dave","decision":"Approve"}}]"#],
    ));
    wait_phase(&api, "quick-look", Phase::Active, Duration::from_secs(60)).await;
    show(
        "a second request (1h) is active; alice is done early and revokes it (the README's command)",
        kube.kubectl(
            User::Alice,
            &[
                "patch",
                "ar",
                "quick-look",
                "-n",
                &kube_ns,
                "--subresource=status",
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/status/revocations/-","value":{"requestedBy":"alice","reason":"done"}}]"#,
            ],
        ),
    );
    wait_phase(&api, "quick-look", Phase::Revoked, Duration::from_secs(60)).await;
    show(
        "revoked now, not in an hour",
        kube.kubectl(User::Alice, &["get", "ar", "-n", &kube_ns]),
    );
    print_trust_policy(&iam, "prod-admin").await;

    // The other two methods, one request each: the state machine makes and removes the
    // assignment (membership) itself, on what carol's approval answer names.
    other_methods(
        kube,
        &api,
        &kube_ns,
        &sdk,
        &instance_arn,
        &store_id,
        &group_arn,
    )
    .await;

    let _ = stop.send(());
    let _ = operator.await;
    println!(
        "\ndemo done in {:.1}s; stopping the stack",
        started.elapsed().as_secs_f64()
    );
}

fn succeeded_quietly(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One request of alice's for a permission set of Identity Center, then one for an IAM
/// group, each approved by carol and left to expire.
async fn other_methods(
    kube: &support::kube::KubeStack,
    api: &Api<AccessRequest>,
    ns: &str,
    sdk: &aws_config::SdkConfig,
    instance_arn: &str,
    store_id: &str,
    group_arn: &str,
) {
    let store = aws_sdk_identitystore::Client::new(sdk);
    store
        .create_user()
        .identity_store_id(store_id)
        .user_name("alice")
        .display_name("Alice")
        .name(
            aws_sdk_identitystore::types::Name::builder()
                .given_name("Alice")
                .family_name("Example")
                .build(),
        )
        .emails(
            aws_sdk_identitystore::types::Email::builder()
                .value("alice@example.com")
                .primary(true)
                .build(),
        )
        .send()
        .await
        .expect("create Identity Center user");
    let iam = aws_sdk_iam::Client::new(sdk);
    iam.create_user()
        .user_name("alice")
        .path("/people/")
        .send()
        .await
        .expect("create IAM user");
    let sso = aws_sdk_ssoadmin::Client::new(sdk);
    let roles = [
        (
            "prod-admin-sso",
            format!(
                "  method: IdentityCenter\n  identityCenter:\n    instanceArn: {instance_arn}\n    \
                 identityStoreId: {store_id}\n    permissionSet: AdminAccess\n    \
                 accountIds: ['111111111111']\n    userAttribute: Email\n  \
                 principal: {{template: '{{username}}@example.com'}}\n"
            ),
        ),
        (
            "prod-admins-group",
            format!(
                "  method: IamGroup\n  iamGroup: {{groupArn: '{group_arn}'}}\n  \
                 principal: {{template: 'arn:aws:iam::{}:user/people/{{username}}'}}\n",
                support::aws::ACCOUNT_ID
            ),
        ),
    ];
    for (role, spec) in roles {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {role}\nspec:\n{spec}\
             \x20 approvers: [{{user: carol}}, {{user: dave}}]\n  requesters: [{{group: developers}}]\n  \
             maxDuration: 1h\n  defaultDuration: 20s\n"
        );
        println!("\n=== a role admin defines AccessRole {role}:\n{yaml}");
        succeeded_quietly(kube.kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml));
        let name = format!("{role}-look");
        let request = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n\
             spec:\n  role: {role}\n  requester: alice\n  requesterGroup: developers\n  reason: \"INC-4712\"\n"
        );
        succeeded_quietly(kube.kubectl_stdin(
            User::Alice,
            &["create", "-n", ns, "-f", "-"],
            &request,
        ));
        wait_phase(api, &name, Phase::AwaitingApproval, Duration::from_secs(60)).await;
        succeeded_quietly(kube.kubectl(
            User::Carol,
            &["patch", "ar", &name, "-n", ns, "--subresource=status", "--type=json",
              "-p", r#"[{"op":"add","path":"/status/approvals/-","value":{"approver":"carol","decision":"Approve"}}]"#],
        ));
        wait_phase(api, &name, Phase::Active, Duration::from_secs(60)).await;
        show(
            &format!("alice's {role} request is active; how she uses it (status.access.how)"),
            kube.kubectl(
                User::Alice,
                &[
                    "get",
                    "ar",
                    &name,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.status.access.how}{\"\\n\"}",
                ],
            ),
        );
        print_held(&sso, &iam, instance_arn, role).await;
        println!("\n=== waiting for the 20 seconds to run out...");
        wait_phase(api, &name, Phase::Expired, Duration::from_secs(90)).await;
        println!("expired; and in AWS:");
        print_held(&sso, &iam, instance_arn, role).await;
    }
}

/// What AWS holds for a method: the permission set's assignments, or the group's members.
async fn print_held(
    sso: &aws_sdk_ssoadmin::Client,
    iam: &aws_sdk_iam::Client,
    instance_arn: &str,
    role: &str,
) {
    if role.ends_with("-sso") {
        let sets = sso
            .list_permission_sets()
            .instance_arn(instance_arn)
            .send()
            .await
            .expect("list permission sets");
        for ps in sets.permission_sets() {
            let got = sso
                .list_account_assignments()
                .instance_arn(instance_arn)
                .account_id("111111111111")
                .permission_set_arn(ps)
                .send()
                .await
                .expect("list assignments");
            let who: Vec<&str> = got
                .account_assignments()
                .iter()
                .filter_map(|a| a.principal_id())
                .collect();
            println!("assignments of {ps} in 111111111111: {who:?}");
        }
    } else {
        let got = iam
            .get_group()
            .group_name("admins")
            .send()
            .await
            .expect("get group");
        let members: Vec<&str> = got.users().iter().map(|u| u.user_name()).collect();
        println!("members of group admins: {members:?}");
    }
}
