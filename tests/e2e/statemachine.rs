//! The contract between the shipped state machine (`deploy/aws/aws-jit.yaml`) and the
//! operator, pinned before the controller exists: each test deploys the template to moto
//! (which runs the real ASL), plays the operator with the plain AWS SDK, and checks the
//! messages, the final status and output, and the alert events in order, and what the
//! flow itself does to the target role (the per-request session deny) and its session
//! cleanup. The contract itself is written down in deploy/aws/README.md.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::support::aws::{ACCOUNT_ID, AwsOutputs};
use crate::support::{self, wait::eventually};

/// Deadline for a step the state machine takes at once (moto on a busy machine).
const STEP: Duration = Duration::from_secs(30);
/// The grant methods' flows take many more steps (and a 3 s poll wait) than the trust
/// policy's before their hold: more room when the whole suite loads moto.
const METHOD_STEP: Duration = Duration::from_secs(90);
const WORK_GROUP: &str = "123456789012/admin";
const REQUESTER_ARN: &str = "arn:aws:iam::123456789012:user/alice";

/// One deployed stack and the clients to play the operator against it.
struct Operator {
    sfn: aws_sdk_sfn::Client,
    sqs: aws_sdk_sqs::Client,
    iam: aws_sdk_iam::Client,
    out: AwsOutputs,
}

/// One execution, as the operator starts it.
struct Run {
    arn: String,
    /// `ar-<uid>`: the execution's name, its session name, and the name of its session
    /// cleanup execution.
    name: String,
    input: Value,
    /// The target role (created for the run, under `/jit/`) and its session deny's name.
    role_name: String,
    policy_name: String,
}

/// A message taken (received and deleted) from a queue.
#[derive(Debug)]
struct Taken {
    body: Value,
    group_id: Option<String>,
    dedup_id: Option<String>,
}

impl Taken {
    fn token(&self) -> String {
        self.body["task_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("no task_token in {}", self.body))
            .to_string()
    }
}

impl Operator {
    async fn deploy(prefix: &str) -> Operator {
        let moto = &support::stack().aws;
        let sdk = moto.sdk_config().await;
        let out = moto.deploy(prefix).await;
        Operator {
            sfn: aws_sdk_sfn::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            iam: aws_sdk_iam::Client::new(&sdk),
            out,
        }
    }

    /// A target role under `/jit/` (the managed path the stacks are deployed with), with
    /// moto's default `MaxSessionDuration` (3600 s) or `max_session_seconds`: moto does
    /// not check its range, so a test can make sessions last seconds.
    async fn create_role(&self, max_session_seconds: Option<i32>) -> String {
        let name = support::unique("sm-admin");
        self.iam
            .create_role()
            .role_name(&name)
            .path("/jit/")
            .assume_role_policy_document(
                json!({"Version": "2012-10-17", "Statement": [{
                    "Sid": "SomeoneElse", "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:user/bob"},
                    "Action": "sts:AssumeRole"}]})
                .to_string(),
            )
            .set_max_session_duration(max_session_seconds)
            .send()
            .await
            .expect("create the target role");
        name
    }

    /// Starts an execution with the contract's input, on a target role of its own; the
    /// name stands for the one the controller derives from the request's UID.
    async fn start(&self, duration_seconds: u64, approval_timeout_seconds: u64) -> Run {
        let role = self.create_role(None).await;
        self.start_on(&role, duration_seconds, approval_timeout_seconds)
            .await
    }

