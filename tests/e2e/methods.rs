//! The IdentityCenter and IamGroup grant methods end to end: the operator, the real
//! state machine in moto (which makes and removes the assignment or membership itself),
//! Identity Center, the identity store and IAM in moto. What AWS holds (assignments,
//! group members) is what is read: that is what grants access.
use std::time::Duration;

use aws_jit::crd::Phase;
use aws_sdk_ssoadmin::types::{PrincipalType, TargetType};
use serde_json::json;

use crate::controller::Env;
use crate::support::aws::{ACCOUNT_ID, take_messages};
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{stack, succeeded, unique};

const WAIT: Duration = Duration::from_secs(90);
const ACCOUNT_A: &str = "111111111111";
const ACCOUNT_B: &str = "222222222222";

/// One test's Identity Center: moto's instance, a permission set of the test's own, and
/// the clients to read what is assigned.
struct Ic {
    sso: aws_sdk_ssoadmin::Client,
    store: aws_sdk_identitystore::Client,
    instance_arn: String,
    store_id: String,
    ps_arn: String,
    ps_name: String,
}

impl Ic {
    async fn new() -> Ic {
        let sdk = stack().aws.sdk_config().await;
        let sso = aws_sdk_ssoadmin::Client::new(&sdk);
        let instances = sso.list_instances().send().await.expect("list instances");
        let instance = &instances.instances()[0];
        let instance_arn = instance.instance_arn().expect("instance").to_string();
        let store_id = instance.identity_store_id().expect("store").to_string();
        let ps_name = unique("Admin").replace('-', "");
        let ps_name = ps_name[..ps_name.len().min(32)].to_string();
        let ps = sso
            .create_permission_set()
            .instance_arn(&instance_arn)
            .name(&ps_name)
            .send()
            .await
            .expect("create permission set");
        let ps_arn = ps
            .permission_set()
            .and_then(|p| p.permission_set_arn())
            .expect("permission set arn")
            .to_string();
        Ic {
            sso,
            store: aws_sdk_identitystore::Client::new(&sdk),
            instance_arn,
            store_id,
            ps_arn,
            ps_name,
        }
    }

    /// An Identity Center user with email `<name>@<domain>` (also its user name: the
    /// store is shared by every test); its user id.
    async fn user(&self, name: &str, domain: &str) -> String {
        use aws_sdk_identitystore::types::Email;
        self.store
            .create_user()
            .identity_store_id(&self.store_id)
            .user_name(format!("{name}@{domain}"))
            .display_name(name)
            .name(
                aws_sdk_identitystore::types::Name::builder()
                    .given_name(name)
                    .family_name("Test")
                    .build(),
            )
            .emails(
                Email::builder()
                    .value(format!("{name}@{domain}"))
                    .primary(true)
                    .build(),
            )
            .send()
            .await
            .expect("create user")
            .user_id()
            .to_string()
    }

