//! GitOps on the real stack: AccessRequests applied with kubectl as Argo CD's service
//! account (a trusted submitter), driven through every phase by the operator, read back
//! with kubectl as JSON and judged by kstatus itself (`sigs.k8s.io/cli-utils` v0.37.2,
//! what Flux's health checks use) and by the shipped Argo CD Lua check
//! (`hack/tools/kstatus`). Then pruning the way Argo CD prunes (foreground propagation)
//! and re-syncing the manifest of a request that has ended.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_jit::crd::{FINALIZER, Phase};
use aws_jit::faults::points;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

use crate::controller::{ACCOUNT, Env, condition};
use crate::crashes::stopped_at;
use crate::support::gitops::{Health, expected, judge};
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const WAIT: Duration = Duration::from_secs(60);

/// `kubectl get accessrequests -n NS --watch -o json`: every version of every request
/// the apiserver stores while it runs (a watch misses none), as kubectl prints them.
struct Watch {
    child: Child,
    out: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(user: User, ns: &str) -> Watch {
        let kube = &stack().kube;
        let mut child = Command::new(kube.bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(kube.kubeconfig(user))
            .args(["get", "accessrequests", "-n", ns, "--watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kubectl get --watch");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Watch {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn printed(&self) -> String {
        self.out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the watch has printed an object named `name` (then it is live:
    /// whatever changes after this is printed too).
    async fn wait_for(&self, name: &str) {
        let needle = format!("\"name\": \"{name}\"");
        eventually(&format!("the watch to print {name}"), WAIT, || {
            let printed = self.printed();
            let needle = needle.clone();
            async move {
                if printed.contains(&needle) {
                    Ok(())
                } else {
                    Err(format!("{} bytes printed", printed.len()))
                }
            }
        })
        .await;
    }

    /// Stops kubectl and returns what it printed, one value per version, without
    /// repeats (the same resourceVersion printed twice).
    fn stop(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let printed = self.printed();
        let mut seen = BTreeSet::new();
        let mut versions = Vec::new();
        // A document cut short by the kill ends the stream.
        for v in serde_json::Deserializer::from_str(&printed)
            .into_iter::<Value>()
            .map_while(Result::ok)
        {
            let items = match v.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![v],
            };
            for item in items {
                let key = (
                    item["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    item["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
                if seen.insert(key) {
                    versions.push(item);
                }
            }
        }
        versions
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request manifest as it sits in a GitOps repository.
fn manifest(env: &Env, name: &str, role: &str, spec: &str) -> String {
    format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  role: {role}\n{spec}",
        ns = env.ns
    )
}

/// A request for alice (or another requester in `spec`) of the test's AccessRole.
fn for_role(env: &Env, name: &str, spec: &str) -> String {
    manifest(env, name, &env.access_role, spec)
}

/// `kubectl apply -f -` as Argo CD's service account (its sync, client-side apply).
fn sync(manifest: &str) -> std::process::Output {
    stack()
        .kube
        .kubectl_stdin(User::GitOps, &["apply", "-f", "-"], manifest)
}

/// The request as kubectl prints it (`-o json`), as Argo CD's service account.
fn read(env: &Env, name: &str) -> Value {
    let out = succeeded(&stack().kube.kubectl(
        User::GitOps,
        &["get", "accessrequest", name, "-n", &env.ns, "-o", "json"],
    ));
    serde_json::from_str(&out).expect("kubectl -o json")
}

fn phase_of(v: &Value) -> Option<&str> {
    v["status"]["phase"].as_str()
}

/// (kstatus, Argo CD) of one object.
fn health_of(v: &Value) -> (String, String) {
    let h = judge(&v.to_string()).remove(0);
    (h.kstatus.status, h.argocd.status)
}

fn pair(e: (&str, &str)) -> (String, String) {
    (e.0.to_owned(), e.1.to_owned())
}

/// Undelivered work items come back after the queue's visibility timeout (60 s in the
/// template); a short one lets a restarted operator pick up a stalled grant soon.
async fn short_work_visibility(env: &Env) {
    aws_sdk_sqs::Client::new(&env.sdk)
        .set_queue_attributes()
        .queue_url(&env.aws.work_queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .expect("set visibility timeout");
}

/// How many executions carry this request's name (one per request, ever).
async fn executions_named(env: &Env, uid: &str) -> usize {
    let name = aws_jit::aws::sfn::execution_name(uid);
    aws_sdk_sfn::Client::new(&env.sdk)
        .list_executions()
        .state_machine_arn(&env.aws.state_machine_arn)
        .send()
        .await
        .expect("list executions")
        .executions()
        .iter()
        .filter(|e| e.name() == name)
        .count()
}

#[tokio::test]
async fn every_phase_the_operator_writes_reads_as_decided_by_kstatus_and_argo_cd() {
    let mut env = Env::new("gitops-phases", "").await;
    short_work_visibility(&env).await;
    let watch = Watch::start(User::GitOps, &env.ns);
    // An unknown role (Rejected): also the mark that the watch is live.
    succeeded(&sync(&manifest(
        &env,
        "ghost",
        "no-such-role",
        "  requester: alice\n  reason: gitops\n",
    )));
    watch.wait_for("ghost").await;
    for (name, spec) in [
        (
            "walk",
            "  requester: alice\n  reason: gitops\n  duration: 1h\n",
        ),
        ("deny-me", "  requester: alice\n  reason: gitops\n"),
        // bob is eligible only through a group he does not claim: Rejected.
        ("ineligible", "  requester: bob\n  reason: gitops\n"),
        (
            "short",
            "  requester: alice\n  reason: gitops\n  duration: 15s\n",
        ),
    ] {
        succeeded(&sync(&for_role(&env, name, spec)));
    }
    env.wait_phase("ghost", Phase::Rejected).await;
    env.wait_phase("ineligible", Phase::Rejected).await;
    for name in ["walk", "deny-me", "short"] {
        env.wait_phase(name, Phase::AwaitingApproval).await;
    }
    // Resting in AwaitingApproval: waiting on a person.
    assert_eq!(
        health_of(&read(&env, "walk")),
        pair(("InProgress", "Suspended"))
    );

    // Denied, waited on the way the README says: the Ended condition. (kubectl wait
    // blocks: on a thread of its own, so the operator, a task of this test's runtime,
    // keeps running.)
    env.vote(User::Dave, "deny-me", "Deny");
    let ns = env.ns.clone();
    let waited = tokio::task::spawn_blocking(move || {
        stack().kube.kubectl(
            User::GitOps,
            &[
                "wait",
                "--for=condition=Ended",
                "accessrequest/deny-me",
                "-n",
                &ns,
                "--timeout=60s",
            ],
        )
    })
    .await
    .expect("kubectl wait");
    succeeded(&waited);
    let denied = read(&env, "deny-me");
    assert_eq!(phase_of(&denied), Some("Denied"));

    // Active, then Expired by itself.
    env.vote(User::Carol, "short", "Approve");
    env.wait_phase("short", Phase::Active).await;
    env.wait_phase_within("short", Phase::Expired, Duration::from_secs(120))
        .await;

    // Approved, held there: the worker stops dead after writing the grant, before it
    // answers (as if it crashed), so the request rests in Approved.
    env.faults.arm(points::AFTER_GRANT);
    env.vote(User::Carol, "walk", "Approve");
    stopped_at(&env, points::AFTER_GRANT).await;
    env.wait_phase("walk", Phase::Approved).await;
    assert_eq!(
        health_of(&read(&env, "walk")),
        pair(("InProgress", "Progressing"))
    );
    env.kill_operator();
    env.start_operator();
    let r = env
        .wait_phase_within("walk", Phase::Active, Duration::from_secs(180))
        .await;
    assert_eq!(
        condition(&r, "Ready"),
        Some(("True".into(), "Active".into()))
    );
    assert_eq!(health_of(&read(&env, "walk")), pair(("Current", "Healthy")));
    env.revoke(User::Alice, "walk", "done");
    env.wait_phase("walk", Phase::Revoked).await;

    // Failed: AWS refuses the grant, its IAM role gone (a role of its own: the test's
    // role keeps the session denies of the grants above, and IAM deletes no role with
    // policies).
    let (iam_name, iam_arn) = crate::controller::create_iam_role(&env.sdk, "gitops-doomed").await;
    let doomed_role = crate::support::unique("gitops-doomed");
    succeeded(&stack().kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {doomed_role}\nspec:\n\
             \x20 roleArn: {iam_arn}\n  approvers: [{{user: carol}}]\n  requesters: [{{user: alice}}]\n\
             \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT}:user/{{username}}'}}\n"
        ),
    ));
    succeeded(&sync(&manifest(
        &env,
        "doomed",
        &doomed_role,
        "  requester: alice\n  reason: gitops\n",
    )));
    env.wait_phase("doomed", Phase::AwaitingApproval).await;
    aws_sdk_iam::Client::new(&env.sdk)
        .delete_role()
        .role_name(&iam_name)
        .send()
        .await
        .expect("delete the doomed role");
    env.vote(User::Carol, "doomed", "Approve");
    env.wait_phase("doomed", Phase::Failed).await;

    // Every version the watch saw, judged.
    let versions = watch.stop();
    let verdicts =
        judge(&json!({"apiVersion": "v1", "kind": "List", "items": versions}).to_string());
    assert_eq!(verdicts.len(), versions.len());
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (v, h) in versions.iter().zip(&verdicts) {
        let phase = phase_of(v);
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            (h.name.as_str(), h.resource_version.as_str()),
            (
                name,
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            )
        );
        let (kstatus, argocd) = expected(phase);
        assert_eq!(
            (h.kstatus.status.as_str(), h.argocd.status.as_str()),
            (kstatus, argocd),
            "{name} in {phase:?}: {h:?}\n{v:#}"
        );
        let phases = seen.entry(name.to_owned()).or_default();
        let phase = phase.unwrap_or("(none)").to_owned();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
    }
    let all: BTreeSet<&str> = seen.values().flatten().map(String::as_str).collect();
    for phase in [
        "Pending",
        "AwaitingApproval",
        "Approved",
        "Active",
        "Expired",
        "Denied",
        "Rejected",
        "Revoked",
        "Failed",
    ] {
        assert!(
            all.contains(phase),
            "no version in {phase} was seen: {seen:?}"
        );
    }
    assert_eq!(
        seen["walk"],
        [
            "(none)",
            "Pending",
            "AwaitingApproval",
            "Approved",
            "Active",
            "Revoked"
        ],
        "{seen:?}"
    );
    // (ghost may predate the watch's first list: only its end is sure to be seen.)
    assert_eq!(
        seen["ghost"].last().map(String::as_str),
        Some("Rejected"),
        "{seen:?}"
    );

    // Flux's view of the whole lot (a Kustomization's health check): the requests that
    // ended are Current or Failed as decided, none InProgress.
    let list = succeeded(&stack().kube.kubectl(
        User::GitOps,
        &["get", "accessrequests", "-n", &env.ns, "-o", "json"],
    ));
    let now: Vec<Health> = judge(&list);
    let got: BTreeMap<&str, (&str, &str)> = now
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                (h.kstatus.status.as_str(), h.argocd.status.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([
            ("deny-me", ("Current", "Healthy")),
            ("doomed", ("Failed", "Degraded")),
            ("ghost", ("Failed", "Degraded")),
            ("ineligible", ("Failed", "Degraded")),
            ("short", ("Current", "Healthy")),
            ("walk", ("Current", "Healthy")),
        ])
    );
    // Ended says how: reason the phase, on each of them; Ready only where it is False
    // because a person must look (Rejected, Failed).
    let api = env.requests();
    for (name, phase) in [
        ("deny-me", "Denied"),
        ("doomed", "Failed"),
        ("ghost", "Rejected"),
        ("ineligible", "Rejected"),
        ("short", "Expired"),
        ("walk", "Revoked"),
    ] {
        let r = api.get(name).await.expect("get");
        assert_eq!(
            condition(&r, "Ended"),
            Some(("True".into(), phase.into())),
            "{name}"
        );
        let ready = condition(&r, "Ready");
        match phase {
            "Rejected" | "Failed" => assert_eq!(ready, Some(("False".into(), phase.into()))),
            _ => assert_eq!(ready, None, "{name}: Ready removed once ended"),
        }
    }
    an_old_ending_is_rewritten(&env, "deny-me").await;
    an_old_ending_is_rewritten(&env, "walk").await;
}

/// A request that ended under an older operator (Ready=False, no Ended: InProgress
/// forever for kstatus) gets today's conditions once the operator sees it, and
/// nothing else changes.
async fn an_old_ending_is_rewritten(env: &Env, name: &str) {
    use kube::api::{Patch, PatchParams};
    let api = env.requests();
    let before = api.get(name).await.expect("get");
    let uid = before.metadata.uid.clone().expect("uid");
    let mut status = serde_json::to_value(before.status.clone().expect("status")).expect("json");
    let phase = status["phase"].as_str().expect("phase").to_owned();
    let mut conditions: Vec<Value> = status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "Ended")
        .collect();
    conditions.push(json!({"type": "Ready", "status": "False", "reason": phase,
        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}));
    status["conditions"] = json!(conditions);
    // Exactly what the old operator owned: its field manager, votes not included.
    status["approvals"] = json!([]);
    status["revocations"] = json!([]);
    let old = json!({"apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": name}, "status": status});
    // As the old operator: its service account (env.kube), its field manager.
    api.patch_status(
        name,
        &PatchParams::apply(aws_jit::controller::FIELD_MANAGER).force(),
        &Patch::Apply(&old),
    )
    .await
    .expect("the old operator's conditions");
    let r = eventually(
        &format!("{name}'s conditions in today's terms"),
        WAIT,
        || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.map_err(|e| e.to_string())?;
                if condition(&r, "Ended").is_some() && condition(&r, "Ready").is_none() {
                    Ok(r)
                } else {
                    Err(format!("{:?}", r.status.map(|s| s.conditions)))
                }
            }
        },
    )
    .await;
    let (now, was) = (
        r.status.clone().expect("status"),
        before.status.clone().expect("status"),
    );
    assert_eq!((now.phase, &now.message), (was.phase, &was.message));
    assert_eq!(condition(&r, "Ended"), Some(("True".into(), phase.clone())));
    assert_eq!(executions_named(env, &uid).await, 1);
    let h = judge(&read(env, name).to_string()).remove(0);
    assert_eq!(
        pair(expected(Some(&phase))),
        (h.kstatus.status, h.argocd.status)
    );
}

#[tokio::test]
async fn argo_cd_pruning_revokes_and_re_syncing_an_ended_request_changes_nothing() {
    let env = Env::new("gitops-prune", "").await;
    let pruned = for_role(
        &env,
        "pruned",
        "  requester: alice\n  reason: gitops\n  duration: 1h\n",
    );
    // Another requester, so each grant is its own principal.
    let kept_spec =
        "  requester: dev-kept\n  requesterGroup: developers\n  reason: gitops\n  duration: 1h\n";
    let kept = for_role(&env, "kept", kept_spec);
    succeeded(&sync(&pruned));
    succeeded(&sync(&kept));
    for name in ["pruned", "kept"] {
        env.wait_phase(name, Phase::AwaitingApproval).await;
        env.vote(User::Carol, name, "Approve");
    }
    let mut uids = BTreeMap::new();
    for name in ["pruned", "kept"] {
        let r = env.wait_phase(name, Phase::Active).await;
        uids.insert(name, r.metadata.uid.clone().expect("uid"));
    }
    let sid = |name: &str| format!("AwsJit{}", uids[name].replace('-', ""));
    let sids = || async {
        let mut s: Vec<String> =
            aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await)
                .into_iter()
                .map(|g| g.sid)
                .collect();
        s.sort();
        s
    };
    let mut both = vec![sid("pruned"), sid("kept")];
    both.sort();
    assert_eq!(sids().await, both);

