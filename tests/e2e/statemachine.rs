//! The contract between the shipped state machine (`deploy/aws/aws-jit.yaml`) and the
//! operator, pinned before the controller exists: each test deploys the template to moto
//! (which runs the real ASL), plays the operator with the plain AWS SDK, and checks the
//! messages, the final status and output, and the alert events in order.
//! The contract itself is written down in deploy/aws/README.md.
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
    name: String,
    input: Value,
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

    /// Starts an execution with the contract's input; the name stands for the one the
    /// controller derives from the request's UID.
    async fn start(&self, duration_seconds: u64, approval_timeout_seconds: u64) -> Run {
        let uid = support::unique("uid");
        let name = format!("req-{uid}");
        let input = json!({
            "requester_arn": REQUESTER_ARN,
            "requester_name": "alice",
            "reason": "fix prod",
            "ticket": "OPS-1",
            "role_arn": "arn:aws:iam::123456789012:role/admin",
            "method": "TrustPolicy",
            "work_group": WORK_GROUP,
            "duration_seconds": duration_seconds,
            "approval_timeout_seconds": approval_timeout_seconds,
            "request": {"namespace": "team-a", "name": "fix-prod", "uid": uid},
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

    async fn approve(&self, run: &Run) -> Value {
        let request = self
            .take_task(run, &self.out.request_queue_url, "approval", STEP)
            .await;
        let approval = json!({
            "approver_name": "carol,dave",
            "approvers": ["carol", "dave"],
            "requester_arn": request.body["input"]["requester_arn"],
        });
        self.succeed(&request, &approval).await;
        approval
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
    eprintln!("expire path: {:?} (deploy excluded)", t0.elapsed());
}

#[tokio::test]
async fn answering_the_hold_revokes_access_early() {
    let op = Operator::deploy("sm-early").await;
    let t0 = Instant::now();
    // A long hold: only the operator's answer can end it within the test's deadlines.
    let run = op.start(3600, 30).await;
    let approval = op.approve(&run).await;
    let grant = op.grant(&run).await;

    let hold = op
        .take_task(&run, &op.out.request_queue_url, "hold", STEP)
        .await;
    let ended = json!({"ended_by": "bob", "reason": "deleted"});
    op.succeed(&hold, &ended).await;

    let revoke = op.take_work(&run, "revoke", STEP).await;
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
    op.approve(&run).await;
    let work = op.take_work(&run, "grant", STEP).await;
    op.fail(
        &work,
        "GrantFailed",
        "trust policy would exceed 2048 characters",
    )
    .await;

    // A partial grant must not survive: a revoke comes first, in the same FIFO group.
    let revoke = op.take_work(&run, "revoke", STEP).await;
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

    // The execution role: sqs:SendMessage on exactly the three queues, nothing else.
    let role = out
        .state_machine_role_arn
        .rsplit('/')
        .next()
        .expect("role name");
    let inline = op
        .iam
        .list_role_policies()
        .role_name(role)
        .send()
        .await
        .expect("list role policies");
    assert_eq!(
        inline.policy_names().len(),
        1,
        "{:?}",
        inline.policy_names()
    );
    let attached = op
        .iam
        .list_attached_role_policies()
        .role_name(role)
        .send()
        .await
        .expect("list attached role policies");
    assert!(attached.attached_policies().is_empty());
    let doc = op
        .iam
        .get_role_policy()
        .role_name(role)
        .policy_name(&inline.policy_names()[0])
        .send()
        .await
        .expect("get role policy");
    let doc = policy_json(doc.policy_document());
    let statements = doc["Statement"].as_array().expect("statements");
    assert_eq!(statements.len(), 1, "{doc}");
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(statements[0]["Action"], "sqs:SendMessage");
    assert_eq!(statements[0]["Resource"], queue_arns);

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
            json!(["states:SendTaskSuccess", "states:SendTaskFailure"]),
            json!("*"),
        ),
        (
            "ReadManagedRoles",
            "Allow",
            json!("iam:GetRole"),
            json!([format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/*")]),
        ),
        (
            "EditTrustPolicyOfManagedRoles",
            "Allow",
            json!("iam:UpdateAssumeRolePolicy"),
            json!([format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/*")]),
        ),
        (
            "NeverEditOwnRoles",
            "Deny",
            json!("iam:UpdateAssumeRolePolicy"),
            json!([
                out.operator_role_arn,
                out.relay_role_arn,
                out.state_machine_role_arn
            ]),
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
        let doc = managed_policy(&op.iam, policy_arn).await;
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
            // RequireManagedRoleTag defaults to false: no condition anywhere.
            assert!(
                s.get("NotAction").is_none()
                    && s.get("NotResource").is_none()
                    && s.get("Condition").is_none(),
                "{sid}: {s}"
            );
        }
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
    // The four alerts were tried, failed, and were caught.
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
        .filter(|e| e.r#type() == &HistoryEventType::TaskFailed)
        .count();
    assert_eq!(failed_sends, 4, "requested, approved, granted, revoked");
    eprintln!("no-alerts path: {:?} (deploy excluded)", t0.elapsed());
}