    async fn start_on(
        &self,
        role_name: &str,
        duration_seconds: u64,
        approval_timeout_seconds: u64,
    ) -> Run {
        let uid = support::unique("uid");
        let name = format!("ar-{uid}");
        let policy_name = format!("AwsJit-{uid}");
        let input = json!({
            "requester_arn": REQUESTER_ARN,
            "requester_name": "alice",
            "reason": "fix prod",
            "ticket": "OPS-1",
            "role_arn": format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/{role_name}"),
            "method": "TrustPolicy",
            "work_group": WORK_GROUP,
            "duration_seconds": duration_seconds,
            "approval_timeout_seconds": approval_timeout_seconds,
            "request": {"namespace": "team-a", "name": "fix-prod", "uid": uid},
            "role_name": role_name,
            "session_name": name,
            "source_identity": "alice",
            "session_policy_name": policy_name,
        });
        let started = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.out.state_machine_arn)
            .name(&name)
            .input(input.to_string())
            .send()
            .await
            .expect("start execution");
        Run {
            arn: started.execution_arn().to_string(),
            name,
            input,
            role_name: role_name.to_string(),
            policy_name,
        }
    }

    /// Waits for the next message on `queue_url`, deletes it and returns it.
    async fn take(&self, queue_url: &str, what: &str, timeout: Duration) -> Taken {
        let sqs = &self.sqs;
        eventually(what, timeout, || async move {
            let got = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(1)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let Some(m) = got.messages().first() else {
                return Err("queue empty".to_string());
            };
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| format!("delete: {e:?}"))?;
            let attr =
                |a: MessageSystemAttributeName| m.attributes().and_then(|all| all.get(&a)).cloned();
            Ok(Taken {
                body: serde_json::from_str(m.body().unwrap_or_default())
                    .map_err(|e| format!("body is not JSON ({e}): {:?}", m.body()))?,
                group_id: attr(MessageSystemAttributeName::MessageGroupId),
                dedup_id: attr(MessageSystemAttributeName::MessageDeduplicationId),
            })
        })
        .await
    }

    /// Takes the next message of `run` from `queue_url` and checks the parts every task
    /// message carries.
    async fn take_task(&self, run: &Run, queue_url: &str, kind: &str, timeout: Duration) -> Taken {
        let taken = self
            .take(queue_url, &format!("a {kind} message"), timeout)
            .await;
        assert_eq!(taken.body["type"], kind, "{}", taken.body);
        assert_eq!(
            taken.body["execution_arn"],
            run.arn.as_str(),
            "{}",
            taken.body
        );
        assert_eq!(
            taken.body["input"], run.input,
            "a task carries the execution input"
        );
        taken.token();
        taken
    }

    /// Takes the next work-queue message and checks its FIFO group and dedup id.
    async fn take_work(&self, run: &Run, kind: &str, timeout: Duration) -> Taken {
        let taken = self
            .take_task(run, &self.out.work_queue_url, kind, timeout)
            .await;
        assert_eq!(
            taken.group_id.as_deref(),
            Some(WORK_GROUP),
            "work is grouped by work_group"
        );
        assert_eq!(taken.dedup_id, Some(format!("{}-{kind}", run.name)));
        taken
    }

    async fn assert_empty(&self, queue_url: &str, what: &str) {
        let got = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        let bodies: Vec<_> = got.messages().iter().map(|m| m.body()).collect();
        assert!(bodies.is_empty(), "{what} should be empty, has {bodies:?}");
    }

    async fn succeed(&self, task: &Taken, output: &Value) {
        self.sfn
            .send_task_success()
            .task_token(task.token())
            .output(output.to_string())
            .send()
            .await
            .expect("send task success");
    }

    async fn fail(&self, task: &Taken, error: &str, cause: &str) {
        self.sfn
            .send_task_failure()
            .task_token(task.token())
            .error(error)
            .cause(cause)
            .send()
            .await
            .expect("send task failure");
    }

    /// Approves with the access window the operator fixes at approval: `expires_at` =
    /// now + the request's duration.
    async fn approve(&self, run: &Run) -> Value {
        let duration = run.input["duration_seconds"].as_u64().expect("duration");
        self.approve_until(run, &in_seconds(duration)).await
    }

    async fn approve_until(&self, run: &Run, expires_at: &str) -> Value {
        let request = self
            .take_task(run, &self.out.request_queue_url, "approval", STEP)
            .await;
        let approval = json!({
            "approver_name": "carol,dave",
            "approvers": ["carol", "dave"],
            "requester_arn": request.body["input"]["requester_arn"],
            "expires_at": expires_at,
        });
        self.succeed(&request, &approval).await;
        approval
    }

    /// The run's session deny on its role, as IAM returns it; `None` when there is none.
    async fn session_deny(&self, run: &Run) -> Option<Value> {
        match self
            .iam
            .get_role_policy()
            .role_name(&run.role_name)
            .policy_name(&run.policy_name)
            .send()
            .await
        {
            Ok(got) => Some(policy_json(got.policy_document())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_no_such_entity_exception()) =>
            {
                None
            }
            Err(e) => panic!("get the session deny: {e:?}"),
        }
    }

    /// The run's session cleanup execution, once the flow has started it.
    async fn cleanup_execution(&self, run: &Run) -> DescribeExecutionOutput {
        let arn = format!(
            "{}:{}",
            self.out
                .cleanup_state_machine_arn
                .replace(":stateMachine:", ":execution:"),
            run.name
        );
        let (sfn, arn) = (&self.sfn, arn.as_str());
        eventually("the session cleanup execution", STEP, || async move {
            sfn.describe_execution()
                .execution_arn(arn)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))
        })
        .await
    }

    async fn grant(&self, run: &Run) -> Value {
        let work = self.take_work(run, "grant", STEP).await;
        let grant = json!({
            "granted_at": "2030-01-01T10:00:00Z",
            "expires_at": "2030-01-01T11:00:00Z",
            "statement_id": format!("AwsJit{}", run.name.replace('-', "")),
        });
        self.succeed(&work, &grant).await;
        grant
    }

    /// The definition the executing backend runs for `state_machine_arn`.
    async fn definition(&self, state_machine_arn: &str) -> Value {
        let described = self
            .sfn
            .describe_state_machine()
            .state_machine_arn(state_machine_arn)
            .send()
            .await
            .expect("describe state machine");
        serde_json::from_str(described.definition()).expect("the definition is JSON")
    }

    async fn status(&self, run: &Run) -> ExecutionStatus {
        self.sfn
            .describe_execution()
            .execution_arn(&run.arn)
            .send()
            .await
            .expect("describe execution")
            .status()
            .clone()
    }

    /// Waits for the execution to leave RUNNING.
    async fn finished(&self, run: &Run, timeout: Duration) -> DescribeExecutionOutput {
        let sfn = &self.sfn;
        let arn = run.arn.as_str();
        eventually("the execution to finish", timeout, || async move {
            let d = sfn
                .describe_execution()
                .execution_arn(arn)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            match d.status() {
                ExecutionStatus::Running => Err("RUNNING".to_string()),
                _ => Ok(d),
            }
        })
        .await
    }

    async fn succeeded_with(&self, run: &Run, outcome: &str) -> Value {
        let d = self.finished(run, STEP).await;
        assert_eq!(
            d.status(),
            &ExecutionStatus::Succeeded,
            "error {:?} cause {:?}",
            d.error(),
            d.cause()
        );
        let output: Value =
            serde_json::from_str(d.output().expect("output")).expect("output is JSON");
        assert_eq!(output["outcome"], outcome, "{output}");
        assert_eq!(output["request"], run.input["request"], "{output}");
        output
    }

    /// All alerts of `run`, in order, checked against `expected`; the alert queue is then
    /// empty. Call once the execution has finished (every alert is sent by then).
    async fn alerts(&self, run: &Run, expected: &[&str]) -> HashMap<String, Value> {
        let queue = self.out.alert_queue_url.as_str();
        let mut seen = Vec::<Taken>::new();
        for _ in expected {
            let so_far: Vec<_> = seen.iter().map(|t| t.body["event"].clone()).collect();
            seen.push(
                self.take(queue, &format!("the alert after {so_far:?}"), STEP)
                    .await,
            );
        }
        let events: Vec<_> = seen
            .iter()
            .map(|t| t.body["event"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(events, expected, "alert events in order");
        for alert in &seen {
            let event = alert.body["event"].as_str().unwrap_or("?");
            assert_eq!(alert.body["execution_arn"], run.arn.as_str(), "{event}");
            assert_eq!(alert.body["input"], run.input, "{event}");
            assert_eq!(
                alert.group_id.as_deref(),
                Some(run.name.as_str()),
                "{event}: group"
            );
            assert_eq!(
                alert.dedup_id,
                Some(format!("{}-{event}", run.name)),
                "{event}: dedup id"
            );
        }
        self.assert_empty(queue, "the alert queue").await;
        seen.into_iter()
            .map(|t| (t.body["event"].as_str().unwrap_or("?").to_string(), t.body))
            .collect()
    }
}

#[tokio::test]
async fn approved_access_expires_when_the_hold_times_out() {
    let op = Operator::deploy("sm-expire").await;
    let t0 = Instant::now();
    let duration = Duration::from_secs(2);
    let run = op.start(duration.as_secs(), 30).await;

    let approval = op.approve(&run).await;
    let expires_at = approval["expires_at"].as_str().expect("expires_at");
    let grant = op.grant(&run).await;
    // The hold starts after the grant is answered.
    let granted = Instant::now();

    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    assert_eq!(hold.body["grant"], grant);
    assert_eq!(hold.body["approval"], approval);
    // Not answered: the hold times out after duration_seconds.
    let revoke = op.take_work(&run, "revoke", duration + STEP).await;
    assert!(
        granted.elapsed() >= duration,
        "revoked after {:?}, before the {duration:?} hold was over",
        granted.elapsed()
    );
    assert_eq!(revoke.body["reason"], "expired");
    assert_eq!(revoke.body["grant"], grant);
    // At expiry the deny is already in force: it is not tightened.
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_expire(&run, expires_at))
    );
    let revoked = json!({"revoked_at": "2030-01-01T11:00:00Z"});
    op.succeed(&revoke, &revoked).await;

    let output = op.succeeded_with(&run, "Expired").await;
    assert_eq!(output["approval"], approval);
    assert_eq!(output["grant"], grant);
    assert_eq!(output["revoke"], revoked);
    let alerts = op
        .alerts(&run, &["requested", "approved", "granted", "expired"])
        .await;
    assert_eq!(alerts["approved"]["approval"], approval);
    assert_eq!(
        alerts["granted"]["grant"]["expires_at"],
        grant["expires_at"]
    );
    assert_eq!(alerts["expired"]["grant"], grant);
    op.assert_empty(&op.out.work_queue_url, "the work queue")
        .await;
    op.assert_empty(&op.out.request_queue_url, "the request queue")
        .await;
    let cleanup = op.cleanup_execution(&run).await;
    assert_eq!(
        cleanup_input(&cleanup),
        json!({"role_name": run.role_name, "session_policy_name": run.policy_name,
               "session_name": run.name, "expires_at": expires_at, "max_session_seconds": 3600})
    );
    eprintln!("expire path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn answering_the_hold_revokes_access_early() {
    let op = Operator::deploy("sm-early").await;
    let t0 = Instant::now();
    // A long hold: only the operator's answer can end it within the test's deadlines.
    let run = op.start(3600, 30).await;
    let approval = op.approve(&run).await;
    let expires_at = approval["expires_at"].as_str().expect("expires_at");

    // The session deny is in place, for this request's sessions only, before the grant
    // work item is even sent: the flow waits on that item, so a deny written after it
    // could not exist yet.
    let work = op.take_work(&run, "grant", STEP).await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_expire(&run, expires_at)),
        "the deny at grant"
    );
    assert_eq!(
        inline_policies(&op.iam, &run.role_name).await,
        [run.policy_name.as_str()],
        "the deny is the role's only inline policy"
    );
    let grant = json!({
        "granted_at": "2030-01-01T10:00:00Z",
        "expires_at": expires_at,
        "statement_id": format!("AwsJit{}", run.name.replace('-', "")),
    });
    op.succeed(&work, &grant).await;

    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_expire(&run, expires_at)),
        "not tightened while access is live"
    );
    let ended = json!({"ended_by": "bob", "reason": "deleted"});
    op.succeed(&hold, &ended).await;

    // Ended early: every session of the request is denied from now on, before the
    // revoke work item is sent.
    let revoke = op.take_work(&run, "revoke", STEP).await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_revoked(&run, expires_at)),
        "the deny, tightened, before the revoke"
    );
    assert_eq!(revoke.body["reason"], "revoked");
    assert_eq!(revoke.body["grant"], grant);
    let revoked = json!({"revoked_at": "2030-01-01T10:05:00Z"});
    op.succeed(&revoke, &revoked).await;

    let output = op.succeeded_with(&run, "Revoked").await;
    assert_eq!(output["approval"], approval);
    assert_eq!(output["grant"], grant);
    assert_eq!(output["hold"], ended);
    assert_eq!(output["revoke"], revoked);
    let alerts = op
        .alerts(&run, &["requested", "approved", "granted", "revoked"])
        .await;
    assert_eq!(alerts["revoked"]["hold"], ended);
    assert_eq!(alerts["revoked"]["revoke"], revoked);
    // The cleanup is started once the revoke is answered; the deny stays, tightened,
    // until no session can be alive.
    let cleanup = op.cleanup_execution(&run).await;
    assert_eq!(cleanup.status(), &ExecutionStatus::Running);
    assert_eq!(cleanup_input(&cleanup)["expires_at"], expires_at);
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_revoked(&run, expires_at))
    );
    eprintln!("early revoke path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn a_denied_request_ends_without_a_grant() {
    let op = Operator::deploy("sm-deny").await;
    let t0 = Instant::now();
    let run = op.start(3600, 30).await;
    let request = op
        .take_task(&run, &op.out.request_queue_url, "approval", STEP)
        .await;
    let cause =
        json!({"approver_name": "carol", "requester_arn": REQUESTER_ARN, "comment": "not now"});
    op.fail(&request, "Denied", &cause.to_string()).await;

    let output = op.succeeded_with(&run, "Denied").await;
    // moto 5.2.5 drops SendTaskFailure's cause, so only the error name is checked here.
    assert_eq!(output["error"]["Error"], "Denied", "{output}");
    let alerts = op.alerts(&run, &["requested", "denied"]).await;
    assert_eq!(alerts["denied"]["error"]["Error"], "Denied");
    op.assert_empty(&op.out.work_queue_url, "the work queue")
        .await;
    eprintln!("deny path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn a_request_deleted_before_approval_is_cancelled() {
    let op = Operator::deploy("sm-cancel").await;
    let t0 = Instant::now();
    let run = op.start(3600, 30).await;
    let request = op
        .take_task(&run, &op.out.request_queue_url, "approval", STEP)
        .await;
    op.fail(&request, "Cancelled", "the AccessRequest was deleted")
        .await;

    let output = op.succeeded_with(&run, "Cancelled").await;
    assert_eq!(output["error"]["Error"], "Cancelled", "{output}");
    op.alerts(&run, &["requested", "cancelled"]).await;
    op.assert_empty(&op.out.work_queue_url, "the work queue")
        .await;
    eprintln!("cancel path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn an_unanswered_request_times_out() {
    let op = Operator::deploy("sm-timeout").await;
    let t0 = Instant::now();
    let approval_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let run = op.start(3600, approval_timeout.as_secs()).await;
    // The request is sent, and never answered.
    op.take_task(&run, &op.out.request_queue_url, "approval", STEP)
        .await;

    let d = op.finished(&run, approval_timeout + STEP).await;
    assert!(
        started.elapsed() >= approval_timeout,
        "timed out after {:?}",
        started.elapsed()
    );
    assert_eq!(d.status(), &ExecutionStatus::Succeeded);
    op.succeeded_with(&run, "ApprovalTimedOut").await;
    let alerts = op.alerts(&run, &["requested", "approval_timed_out"]).await;
    assert_eq!(
        alerts["approval_timed_out"]["error"]["Error"],
        "States.Timeout"
    );
    op.assert_empty(&op.out.work_queue_url, "the work queue")
        .await;
    eprintln!(
        "approval timeout path: {:?} (deploy excluded)",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_failed_grant_is_revoked_and_fails_the_execution() {
    let op = Operator::deploy("sm-grantfail").await;
    let t0 = Instant::now();
    let run = op.start(3600, 30).await;
    let approval = op.approve(&run).await;
    let expires_at = approval["expires_at"].as_str().expect("expires_at");
    let work = op.take_work(&run, "grant", STEP).await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_expire(&run, expires_at))
    );
    op.fail(
        &work,
        "GrantFailed",
        "trust policy would exceed 2048 characters",
    )
    .await;

    // A partial grant must not survive: a revoke comes first, in the same FIFO group,
    // and before it every session of the request is denied.
    let revoke = op.take_work(&run, "revoke", STEP).await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_revoked(&run, expires_at)),
        "the deny, tightened, before the revoke"
    );
    assert_eq!(revoke.body["reason"], "grant_failed");
    assert_eq!(
        revoke.body["error"]["Error"], "GrantFailed",
        "{}",
        revoke.body
    );
    assert_eq!(
        op.status(&run).await,
        ExecutionStatus::Running,
        "the execution must wait for the revoke"
    );
    op.succeed(&revoke, &json!({"revoked_at": "2030-01-01T10:00:01Z"}))
        .await;

    let d = op.finished(&run, STEP).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("GrantFailed"));
    let alerts = op
        .alerts(&run, &["requested", "approved", "grant_failed"])
        .await;
    assert_eq!(alerts["grant_failed"]["error"]["Error"], "GrantFailed");
    let cleanup = op.cleanup_execution(&run).await;
    assert_eq!(cleanup_input(&cleanup)["max_session_seconds"], 3600);
    eprintln!("grant failure path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn a_failed_revoke_fails_the_execution_and_alerts() {
    let op = Operator::deploy("sm-revokefail").await;
    let t0 = Instant::now();
    let run = op.start(3600, 30).await;
    op.approve(&run).await;
    let grant = op.grant(&run).await;
    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let revoke = op.take_work(&run, "revoke", STEP).await;
    op.fail(&revoke, "RevokeFailed", "iam:UpdateAssumeRolePolicy denied")
        .await;

    let d = op.finished(&run, STEP).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("RevokeFailed"));
    let alerts = op
        .alerts(&run, &["requested", "approved", "granted", "revoke_failed"])
        .await;
    assert_eq!(alerts["revoke_failed"]["error"]["Error"], "RevokeFailed");
    assert_eq!(alerts["revoke_failed"]["grant"], grant);
    eprintln!("revoke failure path: {:?} (deploy excluded)", t0.elapsed());
}