    /// Who holds the test's permission set in `account` (principal ids, sorted).
    async fn assigned(&self, account: &str) -> Vec<String> {
        let got = self
            .sso
            .list_account_assignments()
            .instance_arn(&self.instance_arn)
            .account_id(account)
            .permission_set_arn(&self.ps_arn)
            .send()
            .await
            .expect("list assignments");
        let mut ids: Vec<String> = got
            .account_assignments()
            .iter()
            .filter_map(|a| a.principal_id().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// What an Identity Center admin could do: assign the permission set by hand.
    async fn plant(&self, account: &str, user_id: &str) {
        self.sso
            .create_account_assignment()
            .instance_arn(&self.instance_arn)
            .target_id(account)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(&self.ps_arn)
            .principal_type(PrincipalType::User)
            .principal_id(user_id)
            .send()
            .await
            .expect("create assignment");
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IdentityCenterInstanceArn", self.instance_arn.clone()),
            ("IdentityStoreId", self.store_id.clone()),
            ("ManagedPermissionSetArns", self.ps_arn.clone()),
            ("ManagedAccountIds", format!("{ACCOUNT_A},{ACCOUNT_B}")),
        ]
    }

    /// The AccessRole spec: the permission set by name (the operator looks up its ARN),
    /// users by email.
    fn role_spec(&self, domain: &str) -> String {
        format!(
            "  method: IdentityCenter\n  identityCenter:\n    instanceArn: {}\n    identityStoreId: {}\n    \
             permissionSet: {}\n    accountIds: ['{ACCOUNT_A}', '{ACCOUNT_B}']\n    userAttribute: Email\n  \
             principal: {{template: '{{username}}@{domain}'}}\n",
            self.instance_arn, self.store_id, self.ps_name
        )
    }

    async fn env(&self, prefix: &str, domain: &str) -> Env {
        let params = self.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Env::with_template(prefix, &self.role_spec(domain), &params).await
    }

    async fn wait_assigned(&self, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        eventually("the assignments", WAIT, || {
            let want = want.clone();
            async move {
                let (a, b) = (
                    self.assigned(ACCOUNT_A).await,
                    self.assigned(ACCOUNT_B).await,
                );
                if a == want && b == want {
                    Ok(())
                } else {
                    Err(format!("{ACCOUNT_A}: {a:?}, {ACCOUNT_B}: {b:?}"))
                }
            }
        })
        .await
    }
}

/// A domain of the test's own, so its users' emails are its own in the shared store.
fn domain() -> String {
    format!("{}.example.com", unique("d"))
}

async fn stop_execution(env: &Env, name: &str) {
    let arn = env.execution(name).await.execution_arn().to_string();
    aws_sdk_sfn::Client::new(&env.sdk)
        .stop_execution()
        .execution_arn(arn)
        .error("Mallory")
        .cause("a plain AWS caller stops the execution to keep the access")
        .send()
        .await
        .expect("stop execution");
}

/// alice gets exactly her permission set in exactly the role's accounts for exactly her
/// window, and nothing else: an execution an AWS caller starts by hand, naming mallory,
/// assigns nobody.
#[tokio::test]
async fn identity_center_grants_the_approved_user_for_the_window_only() {
    let ic = Ic::new().await;
    let domain = domain();
    let alice = ic.user("alice", &domain).await;
    let mallory = ic.user("mallory", &domain).await;
    let env = ic.env("ic-grant", &domain).await;

    // The forgery: an execution of the real state machine whose input names mallory as
    // the requester of this very role.
    let forged = aws_sdk_sfn::Client::new(&env.sdk)
        .start_execution()
        .state_machine_arn(&env.aws.state_machine_arn)
        .name(format!("ar-{}", unique("forged")))
        .input(
            json!({"requester_arn": format!("mallory@{domain}"), "requester_name": "mallory",
                "reason": "x", "role_arn": ic.ps_name, "method": "IdentityCenter", "work_group": "",
                "duration_seconds": 600, "approval_timeout_seconds": 600,
                "request": {"namespace": env.ns, "name": "forged", "uid": "forged"}})
            .to_string(),
        )
        .send()
        .await
        .expect("a plain AWS caller starts an execution")
        .execution_arn()
        .to_string();

    env.request(User::Alice, "fix", "  duration: 25s\n");
    env.wait_phase("fix", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "fix", "Approve");
    let active = env.wait_phase_within("fix", Phase::Active, WAIT).await;
    ic.wait_assigned(&[&alice]).await;
    let access = active.status.and_then(|s| s.access).expect("status.access");
    assert_eq!(access.permission_set, ic.ps_name);
    assert_eq!(access.account_ids, vec![ACCOUNT_A, ACCOUNT_B]);
    assert!(access.how.contains("access portal"), "{}", access.how);
    assert!(access.how.contains("session duration"), "{}", access.how);

    env.wait_phase_within("fix", Phase::Expired, WAIT).await;
    ic.wait_assigned(&[]).await;
    // The forged execution never got an approval: it is ended, and mallory was never
    // assigned.
    let sfn = aws_sdk_sfn::Client::new(&env.sdk);
    eventually("the forged execution to end", WAIT, || async {
        let d = sfn
            .describe_execution()
            .execution_arn(&forged)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        match d.status() {
            aws_sdk_sfn::types::ExecutionStatus::Running => Err("RUNNING".to_string()),
            s => Ok(s.clone()),
        }
    })
    .await;
    for account in [ACCOUNT_A, ACCOUNT_B] {
        assert!(!ic.assigned(account).await.contains(&mallory));
    }
}

/// Two requests of alice's for the same permission set share one assignment: the first
/// to end (an early revoke) leaves it for the second; the last (a deletion) removes it.
#[tokio::test]
async fn identity_center_overlapping_grants_share_one_assignment() {
    let ic = Ic::new().await;
    let domain = domain();
    let alice = ic.user("alice", &domain).await;
    let env = ic.env("ic-overlap", &domain).await;
    for name in ["first", "second"] {
        env.request(User::Alice, name, "  duration: 3m\n");
        env.wait_phase(name, Phase::AwaitingApproval).await;
        env.vote(User::Carol, name, "Approve");
    }
    env.wait_phase_within("first", Phase::Active, WAIT).await;
    env.wait_phase_within("second", Phase::Active, WAIT).await;
    ic.wait_assigned(&[&alice]).await;

    env.revoke(User::Alice, "first", "done early");
    env.wait_phase_within("first", Phase::Revoked, WAIT).await;
    // The first revoke has run to its end: the second grant still holds the assignment.
    let first = env.execution("first").await;
    assert_ne!(
        first.status(),
        &aws_sdk_sfn::types::ExecutionStatus::Running
    );
    ic.wait_assigned(&[&alice]).await;

    succeeded(&stack().kube.kubectl(
        User::Alice,
        &[
            "delete",
            "accessrequest",
            "second",
            "-n",
            &env.ns,
            "--wait=false",
        ],
    ));
    env.wait_gone("second").await;
    ic.wait_assigned(&[]).await;
}

/// With the operator gone, the execution still removes the assignment at expiry; so does
/// the cleanup execution when a plain AWS caller stops the flow.
#[tokio::test]
async fn identity_center_ends_without_the_cluster_and_when_its_execution_is_stopped() {
    let ic = Ic::new().await;
    let domain = domain();
    let alice = ic.user("alice", &domain).await;
    let mut env = ic.env("ic-gone", &domain).await;
    env.request(User::Alice, "short", "  duration: 20s\n");
    env.wait_phase("short", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "short", "Approve");
    env.wait_phase_within("short", Phase::Active, WAIT).await;
    ic.wait_assigned(&[&alice]).await;
    env.kill_operator();
    ic.wait_assigned(&[]).await;
    env.start_operator();
    env.wait_phase_within("short", Phase::Expired, WAIT).await;

    // A plain AWS caller stops the flow to keep the access: the cleanup execution,
    // started before the assignment was made, still removes it at the expiry, and the
    // operator records what happened.
    env.request(User::Alice, "stopped", "  duration: 30s\n");
    env.wait_phase("stopped", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "stopped", "Approve");
    env.wait_phase_within("stopped", Phase::Active, WAIT).await;
    ic.wait_assigned(&[&alice]).await;
    stop_execution(&env, "stopped").await;
    ic.wait_assigned(&[]).await;
    let ended = env.wait_phase_within("stopped", Phase::Expired, WAIT).await;
    let message = ended.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("the operator ended access"), "{message}");
}