    // The manifest leaves the repository: Argo CD prunes it, foreground propagation.
    succeeded(&stack().kube.kubectl(
        User::GitOps,
        &[
            "delete",
            "accessrequest",
            "pruned",
            "-n",
            &env.ns,
            "--cascade=foreground",
            "--wait=false",
        ],
    ));
    // The operator ends the access, then lets go of its finalizer. The apiserver's
    // `foregroundDeletion` finalizer stays for the garbage collector, which this stack
    // does not run (tests/support/kube.rs): the object waits for it, revoked.
    let api = env.requests();
    let r = eventually(
        "the operator to revoke and release the pruned request",
        WAIT,
        || {
            let api = api.clone();
            async move {
                let r = api.get("pruned").await.map_err(|e| e.to_string())?;
                let finalizers = r.metadata.finalizers.clone().unwrap_or_default();
                if finalizers == ["foregroundDeletion"] {
                    Ok(r)
                } else {
                    Err(format!("finalizers {finalizers:?}, status {:?}", r.status))
                }
            }
        },
    )
    .await;
    assert!(r.metadata.deletion_timestamp.is_some());
    assert!(
        !r.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == FINALIZER)
    );
    assert_eq!(
        sids().await,
        [sid("kept")],
        "the pruned grant's statement is gone, only it"
    );
    assert_eq!(
        env.foreign_statements().await.len(),
        2,
        "foreign statements kept"
    );
    let (status, outcome) = env.execution_outcome("pruned").await;
    assert_eq!(
        (status.as_str(), outcome.as_str()),
        ("SUCCEEDED", "Revoked")
    );
    // Being deleted: kstatus says Terminating (Argo CD shows the deletion itself).
    let h = judge(&read(&env, "pruned").to_string()).remove(0);
    assert_eq!(h.kstatus.status, "Terminating", "{h:?}");
    // The garbage collector's one step for an object without dependents: drop
    // `foregroundDeletion`. Then it is gone.
    succeeded(&stack().kube.kubectl(
        User::Admin,
        &[
            "patch",
            "accessrequest",
            "pruned",
            "-n",
            &env.ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
    ));
    env.wait_gone("pruned").await;
    // Self-heal puts the manifest back (the same name): a new request, with a new uid,
    // that asks for approval again; nothing is granted for it meanwhile.
    succeeded(&sync(&pruned));
    let back = env.wait_phase("pruned", Phase::AwaitingApproval).await;
    let back_uid = back.metadata.uid.clone().expect("uid");
    assert_ne!(back_uid, uids["pruned"]);
    assert_eq!(executions_named(&env, &back_uid).await, 1);
    assert_eq!(
        sids().await,
        [sid("kept")],
        "nothing granted for the re-created one"
    );

    // `kept` ends (an approver revokes it); its manifest stays in the repository and
    // Argo CD keeps syncing it.
    env.revoke(User::Carol, "kept", "done");
    let before = env.wait_phase("kept", Phase::Revoked).await;
    assert!(sids().await.is_empty());
    let kept_uid = before.metadata.uid.clone().expect("uid");
    assert_eq!(executions_named(&env, &kept_uid).await, 1);
    let out = succeeded(&sync(&kept));
    assert!(out.contains("unchanged"), "{out}");
    let after = api.get("kept").await.expect("get");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "not written at all"
    );

    // A changed manifest (the reason edited): the trusted-submitter role cannot change
    // requests at all...
    let edited = for_role(
        &env,
        "kept",
        &kept_spec.replace("reason: gitops", "reason: again please"),
    );
    refused(&sync(&edited), "forbidden");
    // ...and with the wide rights Argo CD's controller usually has (patch, update), the
    // spec is immutable, client-side or server-side apply alike.
    let rights = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: argocd-sync\n  namespace: {ns}\n\
         rules:\n- apiGroups: [aws-jit.io]\n  resources: [accessrequests]\n  verbs: [get, list, watch, create, update, patch, delete]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: argocd-sync\n  namespace: {ns}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: argocd-sync}}\n\
         subjects:\n- {{kind: ServiceAccount, name: argocd-application-controller, namespace: argocd}}\n",
        ns = env.ns
    );
    succeeded(
        &stack()
            .kube
            .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &rights),
    );
    eventually(
        "Argo CD's patch right on requests to take effect",
        WAIT,
        || async {
            let out = stack().kube.kubectl(
                User::GitOps,
                &["auth", "can-i", "patch", "accessrequests", "-n", &env.ns],
            );
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if said == "yes" { Ok(()) } else { Err(said) }
        },
    )
    .await;
    refused(&sync(&edited), "spec is immutable");
    let ssa = [
        "apply",
        "--server-side",
        "--field-manager=argocd-controller",
        // As Argo CD's server-side sync does: it takes over fields others applied.
        "--force-conflicts",
        "-f",
        "-",
    ];
    refused(
        &stack().kube.kubectl_stdin(User::GitOps, &ssa, &edited),
        "spec is immutable",
    );
    // Server-side apply of the unchanged manifest (Argo CD's ServerSideApply=true):
    // Argo CD now co-owns the spec's fields, nothing else moves.
    succeeded(&stack().kube.kubectl_stdin(User::GitOps, &ssa, &kept));

    // Asking again is a new name: a new request, its own execution, its own approval.
    succeeded(&sync(&for_role(&env, "kept-2", kept_spec)));
    let again = env.wait_phase("kept-2", Phase::AwaitingApproval).await;
    // The operator has been at work since the re-syncs: the ended one stayed as it was.
    let after = api.get("kept").await.expect("get");
    assert_eq!(after.status, before.status, "status unchanged");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(after.spec.reason, before.spec.reason);
    assert_eq!(
        executions_named(&env, &kept_uid).await,
        1,
        "nothing started for it"
    );
    assert_eq!(
        executions_named(&env, &again.metadata.uid.clone().expect("uid")).await,
        1
    );
    assert!(sids().await.is_empty(), "nothing granted by the re-syncs");
    let h = judge(&read(&env, "kept").to_string()).remove(0);
    assert_eq!(
        (h.kstatus.status.as_str(), h.argocd.status.as_str()),
        ("Current", "Healthy")
    );
}
