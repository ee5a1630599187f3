//! The trust-policy worker (`aws_jit::grant::trust_policy::worker`) against the shipped state machine on moto:
//! each test deploys the template, creates an IAM role whose trust policy holds foreign
//! statements, backs each execution with an AccessRequest in the real apiserver (approved
//! by carol, its execution recorded in status, as the controller would have left it),
//! starts executions with the input the controller derives, plays the approver from the
//! request queue, and lets the real worker consume the work queue. What is checked is
//! what AWS would enforce: the role's trust policy while access is held and after, and
//! how the execution ended.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_jit::aws::sfn::{ExecutionState, StepFunctionClient, TaskAnswer, execution_name};
use aws_jit::contract::{GrantOutput, Outcome as ExecutionOutcome};
use aws_jit::crd::{AccessRequest, AccessRole};
use aws_jit::grant::trust_policy::worker::{
    Answer, DEAD_LETTER_REASON_ATTRIBUTE, Outcome, RevokeOutput, Worker,
};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::aws::{ACCOUNT_ID, AwsOutputs};
use crate::support::kube::User;
use crate::support::{self, wait::eventually};

/// Deadline for a step the state machine or the worker takes at once (moto on a busy
/// machine).
pub(crate) const STEP: Duration = Duration::from_secs(30);
const REQUESTER_ARN: &str = "arn:aws:iam::123456789012:user/alice";

/// The trust policy a role has before any grant: an EC2 service principal and a
/// federated (GitHub OIDC) principal with conditions, keys in an unusual order.
pub(crate) fn base_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Ec2", "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
             "Action": "sts:AssumeRole"},
            {"Principal": {"Federated": format!("arn:aws:iam::{ACCOUNT_ID}:oidc-provider/token.actions.githubusercontent.com")},
             "Effect": "Allow",
             "Action": "sts:AssumeRoleWithWebIdentity",
             "Condition": {
                 "StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
                 "StringLike": {"token.actions.githubusercontent.com:sub": ["repo:org/infra:ref:refs/heads/main"]}
             }}
        ]
    })
}

/// One deployed stack, one IAM role, and the clients to play the rest of the operator.
pub(crate) struct Env {
    /// Where the AccessRequests behind the executions live.
    ns: String,
    /// The operator's identity, which records executions and reads requests.
    kube: kube::Client,
    pub(crate) sfn: aws_sdk_sfn::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) iam: aws_sdk_iam::Client,
    pub(crate) out: AwsOutputs,
    pub(crate) role_name: String,
    pub(crate) role_arn: String,
    /// The role's trust policy as created.
    pub(crate) base: Value,
    /// ... and as `GetRole` returned it before any test step.
    base_text: String,
}

/// One execution.
pub(crate) struct Run {
    pub(crate) arn: String,
    pub(crate) uid: String,
    input: Value,
}

impl Run {
    /// The `Sid` the worker must use for this request.
    pub(crate) fn sid(&self) -> String {
        format!("AwsJit{}", self.uid.replace('-', ""))
    }
}

/// The worker running as a task, and how to stop it.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the worker and checks that it stops promptly.
    pub(crate) async fn stop(self) {
        let asked = Instant::now();
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("the worker stops after shutdown")
            .expect("the worker's task ends without a panic");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "stopping took {:?}",
            asked.elapsed()
        );
    }
}