/// What cannot be granted says why: a requester with no Identity Center user fails
/// with the identity store's reason, nothing assigned; a role naming a permission set
/// that does not exist waits, approved, with a Warning, and answers nothing.
#[tokio::test]
async fn identity_center_failures_say_why_and_grant_nothing() {
    let ic = Ic::new().await;
    let domain = domain();
    let env = ic.env("ic-fail", &domain).await;
    // bob (a developer) has no user in the store.
    env.request(User::Bob, "nobody", "  requesterGroup: developers\n");
    env.wait_phase("nobody", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "nobody", "Approve");
    let failed = env.wait_phase_within("nobody", Phase::Failed, WAIT).await;
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("grant failed"), "{message}");
    assert!(
        message.contains("ResourceNotFound") || message.contains("not found"),
        "{message}"
    );
    ic.wait_assigned(&[]).await;

    // A second role, on a permission set name nobody created.
    let role = unique("ic-missing");
    let spec = ic
        .role_spec(&domain)
        .replace(&ic.ps_name, "NoSuchPermissionSet");
    let yaml = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {role}\nspec:\n{spec}\
         \x20 approvers: [{{user: carol}}]\n  requesters: [{{user: alice}}]\n"
    );
    succeeded(
        &stack()
            .kube
            .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml),
    );
    let request = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: missing\n  namespace: {}\n\
         spec:\n  role: {role}\n  requester: alice\n  reason: e2e\n",
        env.ns
    );
    succeeded(
        &stack()
            .kube
            .kubectl_stdin(User::Alice, &["create", "-f", "-"], &request),
    );
    env.wait_phase("missing", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "missing", "Approve");
    eventually("the approval to wait, saying why", WAIT, || async {
        let r = env
            .requests()
            .get("missing")
            .await
            .map_err(|e| e.to_string())?;
        let message = r.status.and_then(|s| s.message).unwrap_or_default();
        if message.starts_with(
            "approved, but not granted yet: no permission set named \"NoSuchPermissionSet\"",
        ) {
            Ok(())
        } else {
            Err(message)
        }
    })
    .await;
    let r = env.requests().get("missing").await.expect("request");
    assert_eq!(
        r.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
}

