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
        let states = definition["States"].as_object().expect("States");
        for (name, state) in states {
            if state["Type"] != "Task" {
                continue;
            }
            tasks += 1;
            let resource = state["Resource"].as_str().expect("Resource");
            let retry = state["Retry"]
                .as_array()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| panic!("{name} has no Retry"));
            assert!(
                state["Catch"].as_array().is_some_and(|c| !c.is_empty()),
                "{name} has no Catch"
            );
            // The error names of this integration (moto spells the IAM ones iam.X).
            let family: &[&str] = if resource.contains(":::sqs:") {
                &["SQS."]
            } else if resource.contains(":::aws-sdk:iam:") {
                &["Iam.", "iam."]
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
                    // AWS's Iam.X and moto's iam.X, both.
                    if let Some(x) = n.strip_prefix("Iam.") {
                        let moto = if x == "IamException" {
                            "iam.iamException".to_string()
                        } else {
                            format!("iam.{x}")
                        };
                        assert!(names.contains(&moto.as_str()), "{name}: {n} without {moto}");
                    }
                }
                assert!(
                    retrier["MaxAttempts"].as_u64().is_some_and(|n| n >= 2)
                        && retrier["BackoffRate"].as_f64().is_some_and(|b| b > 1.0),
                    "{name}: {retrier}"
                );
            }
        }
    }
    // The flow: 11 alerts, 5 tasks for the operator, 3 IAM calls and the cleanup's
    // start; the cleanup: 2 IAM calls. A Task added or removed must be looked at here.
    assert_eq!(tasks, 22, "Task states in both machines");
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