impl Env {
    pub(crate) async fn new(prefix: &str, base: Value) -> Env {
        // The worker's logs, captured per test (shown for a failing test, or with
        // --nocapture).
        let _ = tracing_subscriber::fmt()
            .with_env_filter("aws_jit=info")
            .with_test_writer()
            .try_init();
        let moto = &support::stack().aws;
        let sdk = moto.sdk_config().await;
        let out = moto
            .deploy_with(prefix, &[format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/*")])
            .await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let role_name = support::unique(&format!("{prefix}-admin"));
        let created = iam
            .create_role()
            .role_name(&role_name)
            .path("/jit/")
            .assume_role_policy_document(base.to_string())
            .send()
            .await
            .expect("create the IAM role");
        let role_arn = created.role().expect("role").arn().to_string();
        let ns = support::stack().kube.create_namespace(prefix).await;
        let kube = support::stack().kube.client(User::Operator).await;
        let mut env = Env {
            ns,
            kube,
            sfn: aws_sdk_sfn::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            iam,
            out,
            role_name,
            role_arn,
            base,
            base_text: String::new(),
        };
        let (text, policy) = env.policy().await;
        assert_eq!(policy, env.base, "the role's trust policy as created");
        env.base_text = text;
        env
    }

    /// A worker on this stack, as the operator builds one (short polls for the tests).
    fn worker(&self) -> Worker {
        Worker::new(
            self.authority(),
            self.sqs.clone(),
            self.iam.clone(),
            StepFunctionClient::new(self.sfn.clone(), &self.out.state_machine_arn),
            &self.out.work_queue_url,
        )
        .with_dead_letter_url(&self.out.work_dlq_url)
        .with_wait_time(Duration::from_secs(1))
        .with_retry_delay(Duration::from_secs(1))
    }

    pub(crate) fn spawn(&self, worker: Worker) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move { worker.run(stopped).await });
        Running { stop, task }
    }

    fn work_group(&self) -> String {
        format!("{ACCOUNT_ID}/{}", self.role_name)
    }

    /// Starts an execution for this role with the contract's input.
    pub(crate) async fn start(&self, duration_seconds: u64) -> Run {
        self.start_for(&self.role_arn, &self.work_group(), duration_seconds)
            .await
    }

    /// The authority the operator builds: the moto account is the one it serves.
    pub(crate) fn authority(&self) -> aws_jit::aws::authority::Authority {
        aws_jit::aws::authority::Authority::new(
            self.kube.clone(),
            StepFunctionClient::new(self.sfn.clone(), &self.out.state_machine_arn),
            aws_jit::policy::decide::Scope::new([ACCOUNT_ID.to_string()]),
            Default::default(),
            aws_jit::aws::alerts::SecurityAlerts::none(),
        )
    }

    /// An AccessRole for `role_arn` and an AccessRequest of alice for it, approved by
    /// carol, with `execution_arn` recorded in status as the controller records it.
    /// Returns the request and the input the controller derives for it.
    async fn backed_request(
        &self,
        role_arn: &str,
        duration_seconds: u64,
    ) -> (AccessRequest, aws_jit::contract::ExecutionInput) {
        let kube = &support::stack().kube;
        let role_name = support::unique("worker-role");
        let role: AccessRole = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": role_name},
            "spec": {"roleArn": role_arn, "maxDuration": "12h",
                     "approvers": [{"user": "carol"}], "requesters": [{"user": "alice"}],
                     "principal": {"template": format!("arn:aws:iam::{ACCOUNT_ID}:user/{{username}}")}}
        }))
        .expect("an AccessRole");
        let role = Api::<AccessRole>::all(kube.client(User::Admin).await)
            .create(&PostParams::default(), &role)
            .await
            .expect("the admin creates the AccessRole");
        let name = support::unique("fix-prod");
        let request: AccessRequest = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"role": role_name, "requester": "alice",
                     "duration": format!("{duration_seconds}s"),
                     "reason": "fix prod", "ticket": "OPS-1"}
        }))
        .expect("an AccessRequest");
        let alice = kube.client(User::Alice).await;
        let request = Api::<AccessRequest>::namespaced(alice, &self.ns)
            .create(&PostParams::default(), &request)
            .await
            .expect("alice creates her request");
        let input = aws_jit::policy::decide::plan_in(
            &request,
            Some(&role),
            &aws_jit::policy::decide::Scope::new([ACCOUNT_ID.to_string()]),
        )
        .expect("the request is valid against its role");
        (request, input)
    }

    /// Records the execution and carol's approval in the request's status: the
    /// execution ARN as the operator, the vote as carol herself.
    async fn record(&self, request: &AccessRequest, execution_arn: &str) {
        let api = Api::<AccessRequest>::namespaced(self.kube.clone(), &self.ns);
        let name = request.metadata.name.clone().expect("name");
        let status = json!({"status": {"phase": "AwaitingApproval", "executionArn": execution_arn,
                                       "approvals": []}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("the operator records the execution");
        support::succeeded(&support::stack().kube.append_approval(
            User::Carol,
            &self.ns,
            &name,
            r#"{"approver":"carol","decision":"Approve"}"#,
        ));
    }

    async fn start_for(&self, role_arn: &str, _work_group: &str, duration_seconds: u64) -> Run {
        let (request, planned) = self.backed_request(role_arn, duration_seconds).await;
        let uid = planned.request.uid.clone();
        let input = serde_json::to_value(&planned).expect("JSON");
        let arn = StepFunctionClient::new(self.sfn.clone(), &self.out.state_machine_arn)
            .execution_arn(&execution_name(&uid))
            .expect("an execution ARN");
        // Recorded before the start, as the grant may come at once.
        self.record(&request, &arn).await;
        let started = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.out.state_machine_arn)
            .name(execution_name(&uid))
            .input(input.to_string())
            .send()
            .await
            .expect("start execution");
        assert_eq!(started.execution_arn(), arn);
        Run {
            arn: started.execution_arn().to_string(),
            uid,
            input,
        }
    }

    /// Takes (receives and deletes) the `kind` messages of `runs` from `queue_url`, one
    /// per run, and returns their bodies by execution ARN. Anything else on the queue
    /// fails the test.
    async fn take_all(
        &self,
        queue_url: &str,
        kind: &str,
        runs: &[&Run],
        timeout: Duration,
    ) -> BTreeMap<String, Value> {
        let wanted: BTreeSet<&str> = runs.iter().map(|r| r.arn.as_str()).collect();
        let taken = std::cell::RefCell::new(BTreeMap::new());
        let (sqs, taken_ref, wanted_ref) = (&self.sqs, &taken, &wanted);
        eventually(
            &format!("a {kind} message for each of {} executions", runs.len()),
            timeout,
            || async move {
                let got = sqs
                    .receive_message()
                    .queue_url(queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                for m in got.messages() {
                    sqs.delete_message()
                        .queue_url(queue_url)
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .send()
                        .await
                        .map_err(|e| format!("delete: {e:?}"))?;
                    let body: Value = serde_json::from_str(m.body().unwrap_or_default())
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", m.body()));
                    let arn = body["execution_arn"].as_str().unwrap_or_default();
                    assert!(
                        body["type"] == kind && wanted_ref.contains(arn),
                        "unexpected message while waiting for {kind}: {body}"
                    );
                    let arn = arn.to_string();
                    assert!(
                        taken_ref.borrow_mut().insert(arn.clone(), body).is_none(),
                        "a second {kind} message for {arn}"
                    );
                }
                let n = taken_ref.borrow().len();
                if n == wanted_ref.len() {
                    Ok(())
                } else {
                    Err(format!("{n} of {}", wanted_ref.len()))
                }
            },
        )
        .await;
        taken.into_inner()
    }

    /// Takes the approval task of every run, then approves them all.
    pub(crate) async fn approve(&self, runs: &[&Run]) {
        let approvals = self
            .take_all(&self.out.request_queue_url, "approval", runs, STEP)
            .await;
        for body in approvals.values() {
            // As the controller answers: the approval fixes the access window.
            let duration = body["input"]["duration_seconds"]
                .as_u64()
                .expect("duration");
            let output = json!({
                "approver_name": "carol",
                "approvers": ["carol"],
                "requester_arn": body["input"]["requester_arn"],
                "expires_at": aws_jit::policy::decide::expiry_after(jiff::Timestamp::now(), duration),
            });
            // moto's threaded server sometimes answers 500 under load; retry those.
            let token = body["task_token"].as_str().expect("task token").to_string();
            eventually("the approval to be taken", STEP, || {
                let (sfn, token, output) = (self.sfn.clone(), token.clone(), output.to_string());
                async move {
                    sfn.send_task_success()
                        .task_token(token)
                        .output(output)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}"))
                }
            })
            .await;
        }
    }

    /// The one work item of `kind` (`grant` or `revoke`) of `run`, taken off the work
    /// queue.
    pub(crate) async fn work_item(&self, kind: &str, run: &Run) -> Value {
        self.take_all(&self.out.work_queue_url, kind, &[run], STEP)
            .await
            .remove(&run.arn)
            .unwrap_or_else(|| panic!("no {kind} item for {}", run.arn))
    }

    /// The hold task of each run, i.e. each grant was answered with success.
    pub(crate) async fn holds(&self, runs: &[&Run], timeout: Duration) -> BTreeMap<String, Value> {
        self.take_all(&self.out.request_queue_url, "hold", runs, timeout)
            .await
    }

    /// The role's trust policy: as `GetRole` returns it, and decoded.
    pub(crate) async fn policy(&self) -> (String, Value) {
        policy_of(&self.iam, &self.role_name).await
    }

    async fn finished(&self, run: &Run, timeout: Duration) -> ExecutionState {
        let sfn = StepFunctionClient::new(self.sfn.clone(), &self.out.state_machine_arn);
        let (sfn, arn) = (&sfn, run.arn.as_str());
        eventually("the execution to finish", timeout, || async move {
            match sfn.describe(arn).await.map_err(|e| e.to_string())? {
                ExecutionState::Running => Err("RUNNING".to_string()),
                other => Ok(other),
            }
        })
        .await
    }

    async fn sfn_state(&self, run: &Run) -> ExecutionState {
        StepFunctionClient::new(self.sfn.clone(), &self.out.state_machine_arn)
            .describe(&run.arn)
            .await
            .expect("describe execution")
    }

    /// Waits for the execution to succeed with `outcome`; returns its output.
    pub(crate) async fn succeeded_with(
        &self,
        run: &Run,
        outcome: ExecutionOutcome,
        timeout: Duration,
    ) -> Value {
        match self.finished(run, timeout).await {
            ExecutionState::Succeeded {
                outcome: Some(o),
                output,
            } if o == outcome => output,
            other => panic!("expected SUCCEEDED with {outcome:?}, got {other:?}"),
        }
    }

    /// The events of the alerts of `run`, in order. Call once it has finished.
    async fn alert_events(&self, run: &Run) -> Vec<String> {
        drain(&self.sqs, &self.out.alert_queue_url)
            .await
            .into_iter()
            .filter(|(body, _)| body["execution_arn"] == run.arn.as_str())
            .map(|(body, _)| body["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    async fn queue_length(&self, queue_url: &str) -> usize {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .expect("queue attributes");
        attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .expect("ApproximateNumberOfMessages")
    }
}

async fn policy_of(iam: &aws_sdk_iam::Client, role_name: &str) -> (String, Value) {
    let role = iam
        .get_role()
        .role_name(role_name)
        .send()
        .await
        .expect("get role");
    let text = role
        .role()
        .and_then(|r| r.assume_role_policy_document())
        .expect("trust policy")
        .to_string();
    let decoded = percent_encoding::percent_decode_str(&text)
        .decode_utf8()
        .expect("UTF-8");
    let value = serde_json::from_str(&decoded)
        .unwrap_or_else(|e| panic!("trust policy is not JSON ({e}): {decoded}"));
    (text, value)
}

/// Every message on a queue (received and deleted) with its message attributes, until a
/// receive comes back empty.
async fn drain(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Vec<(Value, aws_sdk_sqs::types::Message)> {
    let mut all = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        if got.messages().is_empty() {
            return all;
        }
        for m in got.messages() {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
            let body = serde_json::from_str(m.body().unwrap_or_default())
                .unwrap_or_else(|_| Value::String(m.body().unwrap_or_default().to_string()));
            all.push((body, m.clone()));
        }
    }
}

/// The statements of ours (`Sid` starting with `AwsJit`; the base policies have none).
pub(crate) fn ours(policy: &Value) -> Vec<Value> {
    statements(policy)
        .into_iter()
        .filter(|s| {
            s["Sid"]
                .as_str()
                .is_some_and(|sid| sid.starts_with("AwsJit"))
        })
        .collect()
}

pub(crate) fn foreign(policy: &Value) -> Vec<Value> {
    statements(policy)
        .into_iter()
        .filter(|s| {
            !s["Sid"]
                .as_str()
                .is_some_and(|sid| sid.starts_with("AwsJit"))
        })
        .collect()
}

pub(crate) fn statements(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(all) => all.clone(),
        one => vec![one.clone()],
    }
}

/// The statement a grant must write (key order does not matter in the comparison).
pub(crate) fn expected_statement(run: &Run, expires_at: &str) -> Value {
    json!({
        "Sid": run.sid(),
        "Effect": "Allow",
        "Principal": {"AWS": REQUESTER_ARN},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
        "Condition": {
            "DateLessThan": {"aws:CurrentTime": expires_at},
            "StringEquals": {
                "sts:SourceIdentity": run.input["source_identity"],
                "sts:RoleSessionName": run.input["session_name"],
            },
        },
    })
}

pub(crate) fn grant_of(hold: &Value) -> GrantOutput {
    serde_json::from_value(hold["grant"].clone())
        .unwrap_or_else(|e| panic!("the hold's grant is not a GrantOutput ({e}): {hold}"))
}

fn seconds_between(from: &str, to: &str) -> i64 {
    let from: jiff::Timestamp = from.parse().expect("RFC 3339");
    let to: jiff::Timestamp = to.parse().expect("RFC 3339");
    to.as_second() - from.as_second()
}

#[tokio::test]
async fn worker_grants_for_the_hold_and_revokes_when_it_expires() {
    let env = Env::new("wk-expire", base_policy()).await;
    let t0 = Instant::now();
    let worker = env.spawn(env.worker());
    let duration = 12;
    let run = env.start(duration).await;
    env.approve(&[&run]).await;

    let holds = env.holds(&[&run], STEP).await;
    let grant = grant_of(&holds[&run.arn]);
    // Access is held: exactly our statement, until the expiry the grant answered.
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(&run, &grant.expires_at)],
        "{held}"
    );
    assert_eq!(foreign(&held), statements(&env.base), "foreign statements");
    assert_eq!(grant.statement_id, run.sid());
    // The window the approval fixed (granted_at is its start).
    assert_eq!(
        seconds_between(&grant.granted_at, &grant.expires_at),
        duration as i64
    );
    assert!(
        grant
            .expires_at
            .parse::<jiff::Timestamp>()
            .expect("RFC 3339")
            > jiff::Timestamp::now(),
        "checked while held"
    );

    // The hold times out; the state machine asks for the revoke; the worker does it.
    let output = env
        .succeeded_with(
            &run,
            ExecutionOutcome::Expired,
            Duration::from_secs(duration) + STEP,
        )
        .await;
    let revoke: RevokeOutput = serde_json::from_value(output["revoke"].clone()).expect("revoke");
    assert_eq!(revoke.removed, vec![run.sid()], "{output}");
    assert_eq!(output["grant"], json!(grant));
    assert_eq!(output["request"], run.input["request"]);
    let (_, after) = env.policy().await;
    assert!(ours(&after).is_empty(), "{after}");
    assert_eq!(after, env.base, "the trust policy is as it was");
    assert_eq!(
        env.alert_events(&run).await,
        ["requested", "approved", "granted", "expired"]
    );
    worker.stop().await;
    eprintln!("expire via worker: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn answering_the_hold_revokes_at_once() {
    let env = Env::new("wk-early", base_policy()).await;
    let t0 = Instant::now();
    let worker = env.spawn(env.worker());
    // A long hold: only the early end can revoke within the test's deadlines.
    let run = env.start(3600).await;
    env.approve(&[&run]).await;
    let holds = env.holds(&[&run], STEP).await;
    let hold = &holds[&run.arn];
    let grant = grant_of(hold);
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(&run, &grant.expires_at)]
    );

    let ended = json!({"ended_by": "bob", "reason": "deleted"});
    env.sfn
        .send_task_success()
        .task_token(hold["task_token"].as_str().expect("token"))
        .output(ended.to_string())
        .send()
        .await
        .expect("end the hold");
    let (iam, role) = (&env.iam, env.role_name.as_str());
    eventually("our statement to be revoked", STEP, || async move {
        let (_, policy) = policy_of(iam, role).await;
        if ours(&policy).is_empty() {
            Ok(())
        } else {
            Err(policy.to_string())
        }
    })
    .await;
    let output = env
        .succeeded_with(&run, ExecutionOutcome::Revoked, STEP)
        .await;
    assert_eq!(output["hold"], ended);
    assert_eq!(output["revoke"]["removed"], json!([run.sid()]), "{output}");
    let (_, after) = env.policy().await;
    assert_eq!(after, env.base);
    worker.stop().await;
    eprintln!(
        "early revoke via worker: {:?} (deploy excluded)",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_grant_over_the_size_limit_fails_and_changes_nothing() {
    // Foreign statements that leave less room than one grant needs under IAM's default
    // limit (2048 characters, minified).
    let mut base = base_policy();
    let subjects: Vec<String> = (0..)
        .map(|i| format!("repo:org/service-{i:03}:ref:refs/heads/main"))
        .take(36)
        .collect();
    base["Statement"][1]["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"] =
        json!(subjects);
    let size = base.to_string().len();
    assert!(
        (1900..=2048).contains(&size),
        "the base policy must fit but leave no room: {size}"
    );
    let env = Env::new("wk-toolarge", base).await;
    let t0 = Instant::now();
    // The worker as shipped: IAM's default limit.
    let worker = env.spawn(env.worker());
    let run = env.start(3600).await;
    env.approve(&[&run]).await;

    match env.finished(&run, STEP).await {
        ExecutionState::Failed { error, .. } => assert_eq!(error, "GrantFailed"),
        other => panic!("expected FAILED GrantFailed, got {other:?}"),
    }
    let (text, after) = env.policy().await;
    assert_eq!(after, env.base, "the trust policy means what it meant");
    assert_eq!(
        text, env.base_text,
        "the trust policy was not even rewritten"
    );
    assert_eq!(
        env.alert_events(&run).await,
        ["requested", "approved", "grant_failed"],
        "the revoke after the failed grant succeeded (no revoke_failed)"
    );
    worker.stop().await;
    eprintln!("grant too large: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn a_missing_role_fails_the_grant_and_its_revoke_succeeds() {
    let env = Env::new("wk-norole", base_policy()).await;
    let t0 = Instant::now();
    let worker = env.spawn(env.worker());
    let missing = support::unique("gone");
    let run = env
        .start_for(
            &format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/{missing}"),
            &format!("{ACCOUNT_ID}/{missing}"),
            3600,
        )
        .await;
    env.approve(&[&run]).await;

    match env.finished(&run, STEP).await {
        ExecutionState::Failed { error, .. } => assert_eq!(error, "GrantFailed"),
        other => panic!("expected FAILED GrantFailed, got {other:?}"),
    }
    assert_eq!(
        env.alert_events(&run).await,
        ["requested", "approved", "grant_failed"],
        "the revoke of a role that does not exist is a success (no revoke_failed)"
    );
    // The revoke's answer, from the execution history: nothing removed.
    let history = env
        .sfn
        .get_execution_history()
        .execution_arn(&run.arn)
        .max_results(1000)
        .send()
        .await
        .expect("execution history");
    let revoked: Vec<Value> = history
        .events()
        .iter()
        .filter_map(|e| e.task_succeeded_event_details()?.output())
        .filter_map(|o| serde_json::from_str::<Value>(o).ok())
        .filter(|o| o.get("revoked_at").is_some())
        .collect();
    assert_eq!(revoked.len(), 1, "{history:?}");
    assert_eq!(revoked[0]["removed"], json!([]));
    let (text, _) = env.policy().await;
    assert_eq!(text, env.base_text, "another role is not touched");
    worker.stop().await;
    eprintln!("missing role: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn redelivered_grants_and_revokes_change_nothing() {
    let env = Env::new("wk-idem", base_policy()).await;
    let t0 = Instant::now();
    // No loop: the test takes the work items and hands each to `handle` twice.
    let worker = env.worker();
    let run = env.start(600).await;
    env.approve(&[&run]).await;
    let grant_item = env.work_item("grant", &run).await.to_string();

    let first = match worker.handle(&grant_item).await {
        Outcome::Answered {
            answer: Answer::Granted(g),
            delivery: TaskAnswer::Delivered,
        } => g,
        other => panic!("first grant: {other:?}"),
    };
    let (after_first_text, after_first) = env.policy().await;
    assert_eq!(
        ours(&after_first),
        vec![expected_statement(&run, &first.expires_at)]
    );
    // Let the clock pass a whole second, so a second grant computing a new expiry
    // would show.
    let granted: jiff::Timestamp = first.granted_at.parse().expect("RFC 3339");
    eventually(
        "the clock to pass the grant's second",
        STEP,
        || async move {
            if jiff::Timestamp::now().as_second() > granted.as_second() {
                Ok(())
            } else {
                Err("same second".to_string())
            }
        },
    )
    .await;
    match worker.handle(&grant_item).await {
        Outcome::Answered {
            answer: Answer::Granted(again),
            delivery,
        } => {
            assert_eq!(again, first, "a redelivered grant answers as the first did");
            // AWS refuses a second answer (the task is closed: TaskTimedOut, taken as
            // AlreadyOver); so does moto as tests/support/moto_server.py runs it.
            assert_eq!(delivery, TaskAnswer::AlreadyOver);
        }
        other => panic!("second grant: {other:?}"),
    }
    let (text, _) = env.policy().await;
    assert_eq!(
        text, after_first_text,
        "the second grant did not write the policy"
    );

    // End the hold early and take the revoke item.
    let holds = env.holds(&[&run], STEP).await;
    assert_eq!(grant_of(&holds[&run.arn]), first);
    env.sfn
        .send_task_success()
        .task_token(holds[&run.arn]["task_token"].as_str().expect("token"))
        .output(json!({"ended_by": "bob"}).to_string())
        .send()
        .await
        .expect("end the hold");
    let revoke_item = env.work_item("revoke", &run).await.to_string();
    match worker.handle(&revoke_item).await {
        Outcome::Answered {
            answer: Answer::Revoked(r),
            delivery: TaskAnswer::Delivered,
        } => assert_eq!(r.removed, vec![run.sid()]),
        other => panic!("first revoke: {other:?}"),
    }
    let (after_revoke_text, after_revoke) = env.policy().await;
    assert_eq!(after_revoke, env.base);
    match worker.handle(&revoke_item).await {
        // AlreadyOver, as for the grant above.
        Outcome::Answered {
            answer: Answer::Revoked(r),
            delivery: TaskAnswer::AlreadyOver,
        } => assert!(r.removed.is_empty() && r.swept.is_empty(), "{r:?}"),
        // The execution may have finished by now: AWS then says TaskTimedOut (taken as
        // AlreadyOver), moto answers 500. Either way the policy must be untouched.
        Outcome::Retry { reason } if reason.contains("SendTaskSuccess") => {}
        other => panic!("second revoke: {other:?}"),
    }
    let (text, _) = env.policy().await;
    assert_eq!(
        text, after_revoke_text,
        "the second revoke did not write the policy"
    );
    let output = env
        .succeeded_with(&run, ExecutionOutcome::Revoked, STEP)
        .await;
    assert_eq!(output["grant"], json!(first));
    eprintln!("idempotency: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn twenty_grants_on_one_role_at_once() {
    let env = Env::new("wk-twenty", base_policy()).await;
    let t0 = Instant::now();
    // One statement of ours (UUID request UID, this requester) is 223 characters, so 20
    // of them and this base policy (492) make 4952: more than IAM's largest quota (4096;
    // it fits 16, or 6 under the default 2048). moto enforces no limit, and this test is
    // about serialising the read-modify-writes of one role, so the limit is lifted here.
    let worker = env.spawn(env.worker().with_size_limit(16 * 1024));
    // Long enough that every grant is still held when the last one is made.
    let duration = 20;
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(env.start(duration).await);
    }
    let refs: Vec<&Run> = runs.iter().collect();
    env.approve(&refs).await;

    let holds = env.holds(&refs, STEP * 2).await;
    let (_, held) = env.policy().await;
    let mut expected: Vec<Value> = runs
        .iter()
        .map(|r| expected_statement(r, &grant_of(&holds[&r.arn]).expires_at))
        .collect();
    let mut actual = ours(&held);
    let by_sid = |s: &Value| s["Sid"].as_str().unwrap_or_default().to_string();
    expected.sort_by_key(by_sid);
    actual.sort_by_key(by_sid);
    assert_eq!(actual.len(), 20, "{held}");
    assert_eq!(actual, expected);
    assert_eq!(foreign(&held), statements(&env.base), "foreign statements");
    let earliest_expiry = runs
        .iter()
        .map(|r| grant_of(&holds[&r.arn]).expires_at)
        .min()
        .expect("20 grants");
    assert!(
        earliest_expiry
            .parse::<jiff::Timestamp>()
            .expect("RFC 3339")
            > jiff::Timestamp::now(),
        "all 20 were checked while held"
    );

    for run in &runs {
        env.succeeded_with(
            run,
            ExecutionOutcome::Expired,
            Duration::from_secs(duration) + STEP,
        )
        .await;
    }
    let (_, after) = env.policy().await;
    assert!(ours(&after).is_empty(), "{after}");
    assert_eq!(after, env.base);
    worker.stop().await;
    eprintln!("twenty at once: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_their_group_moves_on() {
    let env = Env::new("wk-poison", base_policy()).await;
    let t0 = Instant::now();
    let group = env.work_group();
    let poison = [
        "this is not JSON".to_string(),
        json!({"type": "bribe", "task_token": "t", "amount": 100}).to_string(),
        json!({"type": "grant", "execution_arn": "arn:x"}).to_string(),
    ];
    for (i, body) in poison.iter().enumerate() {
        env.sqs
            .send_message()
            .queue_url(&env.out.work_queue_url)
            .message_body(body)
            .message_group_id(&group)
            .message_deduplication_id(format!("poison-{i}"))
            .send()
            .await
            .expect("queue a poison message");
    }
    // The grant is queued behind them, in the same group, before the worker starts.
    let run = env.start(12).await;
    env.approve(&[&run]).await;
    eventually("the grant behind the poison", STEP, || async {
        match env.queue_length(&env.out.work_queue_url).await {
            4 => Ok(()),
            n => Err(format!("{n} messages")),
        }
    })
    .await;
    let worker = env.spawn(env.worker());

    let holds = env.holds(&[&run], STEP).await;
    let grant = grant_of(&holds[&run.arn]);
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(&run, &grant.expires_at)]
    );
    let dead = drain(&env.sqs, &env.out.work_dlq_url).await;
    let bodies: BTreeSet<String> = dead
        .iter()
        .map(|(_, m)| m.body().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        bodies,
        poison.iter().cloned().collect(),
        "dead-lettered as sent"
    );
    for (_, m) in &dead {
        let group_id = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId));
        assert_eq!(group_id, Some(&group), "{:?}", m.body());
        // Moved by the worker (SQS's redrive would take five receives and add no reason).
        let reason = m
            .message_attributes()
            .and_then(|a| a.get(DEAD_LETTER_REASON_ATTRIBUTE))
            .and_then(|v| v.string_value());
        assert!(reason.is_some_and(|r| !r.is_empty()), "{:?}", m.body());
    }

    env.succeeded_with(&run, ExecutionOutcome::Expired, STEP)
        .await;
    let (_, after) = env.policy().await;
    assert_eq!(after, env.base);
    assert_eq!(env.queue_length(&env.out.work_queue_url).await, 0);
    worker.stop().await;
    eprintln!("poison: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn a_grant_without_its_sessions_deny_in_place_is_never_made() {
    let env = Env::new("wk-nodeny", base_policy()).await;
    let worker = env.worker();
    let run = env.start(600).await;
    env.approve(&[&run]).await;
    let grant_item = env.work_item("grant", &run).await.to_string();
    // The execution wrote the deny before it asked for the grant; it is gone when the
    // worker gets the item (an inline-policy cleanup by hand, a definition that skips
    // it): without it a session could outlive the grant, so nothing is granted.
    let policy = run.input["session_policy_name"]
        .as_str()
        .expect("policy name");
    env.iam
        .get_role_policy()
        .role_name(&env.role_name)
        .policy_name(policy)
        .send()
        .await
        .expect("the execution wrote the sessions' deny before the grant item");
    env.iam
        .delete_role_policy()
        .role_name(&env.role_name)
        .policy_name(policy)
        .send()
        .await
        .expect("delete the deny");
    // Not there: maybe IAM does not show the write yet, so the item is tried again
    // later (the task's timeout bounds the tries), and nothing is written meanwhile.
    for _ in 0..2 {
        match worker.handle(&grant_item).await {
            Outcome::Retry { reason } => assert!(reason.contains("deny policy"), "{reason}"),
            other => panic!("a grant without its deny: {other:?}"),
        }
        let (_, after) = env.policy().await;
        assert_eq!(after, env.base, "nothing granted");
    }
    // A deny that is there but is not this grant's (another expiry, a hand edit) is
    // final: the task fails, nothing granted.
    env.iam
        .put_role_policy()
        .role_name(&env.role_name)
        .policy_name(policy)
        .policy_document(
            aws_jit::grant::trust_policy::session::deny_document(
                run.input["session_name"].as_str().expect("session"),
                "2099-01-01T00:00:00Z",
                false,
            )
            .to_string(),
        )
        .send()
        .await
        .expect("a deny with another expiry");
    match worker.handle(&grant_item).await {
        Outcome::Answered {
            answer: Answer::Failed { error, cause },
            ..
        } => {
            assert_eq!(error, "GrantFailed");
            assert!(cause.contains("another document"), "{cause}");
        }
        other => panic!("a grant with another deny: {other:?}"),
    }
    let (_, after) = env.policy().await;
    assert_eq!(after, env.base, "nothing granted");
}

#[tokio::test]
async fn a_grant_for_an_execution_that_ended_is_taken_back() {
    let env = Env::new("wk-orphan", base_policy()).await;
    let t0 = Instant::now();
    let worker = env.worker();
    let run = env.start(600).await;
    env.approve(&[&run]).await;
    let grant_item = env.work_item("grant", &run).await.to_string();
    // The execution ends before the worker gets to the item: its grant task fails (as a
    // timeout, or another operator replica, would fail it) and the revoke behind it is
    // answered, so the grant item is
    // now a late redelivery that nothing would ever revoke. (moto 5.2.5 does not end an
    // execution waiting for a task token on StopExecution, so this is how it ends here.)
    env.sfn
        .send_task_failure()
        .task_token(
            serde_json::from_str::<Value>(&grant_item).expect("JSON")["task_token"]
                .as_str()
                .expect("token"),
        )
        .error("GrantFailed")
        .send()
        .await
        .expect("fail the grant task");
    let revoke_item = env.work_item("revoke", &run).await;
    env.sfn
        .send_task_success()
        .task_token(revoke_item["task_token"].as_str().expect("token"))
        .output(json!({"revoked_at": "2030-01-01T00:00:00Z"}).to_string())
        .send()
        .await
        .expect("answer the revoke");
    match env.finished(&run, STEP).await {
        ExecutionState::Failed { error, .. } => assert_eq!(error, "GrantFailed"),
        other => panic!("expected FAILED, got {other:?}"),
    }
    // The task is over: nothing is written at all (the heartbeat before the write,
    // or the deny already tightened by the failed grant's path, says so).
    match worker.handle(&grant_item).await {
        // AWS says the task is over (AlreadyOver), and so does moto as run here.
        Outcome::Answered {
            answer: Answer::Failed { .. },
            delivery: TaskAnswer::AlreadyOver,
        } => {}
        other => panic!("grant for a stopped execution: {other:?}"),
    }
    let (_, after) = env.policy().await;
    assert_eq!(
        after, env.base,
        "the grant nobody would revoke was taken back"
    );
    eprintln!("orphaned grant: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn without_a_dead_letter_url_poison_is_left_to_sqs_redrive() {
    let env = Env::new("wk-redrive", base_policy()).await;
    let t0 = Instant::now();
    env.sqs
        .send_message()
        .queue_url(&env.out.work_queue_url)
        .message_body("junk")
        .message_group_id(env.work_group())
        .message_deduplication_id("junk")
        .send()
        .await
        .expect("queue a poison message");
    let run = env.start(3600).await;
    env.approve(&[&run]).await;
    eventually("the grant behind the poison", STEP, || async {
        match env.queue_length(&env.out.work_queue_url).await {
            2 => Ok(()),
            n => Err(format!("{n} messages")),
        }
    })
    .await;
    // The worker as built without WorkDeadLetterQueueUrl.
    let worker = env.spawn(
        Worker::new(
            env.authority(),
            env.sqs.clone(),
            env.iam.clone(),
            StepFunctionClient::new(env.sfn.clone(), &env.out.state_machine_arn),
            &env.out.work_queue_url,
        )
        .with_wait_time(Duration::from_secs(1)),
    );

    // The grant behind the poison is done at once: it belongs to another execution.
    let holds = env.holds(&[&run], STEP).await;
    let grant = grant_of(&holds[&run.arn]);
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(&run, &grant.expires_at)]
    );
    // SQS moves the poison after five receives (the template's maxReceiveCount); the
    // worker makes it visible again a few seconds after each, so that is quick too.
    let (sqs, dlq) = (&env.sqs, env.out.work_dlq_url.as_str());
    let dead = eventually(
        "SQS to dead-letter the poison",
        Duration::from_secs(60),
        || async move {
            let dead = drain(sqs, dlq).await;
            if dead.is_empty() {
                Err("the dead-letter queue is empty".to_string())
            } else {
                Ok(dead)
            }
        },
    )
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (_, m) = &dead[0];
    assert_eq!(m.body(), Some("junk"));
    assert!(
        m.message_attributes()
            .and_then(|a| a.get(DEAD_LETTER_REASON_ATTRIBUTE))
            .is_none(),
        "moved by SQS's redrive, not by the worker"
    );
    assert_eq!(env.queue_length(&env.out.work_queue_url).await, 0);
    worker.stop().await;
    eprintln!(
        "poison left to redrive: {:?} (deploy excluded)",
        t0.elapsed()
    );
}

#[tokio::test]
async fn transient_iam_errors_leave_the_work_for_later() {
    let env = Env::new("wk-transient", base_policy()).await;
    let t0 = Instant::now();
    let run = env.start(3600).await;
    env.approve(&[&run]).await;
    eventually("the grant item", STEP, || async {
        match env.queue_length(&env.out.work_queue_url).await {
            1 => Ok(()),
            n => Err(format!("{n} messages")),
        }
    })
    .await;

    // A worker whose IAM cannot be reached (a closed port; no SDK retries, to be quick).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let sdk = support::stack().aws.sdk_config().await;
    let unreachable_iam = aws_sdk_iam::Client::from_conf(
        aws_sdk_iam::config::Builder::from(&sdk)
            .endpoint_url(format!("http://127.0.0.1:{closed}"))
            .retry_config(aws_sdk_iam::config::retry::RetryConfig::disabled())
            .build(),
    );
    let broken = Worker::new(
        env.authority(),
        env.sqs.clone(),
        unreachable_iam,
        StepFunctionClient::new(env.sfn.clone(), &env.out.state_machine_arn),
        &env.out.work_queue_url,
    )
    .with_dead_letter_url(&env.out.work_dlq_url)
    .with_wait_time(Duration::from_secs(1))
    .with_retry_delay(Duration::from_secs(1));
    let running = env.spawn(broken);
    eventually("the broken worker to take the grant", STEP, || async {
        match env.queue_length(&env.out.work_queue_url).await {
            0 => Ok(()),
            n => Err(format!("{n} visible")),
        }
    })
    .await;
    // Stopping lets it finish that message: not answered, not deleted, released for a
    // short back-off (well under the queue's 60-second visibility timeout).
    running.stop().await;
    let released = Instant::now();
    eventually(
        "the grant item to be visible again",
        Duration::from_secs(10),
        || async {
            match env.queue_length(&env.out.work_queue_url).await {
                1 => Ok(()),
                n => Err(format!("{n} visible")),
            }
        },
    )
    .await;
    assert!(released.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(env.sfn_state(&run).await, ExecutionState::Running),
        "the grant was not answered"
    );
    let (text, _) = env.policy().await;
    assert_eq!(text, env.base_text);

    // A worker that reaches IAM then does the same item.
    let worker = env.spawn(env.worker());
    let holds = env.holds(&[&run], STEP).await;
    let grant = grant_of(&holds[&run.arn]);
    let (_, held) = env.policy().await;
    assert_eq!(
        ours(&held),
        vec![expected_statement(&run, &grant.expires_at)]
    );
    worker.stop().await;
    eprintln!("transient IAM errors: {:?} (deploy excluded)", t0.elapsed());
}