/// What an Identity Center admin assigns by hand on a managed permission set, for a user
/// whose request has ended, is removed by the drift sweep, loudly; a live grant stays.
#[tokio::test]
async fn identity_center_drift_is_swept() {
    let ic = Ic::new().await;
    let domain = domain();
    let alice = ic.user("alice", &domain).await;
    let bob = ic.user("bob", &domain).await;
    let env = ic.env("ic-drift", &domain).await;
    env.request(User::Alice, "ended", "  duration: 5m\n");
    env.wait_phase("ended", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "ended", "Approve");
    env.wait_phase_within("ended", Phase::Active, WAIT).await;
    env.revoke(User::Alice, "ended", "done");
    env.wait_phase_within("ended", Phase::Revoked, WAIT).await;
    ic.wait_assigned(&[]).await;
    env.request(
        User::Bob,
        "live",
        "  duration: 5m\n  requesterGroup: developers\n",
    );
    env.wait_phase("live", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "live", "Approve");
    env.wait_phase_within("live", Phase::Active, WAIT).await;
    ic.wait_assigned(&[&bob]).await;

    ic.plant(ACCOUNT_A, &alice).await;
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let url = env.aws.alert_queue_url.clone();
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    eventually("a DriftRemoved finding", WAIT, || async {
        for body in take_messages(&sqs, &url).await? {
            if let Ok(a) = serde_json::from_str::<aws_jit::contract::SecurityAlert>(&body)
                && a.kind == "DriftRemoved"
            {
                seen.borrow_mut().push(a.message);
            }
        }
        seen.borrow()
            .iter()
            .find(|m| m.contains(&alice))
            .cloned()
            .ok_or_else(|| format!("{:?}", seen.borrow()))
    })
    .await;
    assert_eq!(
        ic.assigned(ACCOUNT_A).await,
        vec![bob.clone()],
        "the live grant stays"
    );
    assert_eq!(ic.assigned(ACCOUNT_B).await, vec![bob]);
}

/// One test's IAM group (under /jit/, managed by the stack) and its users.
struct Group {
    iam: aws_sdk_iam::Client,
    name: String,
    arn: String,
}

impl Group {
    async fn new() -> Group {
        let sdk = stack().aws.sdk_config().await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let name = unique("admins");
        iam.create_group()
            .group_name(&name)
            .path("/jit/")
            .send()
            .await
            .expect("create group");
        Group {
            iam,
            arn: format!("arn:aws:iam::{ACCOUNT_ID}:group/jit/{name}"),
            name,
        }
    }

    /// An IAM user for Kubernetes user `who` (`<who>-<test>` under /people/); its name.
    async fn user(&self, who: &str, suffix: &str) -> String {
        let name = format!("{who}-{suffix}");
        self.iam
            .create_user()
            .user_name(&name)
            .path("/people/")
            .send()
            .await
            .expect("create user");
        name
    }

    /// `user` made a member straight in IAM, not by aws-jit.
    async fn add_by_hand(&self, user: &str) {
        self.iam
            .add_user_to_group()
            .group_name(&self.name)
            .user_name(user)
            .send()
            .await
            .expect("add to group");
    }

    async fn members(&self) -> Vec<String> {
        let got = self
            .iam
            .get_group()
            .group_name(&self.name)
            .send()
            .await
            .expect("get group");
        let mut names: Vec<String> = got
            .users()
            .iter()
            .map(|u| u.user_name().to_string())
            .collect();
        names.sort();
        names
    }