/// The queues, the execution role and the operator policy the template deploys.
#[tokio::test]
async fn the_template_deploys_least_privilege_and_dead_letter_queues() {
    let op = Operator::deploy("sm-template").await;
    let out = &op.out;
    let arn_of = |url: &str| {
        let name = url.rsplit('/').next().expect("queue name");
        format!("arn:aws:sqs:us-east-1:{ACCOUNT_ID}:{name}")
    };

    for (queue, dlq, fifo) in [
        (&out.request_queue_url, &out.request_dlq_url, false),
        (&out.work_queue_url, &out.work_dlq_url, true),
        (&out.alert_queue_url, &out.alert_dlq_url, true),
    ] {
        let attrs = op
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .expect("queue attributes");
        let attrs = attrs.attributes().expect("attributes");
        let get = |a: QueueAttributeName| attrs.get(&a).map(String::as_str);
        assert_eq!(
            get(QueueAttributeName::SqsManagedSseEnabled),
            Some("true"),
            "{queue}"
        );
        let redrive: Value =
            serde_json::from_str(get(QueueAttributeName::RedrivePolicy).expect("redrive policy"))
                .expect("redrive JSON");
        assert_eq!(redrive["deadLetterTargetArn"], arn_of(dlq), "{queue}");
        assert_eq!(redrive["maxReceiveCount"].to_string(), "5", "{queue}");
        if fifo {
            assert_eq!(get(QueueAttributeName::FifoQueue), Some("true"), "{queue}");
            assert_eq!(
                get(QueueAttributeName::ContentBasedDeduplication),
                Some("false"),
                "{queue}"
            );
        } else {
            assert_eq!(get(QueueAttributeName::FifoQueue), None, "{queue}");
        }
    }
    let queue_arns = json!([
        arn_of(&out.request_queue_url),
        arn_of(&out.work_queue_url),
        arn_of(&out.alert_queue_url)
    ]);

    // The execution roles: one inline policy each, nothing attached. The flow's sends to
    // the three queues, reads the managed roles, writes session denies on them (never on
    // the installation's own roles) and starts the cleanup; the cleanup's reads the
    // managed roles and deletes session denies from them.
    let managed = json!([format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/*")]);
    let own_roles = json!([
        out.operator_role_arn,
        out.relay_role_arn,
        out.state_machine_role_arn,
        out.cleanup_role_arn
    ]);
    let flow_role = [
        (
            "SendToAwsJitQueues",
            "Allow",
            json!("sqs:SendMessage"),
            queue_arns.clone(),
        ),
        (
            "ReadManagedRoles",
            "Allow",
            json!("iam:GetRole"),
            managed.clone(),
        ),
        (
            "WriteSessionDenyOnManagedRoles",
            "Allow",
            json!("iam:PutRolePolicy"),
            managed.clone(),
        ),
        (
            "NeverEditOwnRoles",
            "Deny",
            json!("iam:PutRolePolicy"),
            own_roles.clone(),
        ),
        (
            "StartSessionCleanup",
            "Allow",
            json!("states:StartExecution"),
            json!(out.cleanup_state_machine_arn),
        ),
    ];
    let cleanup_role = [
        (
            "ReadManagedRoles",
            "Allow",
            json!("iam:GetRole"),
            managed.clone(),
        ),
        (
            "DeleteSessionDenyOnManagedRoles",
            "Allow",
            json!("iam:DeleteRolePolicy"),
            managed.clone(),
        ),
        (
            "NeverEditOwnRoles",
            "Deny",
            json!("iam:DeleteRolePolicy"),
            own_roles.clone(),
        ),
    ];
    for (role_arn, expected) in [
        (&out.state_machine_role_arn, &flow_role[..]),
        (&out.cleanup_role_arn, &cleanup_role[..]),
    ] {
        let role = role_arn.rsplit('/').next().expect("role name");
        let names = inline_policies(&op.iam, role).await;
        assert_eq!(names.len(), 1, "{role}: {names:?}");
        let attached = op
            .iam
            .list_attached_role_policies()
            .role_name(role)
            .send()
            .await
            .expect("list attached role policies");
        assert!(attached.attached_policies().is_empty(), "{role}");
        let doc = op
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(&names[0])
            .send()
            .await
            .expect("get role policy");
        check_statements(&policy_json(doc.policy_document()), expected);
    }

    // The operator's and the relay's policies, as deployed (tests/iam_actions.rs checks
    // them against the code; here: what CloudFormation made of them).
    let executions = format!(
        "arn:aws:states:us-east-1:{ACCOUNT_ID}:execution:{}:*",
        out.state_machine_arn.rsplit(':').next().expect("name")
    );
    let consume = json!([
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility"
    ]);
    let operator = [
        (
            "ConsumeRequestAndWorkQueues",
            "Allow",
            consume.clone(),
            json!([
                arn_of(&out.request_queue_url),
                arn_of(&out.work_queue_url),
                arn_of(&out.request_dlq_url)
            ]),
        ),
        (
            "SendSecurityFindings",
            "Allow",
            json!("sqs:SendMessage"),
            json!(arn_of(&out.alert_queue_url)),
        ),
        (
            "DeadLetterPoisonMessages",
            "Allow",
            json!("sqs:SendMessage"),
            json!([arn_of(&out.request_dlq_url), arn_of(&out.work_dlq_url)]),
        ),
        (
            "DriveTheStateMachine",
            "Allow",
            json!(["states:StartExecution", "states:ListExecutions"]),
            json!(out.state_machine_arn),
        ),
        (
            "ReadExecutions",
            "Allow",
            json!("states:DescribeExecution"),
            json!(executions),
        ),
        (
            "StopForeignExecutions",
            "Allow",
            json!("states:StopExecution"),
            json!(executions),
        ),
        (
            "AnswerTasks",
            "Allow",
            json!([
                "states:SendTaskSuccess",
                "states:SendTaskFailure",
                "states:SendTaskHeartbeat"
            ]),
            json!("*"),
        ),
        (
            "StartSessionCleanup",
            "Allow",
            json!("states:StartExecution"),
            json!(out.cleanup_state_machine_arn),
        ),
        (
            "ReadManagedRoles",
            "Allow",
            json!(["iam:GetRole", "iam:GetRolePolicy"]),
            managed.clone(),
        ),
        (
            "EditTrustPolicyOfManagedRoles",
            "Allow",
            json!(["iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy"]),
            managed.clone(),
        ),
        (
            "NeverEditOwnRoles",
            "Deny",
            json!(["iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy"]),
            own_roles.clone(),
        ),
    ];
    let relay = [
        (
            "ConsumeAlertQueue",
            "Allow",
            consume,
            json!(arn_of(&out.alert_queue_url)),
        ),
        (
            "DeadLetterRefusedAlerts",
            "Allow",
            json!("sqs:SendMessage"),
            json!(arn_of(&out.alert_dlq_url)),
        ),
    ];
    for (policy_arn, expected) in [
        (&out.operator_policy_arn, &operator[..]),
        (&out.relay_policy_arn, &relay[..]),
    ] {
        check_statements(&managed_policy(&op.iam, policy_arn).await, expected);
    }
}

/// `doc` has exactly the statements `expected` (Sid, Effect, Action, Resource), and no
/// condition (RequireManagedRoleTag defaults to false), NotAction or NotResource.
fn check_statements(doc: &Value, expected: &[(&str, &str, Value, Value)]) {
    let by_sid: HashMap<&str, &Value> = doc["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| (s["Sid"].as_str().expect("every statement has a Sid"), s))
        .collect();
    assert_eq!(by_sid.len(), expected.len(), "{doc}");
    for (sid, effect, action, resource) in expected {
        let s = by_sid
            .get(sid)
            .unwrap_or_else(|| panic!("no statement {sid} in {doc}"));
        assert_eq!(s["Effect"], *effect, "{sid}");
        assert_eq!(s["Action"], *action, "{sid}");
        assert_eq!(s["Resource"], *resource, "{sid}");
        assert!(
            s.get("NotAction").is_none()
                && s.get("NotResource").is_none()
                && s.get("Condition").is_none(),
            "{sid}: {s}"
        );
    }
}

/// With `RequireManagedRoleTag=true` the trust-policy edit carries the tag condition.
#[tokio::test]
async fn the_template_can_require_a_tag_on_managed_roles() {
    let moto = &support::stack().aws;
    let out = moto
        .deploy_with_params("sm-tagged", &[], &[("RequireManagedRoleTag", "true")])
        .await;
    let iam = aws_sdk_iam::Client::new(&moto.sdk_config().await);
    let doc = managed_policy(&iam, &out.operator_policy_arn).await;
    let edit = doc["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Sid"] == "EditTrustPolicyOfManagedRoles")
        .expect("EditTrustPolicyOfManagedRoles");
    assert_eq!(
        edit["Condition"],
        json!({"StringEquals": {"iam:ResourceTag/aws-jit-managed": "true"}}),
        "{doc}"
    );
    // So do the state machines' session-deny writes.
    for (role_arn, sid) in [
        (
            &out.state_machine_role_arn,
            "WriteSessionDenyOnManagedRoles",
        ),
        (&out.cleanup_role_arn, "DeleteSessionDenyOnManagedRoles"),
    ] {
        let role = role_arn.rsplit('/').next().expect("role name");
        let names = inline_policies(&iam, role).await;
        let doc = iam
            .get_role_policy()
            .role_name(role)
            .policy_name(&names[0])
            .send()
            .await
            .expect("get role policy");
        let doc = policy_json(doc.policy_document());
        let write = doc["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("{sid} in {doc}"));
        assert_eq!(
            write["Condition"],
            json!({"StringEquals": {"iam:ResourceTag/aws-jit-managed": "true"}}),
            "{role}: {doc}"
        );
    }
}

/// The default version of a managed policy, as JSON.
async fn managed_policy(iam: &aws_sdk_iam::Client, arn: &str) -> Value {
    let policy = iam
        .get_policy()
        .policy_arn(arn)
        .send()
        .await
        .expect("get policy");
    let version = iam
        .get_policy_version()
        .policy_arn(arn)
        .version_id(
            policy
                .policy()
                .and_then(|p| p.default_version_id())
                .expect("default version"),
        )
        .send()
        .await
        .expect("get policy version");
    policy_json(
        version
            .policy_version()
            .and_then(|v| v.document())
            .expect("document"),
    )
}

/// A policy document as IAM returns it: URL-encoded JSON. moto 5.2.5 returns the inline
/// policies of a role created by CloudFormation (`AWS::IAM::Role` `Policies`) as a Python
/// dict repr (`{'Version': '2012-10-17', ...}`) instead; such a document, which has no
/// quotes inside its strings, is read by swapping the quotes.
fn policy_json(document: &str) -> Value {
    let text = percent_decode(document);
    serde_json::from_str(&text)
        .or_else(|e| {
            if text.starts_with("{'") && !text.contains('"') {
                serde_json::from_str(&text.replace('\'', "\""))
            } else {
                Err(e)
            }
        })
        .unwrap_or_else(|e| panic!("policy document is not JSON ({e}): {text}"))
}

/// IAM returns policy documents URL-encoded (RFC 3986); moto may or may not.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && hex.iter().all(u8::is_ascii_hexdigit)
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("-"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("decoded policy is UTF-8")
}

#[tokio::test]
async fn alerts_that_cannot_be_sent_do_not_stop_the_flow() {
    let op = Operator::deploy("sm-noalerts").await;
    let t0 = Instant::now();
    op.sqs
        .delete_queue()
        .queue_url(&op.out.alert_queue_url)
        .send()
        .await
        .expect("delete the alert queue");
    let run = op.start(3600, 30).await;
    let approval = op.approve(&run).await;
    let grant = op.grant(&run).await;
    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let revoke = op.take_work(&run, "revoke", STEP).await;
    op.succeed(&revoke, &json!({"revoked_at": "2030-01-01T10:05:00Z"}))
        .await;
    let output = op.succeeded_with(&run, "Revoked").await;
    assert_eq!(output["approval"], approval);
    assert_eq!(output["grant"], grant);
    // The four alerts were tried, retried (moto reports a missing queue as
    // SQS.SdkClientException, which the alerts retry), failed, and were caught.
    let definition = op.definition(&op.out.state_machine_arn).await;
    let attempts = |state: &str| {
        1 + definition["States"][state]["Retry"][0]["MaxAttempts"]
            .as_u64()
            .unwrap_or_else(|| panic!("{state} has a Retry with MaxAttempts"))
    };
    let expected: u64 = [
        "AlertRequested",
        "AlertApproved",
        "AlertGranted",
        "AlertRevoked",
    ]
    .into_iter()
    .map(attempts)
    .sum();
    let history = op
        .sfn
        .get_execution_history()
        .execution_arn(&run.arn)
        .max_results(1000)
        .send()
        .await
        .expect("execution history");
    let failed_sends = history
        .events()
        .iter()
        .filter(|e| {
            e.r#type() == &HistoryEventType::TaskFailed
                && e.task_failed_event_details()
                    .and_then(|d| d.error())
                    .is_some_and(|err| err.starts_with("SQS."))
        })
        .count() as u64;
    assert_eq!(
        failed_sends, expected,
        "requested, approved, granted, revoked, each with its retries"
    );
    eprintln!("no-alerts path: {:?} (deploy excluded)", t0.elapsed());
}

/// `now + secs` as the contract writes instants: whole seconds, UTC, `Z`.
fn in_seconds(secs: u64) -> String {
    let secs = i64::try_from(secs).expect("a duration in seconds");
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn instant(s: &str) -> jiff::Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an instant: {e}"))
}

/// The contract's statement that denies `run`'s sessions after `expires_at`.
fn s_expire(run: &Run, expires_at: &str) -> Value {
    json!({"Sid": "AwsJitSessionsExpire", "Effect": "Deny", "Action": "*", "Resource": "*",
           "Condition": {"StringLike": {"aws:userid": format!("*:{}", run.name)},
                         "DateGreaterThan": {"aws:CurrentTime": expires_at}}})
}

/// The contract's statement that denies `run`'s sessions from `from` on: never (9999)
/// while the grant runs, always (1970) once tightened; the same length either way.
fn s_revoked(run: &Run, from: &str) -> Value {
    json!({"Sid": "AwsJitSessionsRevoked", "Effect": "Deny", "Action": "*", "Resource": "*",
           "Condition": {"StringLike": {"aws:userid": format!("*:{}", run.name)},
                         "DateGreaterThan": {"aws:CurrentTime": from}}})
}

/// The session deny as the flow writes it before the grant.
fn deny_expire(run: &Run, expires_at: &str) -> Value {
    json!({"Version": "2012-10-17", "Statement": [
        s_expire(run, expires_at), s_revoked(run, "9999-12-31T23:59:59Z")]})
}

/// The session deny tightened (access ended before `expires_at`).
fn deny_revoked(run: &Run, expires_at: &str) -> Value {
    json!({"Version": "2012-10-17", "Statement": [
        s_expire(run, expires_at), s_revoked(run, "1970-01-01T00:00:00Z")]})
}

fn cleanup_input(cleanup: &DescribeExecutionOutput) -> Value {
    serde_json::from_str(cleanup.input().expect("the cleanup's input")).expect("input is JSON")
}

async fn inline_policies(iam: &aws_sdk_iam::Client, role: &str) -> Vec<String> {
    iam.list_role_policies()
        .role_name(role)
        .send()
        .await
        .expect("list role policies")
        .policy_names()
        .to_vec()
}

/// Everything of a role the flow or its cleanup could touch, but the inline policy
/// `except`: trust policy, session limit, description, tags, boundary, attached and
/// other inline policies.
async fn role_state(iam: &aws_sdk_iam::Client, role: &str, except: &str) -> Value {
    let got = iam
        .get_role()
        .role_name(role)
        .send()
        .await
        .expect("get role");
    let r = got.role().expect("role");
    let tags = iam
        .list_role_tags()
        .role_name(role)
        .send()
        .await
        .expect("list role tags");
    let attached = iam
        .list_attached_role_policies()
        .role_name(role)
        .send()
        .await
        .expect("list attached role policies");
    let mut inline = serde_json::Map::new();
    for name in inline_policies(iam, role).await {
        if name == except {
            continue;
        }
        let doc = iam
            .get_role_policy()
            .role_name(role)
            .policy_name(&name)
            .send()
            .await
            .expect("get role policy");
        inline.insert(name, policy_json(doc.policy_document()));
    }
    json!({
        "trust": r.assume_role_policy_document().map(policy_json),
        "max_session_duration": r.max_session_duration(),
        "description": r.description(),
        "boundary": r.permissions_boundary().and_then(|b| b.permissions_boundary_arn()),
        "tags": tags.tags().iter().map(|t| (t.key(), t.value())).collect::<Vec<_>>(),
        "attached": attached.attached_policies().iter().map(|p| p.policy_arn()).collect::<Vec<_>>(),
        "inline": inline,
    })
}

/// Issue 11: with the operator gone (nobody answers the revoke work item), the flow
/// still starts the session cleanup once its revoke times out, and the cleanup alone
/// removes the session deny, no earlier than expires_at + the role's MaxSessionDuration
/// (the larger of the one read at grant and the one read at cleanup) +
/// SessionGraceSeconds, and changes nothing else of the role.
#[tokio::test]
async fn the_session_cleanup_removes_the_deny_with_the_operator_gone() {
    let moto = &support::stack().aws;
    let sdk = moto.sdk_config().await;
    // The smallest work timeout the template allows: the revoke nobody answers.
    let out = moto
        .deploy_with_params(
            "sm-cleanup",
            &[],
            &[
                ("WorkTaskTimeoutSeconds", "30"),
                ("SessionGraceSeconds", "1"),
            ],
        )
        .await;
    let op = Operator {
        sfn: aws_sdk_sfn::Client::new(&sdk),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        iam: aws_sdk_iam::Client::new(&sdk),
        out,
    };
    let t0 = Instant::now();
    let (work_timeout, grace) = (Duration::from_secs(30), 1);
    // Sessions of this role last 2 s at grant and 4 s once raised (below): moto does not
    // check MaxSessionDuration's range.
    let role = op.create_role(Some(2)).await;
    let unrelated = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Unrelated", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]});
    op.iam
        .put_role_policy()
        .role_name(&role)
        .policy_name("unrelated")
        .policy_document(unrelated.to_string())
        .send()
        .await
        .expect("put an unrelated inline policy");
    op.iam
        .tag_role()
        .role_name(&role)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("aws-jit-managed")
                .value("true")
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("tag the role");

    // A hold of 1 s, an access window that outlasts the unanswered revoke, so the
    // cleanup really waits for expires_at.
    let run = op.start_on(&role, 1, 30).await;
    let expires_at = in_seconds(work_timeout.as_secs() + 12);
    op.approve_until(&run, &expires_at).await;
    op.grant(&run).await;
    assert_eq!(
        op.session_deny(&run).await,
        Some(deny_expire(&run, &expires_at))
    );
    // The role's sessions may last longer now: the cleanup must read it again.
    op.iam
        .update_role()
        .role_name(&role)
        .max_session_duration(4)
        .send()
        .await
        .expect("raise MaxSessionDuration");
    let before = role_state(&op.iam, &role, &run.policy_name).await;

    // The operator is gone: the hold times out and nobody answers the revoke.
    op.take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    let revoke = op.take_work(&run, "revoke", STEP).await;
    assert_eq!(revoke.body["reason"], "expired");
    let d = op.finished(&run, work_timeout + STEP).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("RevokeFailed"));
    let alerts = op
        .alerts(&run, &["requested", "approved", "granted", "revoke_failed"])
        .await;
    assert_eq!(
        alerts["revoke_failed"]["error"]["Error"], "States.Timeout",
        "the revoke timed out"
    );

    // The flow started the cleanup before it ended, with what it read at grant.
    let cleanup = op.cleanup_execution(&run).await;
    assert_eq!(
        cleanup_input(&cleanup),
        json!({"role_name": role, "session_policy_name": run.policy_name,
               "session_name": run.name, "expires_at": expires_at, "max_session_seconds": 2})
    );
    // No session can be alive before expires_at + 4 s (the raised maximum) + the grace;
    // moto floors a Wait's remaining time to whole seconds, so allow it one second early.
    let earliest = instant(&expires_at) + jiff::SignedDuration::from_secs(4 + grace - 1);
    let (op_ref, run_ref, expires_ref) = (&op, &run, expires_at.as_str());
    let removed_at = eventually(
        "the cleanup to remove the session deny",
        Duration::from_secs(work_timeout.as_secs() + 12 + 4 + 1) + STEP,
        || async move {
            let deny = op_ref.session_deny(run_ref).await;
            let now = jiff::Timestamp::now();
            match deny {
                Some(d) => {
                    // Still there: unchanged, untightened (nobody ended the hold early).
                    assert_eq!(d, deny_expire(run_ref, expires_ref));
                    Err(format!("the deny is still there at {now}"))
                }
                None => Ok(now),
            }
        },
    )
    .await;
    assert!(
        removed_at >= earliest,
        "the deny was removed at {removed_at}, before {earliest} (expires_at {expires_at} + 4 s + {grace} s)"
    );
    let cleaned = op.cleanup_execution(&run).await;
    let cleaned = eventually("the cleanup to succeed", STEP, || async {
        let d = op
            .sfn
            .describe_execution()
            .execution_arn(cleaned.execution_arn())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        match d.status() {
            ExecutionStatus::Running => Err("RUNNING".to_string()),
            _ => Ok(d),
        }
    })
    .await;
    assert_eq!(cleaned.status(), &ExecutionStatus::Succeeded);
    let output: Value = serde_json::from_str(cleaned.output().expect("output")).expect("JSON");
    assert_eq!(output["outcome"], "Removed", "{output}");
    assert_eq!(
        role_state(&op.iam, &role, &run.policy_name).await,
        before,
        "nothing else of the role changed"
    );
    assert_eq!(inline_policies(&op.iam, &role).await, ["unrelated"]);
    eprintln!(
        "cleanup without operator: {:?} (deploy excluded)",
        t0.elapsed()
    );
}

/// Issue 11, "the state machine never drops a revoke": every Task of both machines
/// retries throttling and transient errors, by name. None retries States.ALL or
/// States.TaskFailed (they match the operator's own answers: Denied, GrantFailed, ...),
/// no waitForTaskToken Task retries States.Timeout (the re-sent work item would be
/// swallowed by FIFO deduplication), and every Task has a Catch. Read from what moto
/// runs (DescribeStateMachine), the template's definitions resolved.
#[tokio::test]
async fn every_task_retries_transient_errors_by_name_and_nothing_else() {
    let op = Operator::deploy("sm-retry").await;
    let mut tasks = 0;
    for arn in [&op.out.state_machine_arn, &op.out.cleanup_state_machine_arn] {
        let definition = op.definition(arn).await;
        // The top-level states, and those inside a Map or Parallel (issue 12's grant
        // engines), whose errors the Map's or Parallel's Catch takes.
        let mut scopes: Vec<(bool, Value)> = vec![(true, definition["States"].clone())];
        while let Some((top, states)) = scopes.pop() {
            for (name, state) in states.as_object().expect("States") {
                if let Some(inner) = state["ItemProcessor"]["States"].as_object() {
                    scopes.push((false, Value::Object(inner.clone())));
                }
                for branch in state["Branches"].as_array().into_iter().flatten() {
                    scopes.push((false, branch["States"].clone()));
                }
                if state["Type"] == "Map" || state["Type"] == "Parallel" {
                    assert!(
                        state["Catch"].as_array().is_some_and(|c| !c.is_empty()),
                        "{name} has no Catch"
                    );
                }
                if state["Type"] != "Task" {
                    continue;
                }
                tasks += 1;
                check_task_retries(name, state, top);
                // An SDK result may carry timestamps, which reach no state's output
                // (moto's DescribeExecution fails on them, and they are noise): each is
                // selected or dropped.
                if state["Resource"]
                    .as_str()
                    .is_some_and(|r| r.contains(":::aws-sdk:"))
                {
                    assert!(
                        state.get("ResultSelector").is_some()
                            || state.get("ResultPath").is_some_and(Value::is_null),
                        "{name}: an SDK result kept whole"
                    );
                }
            }
        }
    }
    // The flow: 13 alerts, 6 tasks for the operator, 5 IAM calls (two of them an
    // extension's: the deny moved, and put back when the extension fails) and the
    // cleanup's start; IdentityCenter: GetUserId, DescribePermissionSet, the cleanup's start and
    // the holder put; IamGroup: 2 ListGroupsForUser, the cleanup's start and the holder
    // put; the engines IcSync (8) and GroupSync (4). The cleanup: 2 IAM calls and the
    // same two engines. A Task added or removed must be looked at here.
    assert_eq!(
        tasks,
        (25 + 4 + 4 + 8 + 4) + (2 + 8 + 4),
        "Task states in both machines"
    );
}

fn check_task_retries(name: &str, state: &Value, top: bool) {
    let resource = state["Resource"].as_str().expect("Resource");
    let retry = state["Retry"]
        .as_array()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| panic!("{name} has no Retry"));
    if top {
        assert!(
            state["Catch"].as_array().is_some_and(|c| !c.is_empty()),
            "{name} has no Catch"
        );
    }
    // The error names of this integration. moto spells the IAM and Identity Store ones
    // iam.X and identitystore.X (the template lists both); tests/support/moto_server.py
    // makes it spell Identity Center's as AWS does (SsoAdmin.X); DynamoDb.X is the same
    // on both.
    let family: &[&str] = if resource.contains(":::sqs:") {
        &["SQS."]
    } else if resource.contains(":::aws-sdk:iam:") {
        &["Iam.", "iam."]
    } else if resource.contains(":::aws-sdk:ssoadmin:") {
        &["SsoAdmin."]
    } else if resource.contains(":::aws-sdk:identitystore:") {
        &["Identitystore.", "identitystore."]
    } else if resource.contains(":::aws-sdk:dynamodb:") {
        &["DynamoDb."]
    } else if resource.contains(":::states:startExecution") {
        &["StepFunctions."]
    } else {
        panic!("{name}: a Task on {resource}: teach this test its error names")
    };
    for retrier in retry {
        let names: Vec<&str> = retrier["ErrorEquals"]
            .as_array()
            .expect("ErrorEquals")
            .iter()
            .map(|n| n.as_str().expect("an error name"))
            .collect();
        for forbidden in ["States.ALL", "States.TaskFailed"] {
            assert!(!names.contains(&forbidden), "{name} retries {forbidden}");
        }
        if resource.ends_with(".waitForTaskToken") {
            for forbidden in ["States.Timeout", "States.HeartbeatTimeout"] {
                assert!(!names.contains(&forbidden), "{name} retries {forbidden}");
            }
        }
        for n in &names {
            assert!(
                family.iter().any(|f| n.starts_with(f)),
                "{name} retries {n}, not an error of {resource}"
            );
            // AWS's Iam.X / Identitystore.X and moto's iam.X / identitystore.X, both.
            if let Some(x) = n.strip_prefix("Iam.") {
                let moto = if x == "IamException" {
                    "iam.iamException".to_string()
                } else {
                    format!("iam.{x}")
                };
                assert!(names.contains(&moto.as_str()), "{name}: {n} without {moto}");
            }
            if let Some(x) = n.strip_prefix("Identitystore.") {
                let moto = format!("identitystore.{x}");
                assert!(names.contains(&moto.as_str()), "{name}: {n} without {moto}");
            }
        }
        if resource.contains(":::aws-sdk:ssoadmin:") {
            for must in ["SsoAdmin.ConflictException", "SsoAdmin.ThrottlingException"] {
                assert!(names.contains(&must), "{name} does not retry {must}");
            }
        }
        assert!(
            retrier["MaxAttempts"].as_u64().is_some_and(|n| n >= 2)
                && retrier["BackoffRate"].as_f64().is_some_and(|b| b > 1.0)
                && retrier["JitterStrategy"] == "FULL",
            "{name}: {retrier}"
        );
    }
}

/// Issue 11: a role whose session deny cannot be read or written (here: it does not
/// exist) gets nothing: the grant fails before the operator is asked, the revoke still
/// runs, and so does the cleanup (assuming IAM's longest session, 12 h).
#[tokio::test]
async fn a_role_without_a_session_deny_is_never_granted() {
    let op = Operator::deploy("sm-norole").await;
    let run = op.start_on("sm-no-such-role", 3600, 30).await;
    op.approve(&run).await;
    // The first work item is the revoke: no grant was asked for.
    let revoke = op.take_work(&run, "revoke", STEP).await;
    assert_eq!(revoke.body["reason"], "grant_failed");
    assert_eq!(
        revoke.body["error"]["Error"], "iam.NoSuchEntityException",
        "{}",
        revoke.body
    );
    op.succeed(&revoke, &json!({"revoked_at": "2030-01-01T10:00:01Z"}))
        .await;
    let d = op.finished(&run, STEP).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("GrantFailed"));
    op.alerts(&run, &["requested", "approved", "grant_failed"])
        .await;
    op.assert_empty(&op.out.work_queue_url, "the work queue")
        .await;
    let cleanup = op.cleanup_execution(&run).await;
    assert_eq!(cleanup_input(&cleanup)["max_session_seconds"], 43200);
}

/// Issue 11: when the deny cannot be tightened at an early end (here the role was
/// deleted under the grant), the revoke still runs, and then the execution fails
/// loudly (`revoke_failed`, `RevokeFailed`): the sessions already issued were not
/// ended, which the operator treats as a revoke to make itself.
#[tokio::test]
async fn a_session_deny_that_cannot_be_tightened_fails_the_execution_after_the_revoke() {
    let op = Operator::deploy("sm-notighten").await;
    let run = op.start(3600, 30).await;
    op.approve(&run).await;
    let grant = op.grant(&run).await;
    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    op.iam
        .delete_role_policy()
        .role_name(&run.role_name)
        .policy_name(&run.policy_name)
        .send()
        .await
        .expect("delete the deny");
    op.iam
        .delete_role()
        .role_name(&run.role_name)
        .send()
        .await
        .expect("delete the role");
    op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let revoke = op.take_work(&run, "revoke", STEP).await;
    assert_eq!(revoke.body["reason"], "revoked");
    op.succeed(&revoke, &json!({"revoked_at": "2030-01-01T10:05:00Z"}))
        .await;
    let d = op.finished(&run, STEP).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("RevokeFailed"));
    let alerts = op
        .alerts(&run, &["requested", "approved", "granted", "revoke_failed"])
        .await;
    assert_eq!(
        alerts["revoke_failed"]["error"]["Error"],
        "iam.NoSuchEntityException"
    );
    assert_eq!(alerts["revoke_failed"]["grant"], grant);
    op.cleanup_execution(&run).await;
}

/// Issue 11: the cleanup is started under the flow's own execution name, so a second
/// start (the operator's, for one) is refused with ExecutionAlreadyExists, which the
/// flow counts as started.
#[tokio::test]
async fn a_session_cleanup_already_started_counts_as_started() {
    let op = Operator::deploy("sm-cleanup-twice").await;
    let run = op.start(3600, 30).await;
    let first = json!({"role_name": run.role_name, "session_policy_name": run.policy_name,
                       "session_name": run.name, "expires_at": in_seconds(3600),
                       "max_session_seconds": 1});
    op.sfn
        .start_execution()
        .state_machine_arn(&op.out.cleanup_state_machine_arn)
        .name(&run.name)
        .input(first.to_string())
        .send()
        .await
        .expect("start the cleanup first");
    op.approve(&run).await;
    op.grant(&run).await;
    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let revoke = op.take_work(&run, "revoke", STEP).await;
    op.succeed(&revoke, &json!({"revoked_at": "2030-01-01T10:05:00Z"}))
        .await;
    op.succeeded_with(&run, "Revoked").await;
    op.alerts(&run, &["requested", "approved", "granted", "revoked"])
        .await;
    assert_eq!(cleanup_input(&op.cleanup_execution(&run).await), first);
}

// ------------------------------------------------------------------------------------
// Issue 12: IdentityCenter and IamGroup, granted and revoked by the state machine
// itself, on exactly what the operator's approval answer names.
// ------------------------------------------------------------------------------------

/// The accounts the IdentityCenter tests may assign in (`ManagedAccountIds`).
const ACCOUNT_A: &str = "111111111111";
const ACCOUNT_B: &str = "222222222222";

/// A stack with both methods installed: moto's Identity Center instance, a permission
/// set and an IAM group of the test's own (moto is shared by every test of the run).
struct Methods {
    op: Operator,
    instance_arn: String,
    identity_store_id: String,
    permission_set_arn: String,
    group_name: String,
}

impl Methods {
    async fn deploy(prefix: &str) -> Methods {
        Self::deploy_with(prefix, &[]).await
    }

    async fn deploy_with(prefix: &str, extra: &[(&str, &str)]) -> Methods {
        let moto = &support::stack().aws;
        let sdk = moto.sdk_config().await;
        let instances = moto
            .json_call("sso", "SWBExternalService.ListInstances", &json!({}))
            .await
            .expect("list instances");
        let instance = &instances["Instances"][0];
        let instance_arn = instance["InstanceArn"]
            .as_str()
            .expect("instance")
            .to_string();
        let identity_store_id = instance["IdentityStoreId"]
            .as_str()
            .expect("identity store")
            .to_string();
        let ps = moto
            .json_call(
                "sso",
                "SWBExternalService.CreatePermissionSet",
                &json!({"InstanceArn": instance_arn, "Name": support::unique("Admin")}),
            )
            .await
            .expect("create permission set");
        let permission_set_arn = ps["PermissionSet"]["PermissionSetArn"]
            .as_str()
            .expect("permission set arn")
            .to_string();
        let iam = aws_sdk_iam::Client::new(&sdk);
        let group_name = support::unique("admins");
        iam.create_group()
            .group_name(&group_name)
            .path("/jit/")
            .send()
            .await
            .expect("create group");
        let group_arn = format!("arn:aws:iam::{ACCOUNT_ID}:group/jit/{group_name}");
        let accounts = format!("{ACCOUNT_A},{ACCOUNT_B}");
        let mut params = vec![
            ("IdentityCenterInstanceArn", instance_arn.as_str()),
            ("IdentityStoreId", identity_store_id.as_str()),
            ("ManagedPermissionSetArns", permission_set_arn.as_str()),
            ("ManagedAccountIds", accounts.as_str()),
            ("ManagedGroupArns", group_arn.as_str()),
        ];
        params.extend_from_slice(extra);
        let out = moto.deploy_with_params(prefix, &[], &params).await;
        Methods {
            op: Operator {
                sfn: aws_sdk_sfn::Client::new(&sdk),
                sqs: aws_sdk_sqs::Client::new(&sdk),
                iam,
                out,
            },
            instance_arn,
            identity_store_id,
            permission_set_arn,
            group_name,
        }
    }

    async fn call(&self, signing_name: &str, target: &str, body: Value) -> Value {
        support::stack()
            .aws
            .json_call(signing_name, target, &body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An Identity Center user `<name>@example.com`; returns its user id.
    async fn ic_user(&self, name: &str) -> String {
        let got = self
            .call(
                "identitystore",
                "AWSIdentityStore.CreateUser",
                json!({"IdentityStoreId": self.identity_store_id, "UserName": name,
                       "DisplayName": name, "Name": {"GivenName": name, "FamilyName": "Test"},
                       "Emails": [{"Value": format!("{name}@example.com"), "Primary": true}]}),
            )
            .await;
        got["UserId"].as_str().expect("user id").to_string()
    }

    /// The principals assigned the test's permission set in `account`.
    async fn assigned(&self, account: &str) -> Vec<String> {
        let got = self
            .call(
                "sso",
                "SWBExternalService.ListAccountAssignments",
                json!({"InstanceArn": self.instance_arn, "AccountId": account,
                       "PermissionSetArn": self.permission_set_arn}),
            )
            .await;
        let mut ids: Vec<String> = got["AccountAssignments"]
            .as_array()
            .expect("assignments")
            .iter()
            .map(|a| a["PrincipalId"].as_str().expect("principal").to_string())
            .collect();
        ids.sort();
        ids
    }

    /// An IAM user of the test's own.
    async fn iam_user(&self, prefix: &str) -> String {
        let name = support::unique(prefix);
        self.op
            .iam
            .create_user()
            .user_name(&name)
            .send()
            .await
            .expect("create user");
        name
    }

    async fn members(&self) -> Vec<String> {
        let got = self
            .op
            .iam
            .get_group()
            .group_name(&self.group_name)
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

    /// The holder items of the table, as (assignment, request, expires_at).
    async fn holders(&self) -> Vec<(String, String, String)> {
        let got = self
            .call(
                "dynamodb",
                "DynamoDB_20120810.Scan",
                json!({"TableName": self.op.out.grant_holders_table, "ConsistentRead": true}),
            )
            .await;
        let s = |item: &Value, k: &str| item[k]["S"].as_str().unwrap_or("?").to_string();
        let mut items: Vec<_> = got["Items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| (s(i, "assignment"), s(i, "request"), s(i, "expires_at")))
            .collect();
        items.sort();
        items
    }

    /// Starts an execution whose input is the contract's plus `forged` (what an AWS
    /// caller with states:StartExecution could write: the flow must ignore it).
    async fn start(&self, method: &str, duration_seconds: u64, forged: Value) -> Run {
        let uid = support::unique("uid");
        let name = format!("ar-{uid}");
        let mut input = json!({
            "requester_arn": REQUESTER_ARN,
            "requester_name": "alice",
            "reason": "fix prod",
            "method": method,
            "duration_seconds": duration_seconds,
            "approval_timeout_seconds": 30,
            "request": {"namespace": "team-a", "name": "fix-prod", "uid": uid},
        });
        if let (Some(input), Some(forged)) = (input.as_object_mut(), forged.as_object()) {
            input.extend(forged.clone());
        }
        let started = self
            .op
            .sfn
            .start_execution()
            .state_machine_arn(&self.op.out.state_machine_arn)
            .name(&name)
            .input(input.to_string())
            .send()
            .await
            .expect("start execution");
        Run {
            arn: started.execution_arn().to_string(),
            name,
            input,
            role_name: String::new(),
            policy_name: String::new(),
        }
    }

    fn ic_grant(&self, user: &str, accounts: &[&str]) -> Value {
        json!({"method": "IdentityCenter", "instance_arn": self.instance_arn,
               "identity_store_id": self.identity_store_id,
               "permission_set_arn": self.permission_set_arn, "account_ids": accounts,
               "user_attribute_path": "emails.value", "user": format!("{user}@example.com")})
    }

    fn group_grant(&self, user_name: &str) -> Value {
        json!({"method": "IamGroup", "group_name": self.group_name, "user_name": user_name})
    }

    /// Answers the run's approval task with `grant` and the access window up to
    /// `expires_at`.
    async fn approve(&self, run: &Run, grant: Value, expires_at: &str) -> Value {
        let request = self
            .op
            .take_task(run, &self.op.out.request_queue_url, "approval", METHOD_STEP)
            .await;
        let approval = json!({
            "approver_name": "carol", "approvers": ["carol"],
            "requester_arn": REQUESTER_ARN, "expires_at": expires_at, "grant": grant,
        });
        self.op.succeed(&request, &approval).await;
        approval
    }

    async fn hold(&self, run: &Run) -> Taken {
        self.op
            .take_task(run, &self.op.out.request_queue_url, "hold", METHOD_STEP)
            .await
    }

    async fn failed_grant(&self, run: &Run) -> DescribeExecutionOutput {
        let d = self.op.finished(run, METHOD_STEP).await;
        assert_eq!(d.status(), &ExecutionStatus::Failed, "{:?}", d.output());
        assert_eq!(d.error(), Some("GrantFailed"), "{:?}", d.cause());
        let alerts = self
            .op
            .alerts(run, &["requested", "approved", "grant_failed"])
            .await;
        assert_eq!(
            alerts["grant_failed"]["error"]["Cause"],
            d.cause().unwrap_or_default(),
            "the execution's cause is the error the alert carries"
        );
        d
    }
}

/// The revoked grant's cleanup, run to its end.
async fn cleanup_finished(op: &Operator, run: &Run, timeout: Duration) -> DescribeExecutionOutput {
    let arn = op.cleanup_execution(run).await.execution_arn().to_string();
    let (sfn, arn) = (&op.sfn, arn.as_str());
    eventually("the session cleanup to finish", timeout, || async move {
        let d = sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        match d.status() {
            ExecutionStatus::Running => Err("RUNNING".to_string()),
            _ => Ok(d),
        }
    })
    .await
}

/// IdentityCenter: the approved user gets exactly the approved permission set in the
/// approved accounts; a forged execution input (another user, another grant) changes
/// nothing; answering the hold removes the assignments and the holders.
#[tokio::test]
async fn identity_center_grants_only_the_approved_user_and_revokes_early() {
    let m = Methods::deploy("sm-ic").await;
    let alice = m.ic_user(&support::unique("alice")).await;
    let mallory_name = support::unique("mallory");
    let mallory = m.ic_user(&mallory_name).await;
    let alice_name = m
        .call(
            "identitystore",
            "AWSIdentityStore.DescribeUser",
            json!({"IdentityStoreId": m.identity_store_id, "UserId": alice}),
        )
        .await["UserName"]
        .as_str()
        .expect("user name")
        .to_string();
    // The input names mallory everywhere a careless flow could look.
    let forged_grant = json!({"method": "IdentityCenter", "instance_arn": m.instance_arn,
        "identity_store_id": m.identity_store_id, "permission_set_arn": m.permission_set_arn,
        "account_ids": [ACCOUNT_A, ACCOUNT_B], "user_attribute_path": "emails.value",
        "user": format!("{mallory_name}@example.com"), "user_id": mallory});
    let run = m
        .start(
            "IdentityCenter",
            3600,
            json!({"requester_name": mallory_name, "grant": forged_grant,
                   "approval": {"grant": forged_grant}, "ic_user": {"user_id": mallory},
                   "sync": {"mode": "revoke", "last": "created"}}),
        )
        .await;
    let expires_at = in_seconds(3600);
    m.approve(&run, m.ic_grant(&alice_name, &[ACCOUNT_A]), &expires_at)
        .await;

    let hold = m.hold(&run).await;
    let grant = &hold.body["grant"];
    assert_eq!(grant["method"], "IdentityCenter");
    assert_eq!(grant["user_id"], alice.as_str());
    assert_eq!(grant["account_ids"], json!([ACCOUNT_A]));
    assert_eq!(grant["permission_set_arn"], m.permission_set_arn.as_str());
    assert_eq!(grant["expires_at"], expires_at.as_str());
    assert!(
        grant["granted_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && instant(t) <= jiff::Timestamp::now()),
        "{grant}"
    );
    assert_eq!(
        m.assigned(ACCOUNT_A).await,
        [alice.as_str()],
        "only alice, only A"
    );
    assert!(m.assigned(ACCOUNT_B).await.is_empty());
    let key = format!("ic|{}|{ACCOUNT_A}|{alice}", m.permission_set_arn);
    assert_eq!(
        m.holders().await,
        [(key, run.name.clone(), expires_at.clone())]
    );
    // The cleanup that enforces expiry was started before the grant, with the grant.
    let cleanup = m.op.cleanup_execution(&run).await;
    assert_eq!(cleanup.status(), &ExecutionStatus::Running);
    assert_eq!(cleanup_input(&cleanup), json!({"grant": grant}));

    m.op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let output = m.op.succeeded_with(&run, "Revoked").await;
    assert_eq!(output["grant"], *grant);
    assert_eq!(
        output["revoke"]["assignments"],
        json!([{"account_id": ACCOUNT_A, "assignment": "absent"}])
    );
    assert!(m.assigned(ACCOUNT_A).await.is_empty(), "revoked");
    assert!(m.holders().await.is_empty(), "its holder is gone");
    let alerts =
        m.op.alerts(&run, &["requested", "approved", "granted", "revoked"])
            .await;
    assert_eq!(alerts["granted"]["grant"], *grant);
    assert_eq!(alerts["revoked"]["grant"], *grant);
    // No trust-policy work was asked of the operator.
    m.op.assert_empty(&m.op.out.work_queue_url, "the work queue")
        .await;
}

/// IdentityCenter and IamGroup: the flow's own revoke at expiry (the hold times out),
/// in every account.
#[tokio::test]
async fn both_methods_expire_when_the_hold_times_out() {
    let m = Methods::deploy("sm-methods-expire").await;
    let alice_name = support::unique("alice");
    let alice = m.ic_user(&alice_name).await;
    let bob = m.iam_user("bob").await;
    // One after the other: the request queue is shared, and each test answers its
    // run's messages in order.
    // The hold times out after 12 s (room to read the grant while it holds, under the
    // whole suite's load); the access window is longer, so the grant's own check that
    // a live holder remains is not what ends it.
    let ic = m.start("IdentityCenter", 12, json!({})).await;
    m.approve(
        &ic,
        m.ic_grant(&alice_name, &[ACCOUNT_A, ACCOUNT_B]),
        &in_seconds(40),
    )
    .await;
    m.hold(&ic).await;
    assert_eq!(m.assigned(ACCOUNT_A).await, [alice.as_str()]);
    assert_eq!(m.assigned(ACCOUNT_B).await, [alice.as_str()]);
    m.op.succeeded_with(&ic, "Expired").await;
    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    assert!(m.assigned(ACCOUNT_B).await.is_empty());
    m.op.alerts(&ic, &["requested", "approved", "granted", "expired"])
        .await;

    let group = m.start("IamGroup", 12, json!({})).await;
    m.approve(&group, m.group_grant(&bob), &in_seconds(40))
        .await;
    m.hold(&group).await;
    assert_eq!(m.members().await, [bob.as_str()]);
    let output = m.op.succeeded_with(&group, "Expired").await;
    assert_eq!(
        output["revoke"]["assignments"],
        json!([{"assignment": "absent"}])
    );
    assert!(m.members().await.is_empty());
    assert!(m.holders().await.is_empty());
    m.op.alerts(&group, &["requested", "approved", "granted", "expired"])
        .await;
    // The cleanups ran at expires_at too, found nothing left, and changed nothing.
    for run in [&ic, &group] {
        let cleaned = cleanup_finished(&m.op, run, Duration::from_secs(40) + STEP).await;
        assert_eq!(
            cleaned.status(),
            &ExecutionStatus::Succeeded,
            "{:?}",
            cleaned.cause()
        );
    }
    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    assert!(m.members().await.is_empty());
}

/// IamGroup: only the approved user joins the group; the forged input's user does not;
/// answering the hold removes the membership.
#[tokio::test]
async fn iam_group_adds_only_the_approved_user_and_removes_it_early() {
    let m = Methods::deploy("sm-group").await;
    let alice = m.iam_user("alice").await;
    let mallory = m.iam_user("mallory").await;
    let forged = m.group_grant(&mallory);
    let run = m
        .start(
            "IamGroup",
            3600,
            json!({"requester_name": mallory, "grant": forged, "approval": {"grant": forged}}),
        )
        .await;
    let expires_at = in_seconds(3600);
    m.approve(&run, m.group_grant(&alice), &expires_at).await;
    let hold = m.hold(&run).await;
    assert_eq!(
        hold.body["grant"].as_object().map(|g| {
            let mut keys: Vec<_> = g.keys().cloned().collect();
            keys.sort();
            keys
        }),
        Some(
            [
                "expires_at",
                "granted_at",
                "group_name",
                "method",
                "user_name"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(hold.body["grant"]["user_name"], alice.as_str());
    assert_eq!(hold.body["grant"]["group_name"], m.group_name.as_str());
    assert_eq!(m.members().await, [alice.as_str()], "only alice");
    assert_eq!(
        m.holders().await,
        [(
            format!("group|{}|{alice}", m.group_name),
            run.name.clone(),
            expires_at.clone()
        )]
    );
    m.op.succeed(&hold, &json!({"ended_by": "bob", "reason": "revoked"}))
        .await;
    let output = m.op.succeeded_with(&run, "Revoked").await;
    assert_eq!(
        output["revoke"]["assignments"],
        json!([{"assignment": "absent"}])
    );
    assert!(m.members().await.is_empty());
    assert!(m.holders().await.is_empty());
    m.op.alerts(&run, &["requested", "approved", "granted", "revoked"])
        .await;
}

/// Two overlapping grants of one assignment (one user, permission set and account) or
/// membership share it: the first revoke keeps it, the last removes it (AWS TEAM's bug).
#[tokio::test]
async fn overlapping_grants_share_one_assignment_until_the_last_revoke() {
    let m = Methods::deploy("sm-overlap").await;
    let alice_name = support::unique("alice");
    let alice = m.ic_user(&alice_name).await;
    let bob = m.iam_user("bob").await;
    let expires_at = in_seconds(3600);
    let (mut runs, mut holds) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let ic = m.start("IdentityCenter", 3600, json!({})).await;
        m.approve(&ic, m.ic_grant(&alice_name, &[ACCOUNT_A]), &expires_at)
            .await;
        let ic_hold = m.hold(&ic).await;
        let group = m.start("IamGroup", 3600, json!({})).await;
        m.approve(&group, m.group_grant(&bob), &expires_at).await;
        holds.push((ic_hold, m.hold(&group).await));
        runs.push((ic, group));
    }
    assert_eq!(
        m.assigned(ACCOUNT_A).await,
        [alice.as_str()],
        "one assignment"
    );
    assert_eq!(m.members().await, [bob.as_str()]);
    assert_eq!(m.holders().await.len(), 4, "{:?}", m.holders().await);

    // The first ends: the other still holds both.
    let (first_ic, first_group) = &runs[0];
    m.op.succeed(&holds[0].0, &json!({"reason": "revoked"}))
        .await;
    m.op.succeed(&holds[0].1, &json!({"reason": "revoked"}))
        .await;
    let out = m.op.succeeded_with(first_ic, "Revoked").await;
    assert_eq!(
        out["revoke"]["assignments"],
        json!([{"account_id": ACCOUNT_A, "assignment": "present"}]),
        "kept for the other grant"
    );
    // Kept without a gap: the first revoke never deleted it (and made it again).
    for run in [first_ic, first_group] {
        let history =
            m.op.sfn
                .get_execution_history()
                .execution_arn(&run.arn)
                .max_results(1000)
                .send()
                .await
                .expect("history");
        let calls: Vec<&str> = history
            .events()
            .iter()
            .filter(|e| e.r#type() == &HistoryEventType::TaskStateEntered)
            .filter_map(|e| e.state_entered_event_details().map(|s| s.name()))
            .filter(|n| ["IcDelete", "IcCreate", "GroupRemove", "GroupAdd"].contains(n))
            .collect();
        assert!(
            calls == ["IcCreate"] || calls == ["GroupAdd"],
            "{}: the grant's one create, no revoke call: {calls:?}",
            run.name
        );
    }
    let out = m.op.succeeded_with(first_group, "Revoked").await;
    assert_eq!(
        out["revoke"]["assignments"],
        json!([{"assignment": "present"}])
    );
    assert_eq!(
        m.assigned(ACCOUNT_A).await,
        [alice.as_str()],
        "still granted"
    );
    assert_eq!(m.members().await, [bob.as_str()], "still a member");
    let holders = m.holders().await;
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(
        holders
            .iter()
            .all(|(_, request, _)| *request == runs[1].0.name || *request == runs[1].1.name)
    );

    // The last ends: gone.
    m.op.succeed(&holds[1].0, &json!({"reason": "revoked"}))
        .await;
    m.op.succeed(&holds[1].1, &json!({"reason": "revoked"}))
        .await;
    m.op.succeeded_with(&runs[1].0, "Revoked").await;
    m.op.succeeded_with(&runs[1].1, "Revoked").await;
    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    assert!(m.members().await.is_empty());
    assert!(m.holders().await.is_empty());
}

/// A grant that cannot be made fails `GrantFailed` with AWS's reason as the cause and
/// leaves nothing: unknown Identity Center user, unknown permission set, unknown IAM
/// user, a user at IAM's 10-group limit, an approval naming another instance.
#[tokio::test]
async fn grants_that_cannot_be_made_fail_and_leave_nothing() {
    let m = Methods::deploy("sm-methods-fail").await;
    let alice_name = support::unique("alice");
    m.ic_user(&alice_name).await;
    let expires_at = in_seconds(3600);

    let unknown_user = m.start("IdentityCenter", 3600, json!({})).await;
    m.approve(
        &unknown_user,
        m.ic_grant("nobody", &[ACCOUNT_A]),
        &expires_at,
    )
    .await;
    let d = m.failed_grant(&unknown_user).await;
    assert!(
        d.cause().is_some_and(|c| c.contains("USER not found")),
        "{:?}",
        d.cause()
    );

    let unknown_ps = m.start("IdentityCenter", 3600, json!({})).await;
    let mut grant = m.ic_grant(&alice_name, &[ACCOUNT_A]);
    let missing = format!(
        "{}/ps-0000000000000000",
        m.permission_set_arn.rsplit_once('/').expect("ps arn").0
    );
    grant["permission_set_arn"] = json!(missing);
    m.approve(&unknown_ps, grant, &expires_at).await;
    let d = m.failed_grant(&unknown_ps).await;
    assert!(
        d.cause().is_some_and(|c| c.contains("SsoAdmin")),
        "{:?}",
        d.cause()
    );

    let other_instance = m.start("IdentityCenter", 3600, json!({})).await;
    let mut grant = m.ic_grant(&alice_name, &[ACCOUNT_A]);
    grant["instance_arn"] = json!("arn:aws:sso:::instance/ssoins-0000000000000000");
    m.approve(&other_instance, grant, &expires_at).await;
    let d = m.failed_grant(&other_instance).await;
    assert!(
        d.cause()
            .is_some_and(|c| c.contains("IdentityCenterInstanceArn")),
        "{:?}",
        d.cause()
    );

    // No account at all: refused, not "granted" with nothing made.
    let no_account = m.start("IdentityCenter", 3600, json!({})).await;
    m.approve(&no_account, m.ic_grant(&alice_name, &[]), &expires_at)
        .await;
    let d = m.failed_grant(&no_account).await;
    assert!(
        d.cause().is_some_and(|c| c.contains("lacks a field")),
        "{:?}",
        d.cause()
    );

    let unknown_iam_user = m.start("IamGroup", 3600, json!({})).await;
    m.approve(
        &unknown_iam_user,
        m.group_grant("nobody-at-all"),
        &expires_at,
    )
    .await;
    let d = m.failed_grant(&unknown_iam_user).await;
    assert!(
        d.cause().is_some_and(|c| c.contains("nobody-at-all")),
        "{:?}",
        d.cause()
    );

    // Ten groups already, not this one: refused before anything is made.
    let busy = m.iam_user("busy").await;
    for _ in 0..10 {
        let g = support::unique("other");
        m.op.iam
            .create_group()
            .group_name(&g)
            .send()
            .await
            .expect("group");
        m.op.iam
            .add_user_to_group()
            .group_name(&g)
            .user_name(&busy)
            .send()
            .await
            .expect("add");
    }
    let limited = m.start("IamGroup", 3600, json!({})).await;
    m.approve(&limited, m.group_grant(&busy), &expires_at).await;
    let d = m.failed_grant(&limited).await;
    assert!(
        d.cause()
            .is_some_and(|c| c.contains("10 IAM groups") && c.contains(&busy)),
        "{:?}",
        d.cause()
    );

    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    assert!(m.members().await.is_empty());
    assert!(m.holders().await.is_empty());
    m.op.assert_empty(&m.op.out.work_queue_url, "the work queue")
        .await;
}

/// The execution is stopped by an AWS caller while access is live (its own revoke never
/// runs): the session cleanup, started before the grant, still removes the assignment
/// and the membership at expires_at, not before.
#[tokio::test]
async fn the_cleanup_revokes_at_expiry_when_the_execution_was_stopped() {
    let m = Methods::deploy("sm-methods-stopped").await;
    let alice_name = support::unique("alice");
    let alice = m.ic_user(&alice_name).await;
    let bob = m.iam_user("bob").await;
    // Room for both grants to be made before it under the whole suite's load.
    let expires_at = in_seconds(40);
    let ic = m.start("IdentityCenter", 3600, json!({})).await;
    m.approve(&ic, m.ic_grant(&alice_name, &[ACCOUNT_A]), &expires_at)
        .await;
    let ic_hold = m.hold(&ic).await;
    let group = m.start("IamGroup", 3600, json!({})).await;
    m.approve(&group, m.group_grant(&bob), &expires_at).await;
    let holds = [ic_hold, m.hold(&group).await];
    for run in [&ic, &group] {
        m.op.sfn
            .stop_execution()
            .execution_arn(&run.arn)
            .send()
            .await
            .expect("stop");
    }
    // moto 5.2.5 keeps an execution that waits for a task token RUNNING after
    // StopExecution; the answer then ends it ABORTED, its revoke not run (as on AWS).
    for hold in &holds {
        m.op.succeed(hold, &json!({"reason": "revoked"})).await;
    }
    for run in [&ic, &group] {
        let d = m.op.finished(run, STEP).await;
        assert_eq!(d.status(), &ExecutionStatus::Aborted);
    }
    assert_eq!(
        m.assigned(ACCOUNT_A).await,
        [alice.as_str()],
        "not revoked yet"
    );
    assert_eq!(m.members().await, [bob.as_str()]);

    let (mm, e) = (&m, expires_at.as_str());
    let removed_at = eventually(
        "the cleanups to remove the assignment and the membership",
        Duration::from_secs(10) + STEP,
        || async move {
            let now = jiff::Timestamp::now();
            if mm.assigned(ACCOUNT_A).await.is_empty() && mm.members().await.is_empty() {
                Ok(now)
            } else {
                Err(format!("still granted at {now} (expires_at {e})"))
            }
        },
    )
    .await;
    // moto floors a Wait's remaining time to whole seconds.
    assert!(
        removed_at >= instant(&expires_at) - jiff::SignedDuration::from_secs(1),
        "removed at {removed_at}, before expires_at {expires_at}"
    );
    for run in [&ic, &group] {
        let d = cleanup_finished(&m.op, run, STEP).await;
        assert_eq!(d.status(), &ExecutionStatus::Succeeded, "{:?}", d.cause());
    }
    assert!(m.holders().await.is_empty());
}

/// The session cleanup revokes only what its input's grant names, for this
/// installation's instance, and only what no live grant holds: a forged start (by an
/// AWS caller with states:StartExecution on it) cannot take away someone's live
/// assignment, and input that is not a well-formed grant deletes nothing.
#[tokio::test]
async fn a_forged_cleanup_cannot_take_a_live_grant_away() {
    let m = Methods::deploy("sm-forged-cleanup").await;
    let alice_name = support::unique("alice");
    let alice = m.ic_user(&alice_name).await;
    let run = m.start("IdentityCenter", 3600, json!({})).await;
    m.approve(
        &run,
        m.ic_grant(&alice_name, &[ACCOUNT_A]),
        &in_seconds(3600),
    )
    .await;
    let hold = m.hold(&run).await;
    let grant = hold.body["grant"].clone();
    let start = |name: String, input: Value| {
        let op = &m.op;
        async move {
            let started = op
                .sfn
                .start_execution()
                .state_machine_arn(&op.out.cleanup_state_machine_arn)
                .name(&name)
                .input(input.to_string())
                .send()
                .await
                .expect("start a cleanup");
            let arn = started.execution_arn().to_string();
            let sfn = &op.sfn;
            eventually("the forged cleanup to end", STEP, || async {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                match d.status() {
                    ExecutionStatus::Running => Err("RUNNING".to_string()),
                    _ => Ok(d),
                }
            })
            .await
        }
    };
    // Its exact grant, already expired, under another name: alice's live holder stays.
    let mut expired = grant.clone();
    expired["expires_at"] = json!("2020-01-01T00:00:00Z");
    let d = start(support::unique("ar-forged"), json!({"grant": expired})).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded, "{:?}", d.cause());
    assert_eq!(
        m.assigned(ACCOUNT_A).await,
        [alice.as_str()],
        "kept for the live grant"
    );
    assert_eq!(m.holders().await.len(), 1);
    // Another instance, or a malformed grant: refused before anything is deleted.
    for bad in [
        json!({"grant": {"method": "IdentityCenter", "instance_arn": "arn:aws:sso:::instance/ssoins-0000000000000000",
                         "permission_set_arn": grant["permission_set_arn"], "account_ids": [ACCOUNT_A],
                         "user_id": alice, "expires_at": "2020-01-01T00:00:00Z"}}),
        json!({"grant": {"method": "IdentityCenter"}}),
        json!({"grant": {"method": "Something"}}),
    ] {
        let d = start(support::unique("ar-forged"), bad.clone()).await;
        assert_eq!(d.status(), &ExecutionStatus::Failed, "{bad}");
        assert_eq!(d.error(), Some("NotAGrant"), "{bad}");
    }
    assert_eq!(m.assigned(ACCOUNT_A).await, [alice.as_str()]);
    m.op.succeed(&hold, &json!({"reason": "revoked"})).await;
    m.op.succeeded_with(&run, "Revoked").await;
}

/// "One implementation": the revoke the flow runs and the one its session cleanup runs
/// at expiry are the same states (a CloudFormation template cannot share a fragment
/// between two definitions, so this test keeps the two copies equal).
#[tokio::test]
async fn the_flow_and_its_cleanup_revoke_with_the_same_states() {
    let m = Methods::deploy("sm-same-revoke").await;
    let flow = m.op.definition(&m.op.out.state_machine_arn).await;
    let cleanup = m.op.definition(&m.op.out.cleanup_state_machine_arn).await;
    for engine in ["IcSync", "GroupSync"] {
        let strip = |d: &Value| {
            let mut s = d["States"][engine].clone();
            let o = s.as_object_mut().unwrap_or_else(|| panic!("{engine}"));
            o.remove("Catch");
            o.remove("Next");
            s
        };
        assert_eq!(strip(&flow), strip(&cleanup), "{engine}");
    }
}

/// The IdentityCenter polling loop (moto's assignments are SUCCEEDED at once, so its
/// IN_PROGRESS and FAILED branches never run on the real flow there): the shipped poll
/// states, taken from the deployed definition, run as a machine of their own in which
/// only the status calls are stand-ins (a Pass that plays a scripted status per poll)
/// and the 3 s Wait is 0 s. Checked: IN_PROGRESS is polled until SUCCEEDED, FAILED
/// fails with AWS's reason, and a status stuck IN_PROGRESS fails after 40 polls.
#[tokio::test]
async fn the_assignment_polling_loop_waits_out_in_progress_and_fails_on_failed() {
    let m = Methods::deploy("sm-poll").await;
    let flow = m.op.definition(&m.op.out.state_machine_arn).await;
    let engine = &flow["States"]["IcSync"]["ItemProcessor"]["States"];
    for (kind, field) in [
        ("Creation", "AccountAssignmentCreationStatus"),
        ("Deletion", "AccountAssignmentDeletionStatus"),
    ] {
        let name = |s: &str| format!("Ic{kind}{s}");
        let mut states = serde_json::Map::new();
        for s in ["Polls", "Settled", "Wait", "Polled", "TimedOut"] {
            states.insert(name(s), engine[name(s)].clone());
        }
        states.insert("IcFailed".into(), engine["IcFailed"].clone());
        let lower = kind.to_lowercase();
        // The shipped Status call reads `$.<kind>.request_id` and writes
        // `$.<kind>` = {request_id, status}; so does its stand-in.
        assert_eq!(
            engine[name("Status")]["ResultSelector"],
            json!({"request_id.$": format!("$.{field}.RequestId"), "status.$": format!("$.{field}.Status")})
        );
        states.insert(
            name("Status"),
            json!({"Type": "Pass", "Parameters": {"request_id.$": format!("$.{lower}.request_id"),
                   "status.$": "States.ArrayGetItem($.script, $.polls.n)"},
                   "ResultPath": format!("$.{lower}"), "Next": engine[name("Status")]["Next"]}),
        );
        assert_eq!(
            engine[name("Failure")]["ResultSelector"]["Cause.$"],
            format!("$.{field}.FailureReason")
        );
        states.insert(
            name("Failure"),
            json!({"Type": "Pass", "Parameters": {"Error": engine[name("Failure")]["ResultSelector"]["Error"],
                   "Cause": "stand-in FailureReason"}, "ResultPath": "$.failure", "Next": "IcFailed"}),
        );
        let ok = engine[name("Settled")]["Choices"][0]["Next"]
            .as_str()
            .expect("next")
            .to_string();
        states.insert(ok.clone(), json!({"Type": "Succeed"}));
        let mut wait = states[&name("Wait")].clone();
        assert_eq!(wait["Seconds"], 3);
        wait["Seconds"] = json!(0);
        states.insert(name("Wait"), wait);
        let definition = json!({"StartAt": name("Polls"), "States": states});
        let created =
            m.op.sfn
                .create_state_machine()
                .name(support::unique("poll"))
                .definition(definition.to_string())
                .role_arn(&m.op.out.state_machine_role_arn)
                .send()
                .await
                .expect("create the poll machine");
        let run = |statuses: Vec<&str>| {
            let sfn = &m.op.sfn;
            let arn = created.state_machine_arn().to_string();
            let first = statuses[0].to_string();
            let input = json!({lower.clone(): {"request_id": "r-1", "status": first},
                               "script": statuses[1..].to_vec(), "grant": {"instance_arn": "i"}});
            async move {
                let started = sfn
                    .start_execution()
                    .state_machine_arn(arn)
                    .name(support::unique("poll"))
                    .input(input.to_string())
                    .send()
                    .await
                    .expect("start");
                let ex = started.execution_arn().to_string();
                let d = eventually("the poll machine to end", STEP * 2, || async {
                    let d = sfn
                        .describe_execution()
                        .execution_arn(&ex)
                        .send()
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    match d.status() {
                        ExecutionStatus::Running => Err("RUNNING".to_string()),
                        _ => Ok(d),
                    }
                })
                .await;
                let history = sfn
                    .get_execution_history()
                    .execution_arn(&ex)
                    .max_results(1000)
                    .send()
                    .await
                    .expect("history");
                let polls = history
                    .events()
                    .iter()
                    .filter(|e| {
                        e.r#type() == &HistoryEventType::PassStateEntered
                            && e.state_entered_event_details()
                                .is_some_and(|s| s.name() == format!("Ic{kind}Status"))
                    })
                    .count();
                (d, polls)
            }
        };
        let (d, polls) = run(vec![
            "IN_PROGRESS",
            "IN_PROGRESS",
            "IN_PROGRESS",
            "SUCCEEDED",
        ])
        .await;
        assert_eq!(
            d.status(),
            &ExecutionStatus::Succeeded,
            "{kind}: {:?}",
            d.cause()
        );
        assert_eq!(polls, 3, "{kind}: polled until SUCCEEDED");
        let (d, _) = run(vec!["SUCCEEDED"]).await;
        assert_eq!(
            d.status(),
            &ExecutionStatus::Succeeded,
            "{kind}: settled at once"
        );
        let (d, polls) = run(vec!["IN_PROGRESS", "IN_PROGRESS", "FAILED"]).await;
        assert_eq!(d.status(), &ExecutionStatus::Failed, "{kind}");
        assert_eq!(
            d.error(),
            Some(format!("IdentityCenter.Assignment{kind}Failed").as_str())
        );
        assert_eq!(d.cause(), Some("stand-in FailureReason"));
        assert_eq!(polls, 2, "{kind}");
        let (d, polls) = run(vec!["IN_PROGRESS"; 42]).await;
        assert_eq!(d.status(), &ExecutionStatus::Failed, "{kind}");
        assert_eq!(
            d.error(),
            Some(format!("IdentityCenter.Assignment{kind}TimedOut").as_str())
        );
        assert_eq!(polls, 40, "{kind}: at most 40 polls");
    }
}

/// The IdentityCenter engine's convergence, on the real assignment calls (moto), with
/// only the holder count a stand-in: a race between a revoke and a new grant of the same
/// assignment cannot be timed on moto, so the shipped engine (taken from the deployed
/// definition) runs as a machine of its own whose `IcQuery` plays a scripted count per
/// round. Checked: a revoke that finds a live holder keeps the assignment without a
/// call; one that finds none deletes it, and when a holder has appeared by the time it
/// looks again, makes it again (never a live grant without its assignment); a grant
/// whose holder is no longer live fails and leaves nothing; holders that come and go
/// forever end NotConverged after 4 rounds.
#[tokio::test]
async fn the_assignment_engine_restores_an_assignment_a_racing_grant_holds() {
    let m = Methods::deploy("sm-engine").await;
    let alice = m.ic_user(&support::unique("alice")).await;
    let flow = m.op.definition(&m.op.out.state_machine_arn).await;
    let mut states = flow["States"]["IcSync"]["ItemProcessor"]["States"].clone();
    assert_eq!(
        states["IcQuery"]["Resource"],
        "arn:aws:states:::aws-sdk:dynamodb:query"
    );
    states["IcQuery"] = json!({"Type": "Pass",
        "Parameters": {"live.$": "States.ArrayGetItem($.script, $.rounds.n)"},
        "ResultPath": "$.holders", "Next": states["IcQuery"]["Next"]});
    // IcKey shapes the item; the stand-in's script rides along.
    states["IcKey"]["Parameters"]["script.$"] = json!("$.script");
    let definition = json!({"StartAt": "IcKey", "States": states});
    let machine =
        m.op.sfn
            .create_state_machine()
            .name(support::unique("engine"))
            .definition(definition.to_string())
            .role_arn(&m.op.out.state_machine_role_arn)
            .send()
            .await
            .expect("create the engine machine")
            .state_machine_arn()
            .to_string();
    let grant = json!({"method": "IdentityCenter", "instance_arn": m.instance_arn,
        "permission_set_arn": m.permission_set_arn, "account_ids": [ACCOUNT_A],
        "user_id": alice, "expires_at": in_seconds(3600)});
    let run = |mode: &str, last: &str, script: Vec<u32>| {
        let input = json!({"account_id": ACCOUNT_A, "grant": grant, "mode": mode,
                           "last": last, "script": script});
        let (sfn, machine) = (&m.op.sfn, machine.as_str());
        async move {
            let ex = sfn
                .start_execution()
                .state_machine_arn(machine)
                .name(support::unique("engine"))
                .input(input.to_string())
                .send()
                .await
                .expect("start")
                .execution_arn()
                .to_string();
            let d = eventually("the engine to end", STEP, || async {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&ex)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                match d.status() {
                    ExecutionStatus::Running => Err("RUNNING".to_string()),
                    _ => Ok(d),
                }
            })
            .await;
            let history = sfn
                .get_execution_history()
                .execution_arn(&ex)
                .max_results(1000)
                .send()
                .await
                .expect("history");
            let calls: Vec<String> = history
                .events()
                .iter()
                .filter(|e| e.r#type() == &HistoryEventType::TaskStateEntered)
                .filter_map(|e| {
                    e.state_entered_event_details()
                        .map(|s| s.name().to_string())
                })
                .filter(|n| n == "IcCreate" || n == "IcDelete")
                .collect();
            let output: Value = d
                .output()
                .map(|o| serde_json::from_str(o).expect("JSON"))
                .unwrap_or(Value::Null);
            (d, calls, output)
        }
    };
    // Granted (a live holder, created).
    let (d, calls, out) = run("grant", "none", vec![1, 1]).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded, "{:?}", d.cause());
    assert_eq!(calls, ["IcCreate"]);
    assert_eq!(
        out,
        json!({"account_id": ACCOUNT_A, "assignment": "present"})
    );
    assert_eq!(m.assigned(ACCOUNT_A).await, [alice.as_str()]);
    // A revoke with another live holder: kept, no call.
    let (d, calls, out) = run("revoke", "created", vec![1]).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded);
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(out["assignment"], "present");
    assert_eq!(m.assigned(ACCOUNT_A).await, [alice.as_str()]);
    // A revoke that finds no holder, deletes, and then sees one that appeared: made again.
    let (d, calls, out) = run("revoke", "created", vec![0, 1, 1]).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded, "{:?}", d.cause());
    assert_eq!(calls, ["IcDelete", "IcCreate"]);
    assert_eq!(out["assignment"], "present");
    assert_eq!(m.assigned(ACCOUNT_A).await, [alice.as_str()], "restored");
    // A plain last revoke: removed.
    let (d, calls, out) = run("revoke", "created", vec![0, 0]).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded);
    assert_eq!(calls, ["IcDelete"]);
    assert_eq!(out["assignment"], "absent");
    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    // A grant whose own holder is no longer live (expired already): nothing stays.
    let (d, calls, _) = run("grant", "none", vec![0, 0]).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("GrantNotHeld"));
    assert_eq!(calls, ["IcDelete"]);
    assert!(m.assigned(ACCOUNT_A).await.is_empty());
    // Holders that come and go forever: bounded.
    let (d, calls, _) = run("revoke", "created", vec![0, 1, 0, 1, 0, 1]).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("NotConverged"));
    assert_eq!(calls.len(), 4, "{calls:?}");
}

/// The session cleanup's revoke enforces expiry, so a failure of it (beyond its Tasks'
/// own retries) is tried again every 5 minutes, 12 times in all, before the cleanup
/// fails. The shipped retry states, from the deployed cleanup definition, run as a
/// machine of their own in which only the engine is a stand-in (it fails or succeeds
/// per a script) and the 5-minute Wait is 0 s.
#[tokio::test]
async fn the_grant_cleanup_tries_a_failed_revoke_again() {
    let m = Methods::deploy("sm-cleanup-retry").await;
    let cleanup = m.op.definition(&m.op.out.cleanup_state_machine_arn).await;
    let real = &cleanup["States"];
    let mut states = serde_json::Map::new();
    for s in [
        "IcCleanupAttempts",
        "IcCleanupSync",
        "GrantCleanupRetry",
        "GrantCleanupNextAttempt",
        "GrantCleanupBackoff",
        "GrantCleanupAgain",
        "GrantCleaned",
        "GrantCleanupFailed",
    ] {
        states.insert(s.into(), real[s].clone());
    }
    assert_eq!(states["GrantCleanupBackoff"]["Seconds"], 300);
    states["GrantCleanupBackoff"]["Seconds"] = json!(0);
    states.insert(
        "GroupCleanupSync".into(),
        json!({"Type": "Fail", "Error": "NotHere"}),
    );
    assert_eq!(real["IcSync"]["Type"], "Map");
    states.insert(
        "IcSync".into(),
        json!({"Type": "Parallel", "Branches": [{"StartAt": "Pick", "States": {
                "Pick": {"Type": "Pass", "Parameters": {"r.$": "States.ArrayGetItem($.script, $.attempts.n)"}, "Next": "Which"},
                "Which": {"Type": "Choice", "Choices": [{"Variable": "$.r", "StringEquals": "fail", "Next": "Boom"}], "Default": "Ok"},
                "Boom": {"Type": "Fail", "Error": "Stand.In", "Cause": "stand-in failure"},
                "Ok": {"Type": "Pass", "Result": {"assignment": "absent"}, "End": true}}}],
               "ResultPath": "$.sync_result", "Catch": real["IcSync"]["Catch"], "Next": real["IcSync"]["Next"]}),
    );
    let definition = json!({"StartAt": "IcCleanupAttempts", "States": states});
    let machine =
        m.op.sfn
            .create_state_machine()
            .name(support::unique("cleanup-retry"))
            .definition(definition.to_string())
            .role_arn(&m.op.out.cleanup_role_arn)
            .send()
            .await
            .expect("create the retry machine")
            .state_machine_arn()
            .to_string();
    let run = |script: Vec<&str>| {
        let input = json!({"grant": {"method": "IdentityCenter"}, "script": script});
        let (sfn, machine) = (&m.op.sfn, machine.as_str());
        async move {
            let ex = sfn
                .start_execution()
                .state_machine_arn(machine)
                .name(support::unique("retry"))
                .input(input.to_string())
                .send()
                .await
                .expect("start")
                .execution_arn()
                .to_string();
            let d = eventually("the retry machine to end", STEP * 2, || async {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&ex)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                match d.status() {
                    ExecutionStatus::Running => Err("RUNNING".to_string()),
                    _ => Ok(d),
                }
            })
            .await;
            let history = sfn
                .get_execution_history()
                .execution_arn(&ex)
                .max_results(1000)
                .send()
                .await
                .expect("history");
            let attempts = history
                .events()
                .iter()
                .filter(|e| {
                    e.r#type() == &HistoryEventType::PassStateEntered
                        && e.state_entered_event_details()
                            .is_some_and(|s| s.name() == "Pick")
                })
                .count();
            (d, attempts)
        }
    };
    let (d, attempts) = run(vec!["fail", "fail", "ok"]).await;
    assert_eq!(d.status(), &ExecutionStatus::Succeeded, "{:?}", d.cause());
    assert_eq!(attempts, 3);
    let output: Value = serde_json::from_str(d.output().expect("output")).expect("JSON");
    assert_eq!(output["outcome"], "Revoked");
    let (d, attempts) = run(vec!["fail"; 13]).await;
    assert_eq!(d.status(), &ExecutionStatus::Failed);
    assert_eq!(d.error(), Some("CleanupFailed"));
    assert_eq!(d.cause(), Some("stand-in failure"));
    assert_eq!(attempts, 12, "12 attempts in all");
}