    async fn wait_members(&self, want: &[&str]) {
        eventually("the group's members", WAIT, || async {
            let got = self.members().await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await
    }

    async fn env(&self, prefix: &str, suffix: &str) -> Env {
        self.env_managing(prefix, suffix, &[]).await
    }

    /// The role's admin points `env`'s AccessRole at this group.
    fn move_role_here(&self, env: &Env) {
        let patch = json!({"spec": {"iamGroup": {"groupArn": self.arn}}}).to_string();
        succeeded(&stack().kube.kubectl(
            User::Admin,
            &[
                "patch",
                "accessrole",
                &env.access_role,
                "--type",
                "merge",
                "-p",
                &patch,
            ],
        ));
    }

    /// [`Group::env`], with the stack managing `others` too.
    async fn env_managing(&self, prefix: &str, suffix: &str, others: &[&Group]) -> Env {
        let spec = format!(
            "  method: IamGroup\n  iamGroup: {{groupArn: '{}'}}\n  \
             principal: {{template: 'arn:aws:iam::{ACCOUNT_ID}:user/people/{{username}}-{suffix}'}}\n",
            self.arn
        );
        let managed: Vec<&str> = std::iter::once(self.arn.as_str())
            .chain(others.iter().map(|g| g.arn.as_str()))
            .collect();
        Env::with_template(prefix, &spec, &[("ManagedGroupArns", &managed.join(","))]).await
    }
}

/// alice's IAM user is in the group for her window only; two overlapping requests share
/// one membership (the first to end leaves it, the last removes it); deleting an active
/// request removes it; with the operator gone the execution still removes it.
#[tokio::test]
async fn iam_group_membership_lasts_the_window_and_overlaps() {
    let group = Group::new().await;
    let suffix = unique("g");
    let alice = group.user("alice", &suffix).await;
    let mut env = group.env("grp-window", &suffix).await;
    env.request(User::Alice, "short", "  duration: 20s\n");
    env.request(User::Alice, "long", "  duration: 3m\n");
    for name in ["short", "long"] {
        env.wait_phase(name, Phase::AwaitingApproval).await;
        env.vote(User::Carol, name, "Approve");
    }
    let active = env.wait_phase_within("short", Phase::Active, WAIT).await;
    env.wait_phase_within("long", Phase::Active, WAIT).await;
    group.wait_members(&[&alice]).await;
    let access = active.status.and_then(|s| s.access).expect("status.access");
    assert_eq!(access.group_arn, group.arn);
    // The short one expires: the long one still holds the membership.
    env.wait_phase_within("short", Phase::Expired, WAIT).await;
    assert_eq!(group.members().await, vec![alice.clone()]);
    // The cluster goes; the long one's early end is asked before it went.
    env.revoke(User::Alice, "long", "done");
    env.wait_phase_within("long", Phase::Revoked, WAIT).await;
    group.wait_members(&[]).await;

    // Deleting an active request removes the membership before the request goes.
    env.request(User::Alice, "deleted", "  duration: 3m\n");
    env.wait_phase("deleted", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "deleted", "Approve");
    env.wait_phase_within("deleted", Phase::Active, WAIT).await;
    group.wait_members(&[&alice]).await;
    succeeded(&stack().kube.kubectl(
        User::Alice,
        &[
            "delete",
            "accessrequest",
            "deleted",
            "-n",
            &env.ns,
            "--wait=false",
        ],
    ));
    env.wait_gone("deleted").await;
    group.wait_members(&[]).await;

    env.request(User::Alice, "gone", "  duration: 20s\n");
    env.wait_phase("gone", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "gone", "Approve");
    env.wait_phase_within("gone", Phase::Active, WAIT).await;
    group.wait_members(&[&alice]).await;
    env.kill_operator();
    group.wait_members(&[]).await;
}

/// IAM holds a user in at most 10 groups: a grant that would be the 11th fails, saying
/// so, and adds nothing; a requester without an IAM user fails too.
#[tokio::test]
async fn iam_group_limits_and_unknown_users_are_refused_clearly() {
    let group = Group::new().await;
    let suffix = unique("g");
    let alice = group.user("alice", &suffix).await;
    for i in 0..10 {
        let other = unique(&format!("other{i}"));
        group
            .iam
            .create_group()
            .group_name(&other)
            .send()
            .await
            .expect("create group");
        group
            .iam
            .add_user_to_group()
            .group_name(&other)
            .user_name(&alice)
            .send()
            .await
            .expect("add to group");
    }
    let env = group.env("grp-limit", &suffix).await;
    env.request(User::Alice, "full", "");
    env.wait_phase("full", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "full", "Approve");
    let failed = env.wait_phase_within("full", Phase::Failed, WAIT).await;
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("is in 10 IAM groups already"), "{message}");
    assert!(group.members().await.is_empty());

    // bob has no IAM user.
    env.request(User::Bob, "nouser", "  requesterGroup: developers\n");
    env.wait_phase("nouser", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "nouser", "Approve");
    let failed = env.wait_phase_within("nouser", Phase::Failed, WAIT).await;
    let message = failed.status.and_then(|s| s.message).unwrap_or_default();
    // IAM's NoSuchEntity, in AWS's words or moto's.
    assert!(
        message.contains("NoSuchEntity") || message.contains("cannot be found"),
        "{message}"
    );
    assert!(group.members().await.is_empty());
}

/// Review (issue 12): when an execution ends without its revoke (a plain AWS caller
/// stopped it), the operator ends an IamGroup / IdentityCenter grant from the AccessRole
/// as it is NOW (`end_method_grant` -> `GrantMethod::accounted`), not from what the
/// execution granted (`$.grant`, which the hold message carries). An AccessRole edited
/// during the grant (here: its group moved to another one, a routine change) makes the
/// operator remove nothing of the real grant and still record the request Revoked
/// ("the operator ended access"); the drift sweep looks only at the role's new group.
/// alice stays in the old group until the cleanup at expires_at (for good if that is
/// stopped too).
#[tokio::test]
async fn review_a_stopped_execution_is_ended_on_what_it_granted_not_on_the_edited_role() {
    let group = Group::new().await;
    let other = Group::new().await;
    let suffix = unique("g");
    let alice = group.user("alice", &suffix).await;
    let env = group.env("grp-rv-edit", &suffix).await;
    env.request(User::Alice, "fix", "  duration: 10m\n");
    env.wait_phase("fix", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "fix", "Approve");
    env.wait_phase_within("fix", Phase::Active, WAIT).await;
    group.wait_members(&[&alice]).await;
    // The role's admin moves the AccessRole to another group.
    other.move_role_here(&env);
    // A plain AWS caller stops the flow; alice then ends her access early (on moto the
    // stopped flow ends ABORTED, its revoke not run, once its hold is answered).
    stop_execution(&env, "fix").await;
    env.revoke(User::Alice, "fix", "done");
    let ended = env.wait_phase_within("fix", Phase::Revoked, WAIT).await;
    let message = ended.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("the operator ended access"), "{message}");
    // The request says Revoked: alice's membership must be gone.
    group.wait_members(&[]).await;
}

/// Review (issue 14): the drift sweep finds its targets in the controller's cache, which
/// lags the apiserver. An AccessRole's admin points it from group A to group B, and makes
/// A a group of permanent members (a routine change); a sweep whose cache still shows
/// the role on A must not take A's permanent member for drift. Once the cache shows B,
/// the sweep does sweep B (a member no request accounts for is removed), and A is left.
#[tokio::test]
async fn a_stale_role_in_the_cache_sweeps_none_of_its_old_group() {
    use aws_jit::crd::AccessRole;
    use kube::Api;
    let old = Group::new().await;
    let new = Group::new().await;
    let suffix = unique("g");
    let mut env = old.env_managing("grp-stale-role", &suffix, &[&new]).await;
    // Only the sweeper below sweeps (the operator's own, its cache current, would take
    // B's planted member first).
    env.kill_operator();
    let roles: Api<AccessRole> = Api::all(env.kube.clone());
    let before = roles.get(&env.access_role).await.expect("AccessRole");
    new.move_role_here(&env);
    let after = roles.get(&env.access_role).await.expect("AccessRole");
    // A is a permanent group now: its member was put there by hand, not by aws-jit.
    let permanent = old.user("oncall", &suffix).await;
    old.add_by_hand(&permanent).await;
    // B: a member no request accounts for (drift).
    let planted = new.user("mallory", &suffix).await;
    new.add_by_hand(&planted).await;

    let cached = crate::attacks::CachedSweep::new(&env, vec![before]).await;
    let swept = cached.sweeper.sweep().await.expect("a sweep");
    assert!(swept.held.is_empty(), "nothing removed: {:?}", swept.held);
    assert_eq!(
        old.members().await,
        vec![permanent.clone()],
        "A's permanent member stays"
    );

    cached.role_changed(after).await;
    let swept = cached.sweeper.sweep().await.expect("a sweep");
    assert_eq!(swept.held.len(), 1, "B's planted member: {:?}", swept.held);
    assert!(new.members().await.is_empty(), "B's planted member is gone");
    assert_eq!(
        old.members().await,
        vec![permanent],
        "A's permanent member stays"
    );
}
