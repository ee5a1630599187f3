//! Step Functions, in the shape of the original aws-jit's `StepFunctionClient`:
//! `start_execution`, `send_success`, `send_failure`, plus `describe` so the controller
//! can keep status true to the execution.
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::types::ExecutionStatus;
use serde::Serialize;

use crate::contract::ExecutionInput;

#[derive(Debug, thiserror::Error)]
pub enum SfnError {
    #[error("execution {name} already exists with a different input")]
    InputConflict { name: String },
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{state_machine_arn} is not a state machine ARN")]
    BadStateMachineArn { state_machine_arn: String },
    #[error("Step Functions {call} failed: {code}: {message}")]
    Api {
        call: &'static str,
        code: String,
        message: String,
    },
}

impl SfnError {
    fn api<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        call: &'static str,
        err: &SdkError<E, R>,
    ) -> Self {
        let (code, message) = match err.as_service_error() {
            Some(e) => (
                e.code().unwrap_or("Unknown").to_string(),
                e.message().unwrap_or_default().to_string(),
            ),
            None => (
                "Transport".to_string(),
                aws_sdk_sfn::error::DisplayErrorContext(err).to_string(),
            ),
        };
        SfnError::Api {
            call,
            code,
            message,
        }
    }

    /// True for errors worth retrying (throttling, transport, service faults).
    pub fn is_transient(&self) -> bool {
        match self {
            SfnError::Api { code, .. } => {
                self.is_throttling()
                    || matches!(
                        code.as_str(),
                        // `Unknown`: an answer without an error code (a 5xx page from a
                        // proxy or an overloaded endpoint), nothing Step Functions decided.
                        "Transport" | "ServiceUnavailable" | "InternalFailure" | "Unknown"
                    )
            }
            _ => false,
        }
    }

    /// True when Step Functions said "slow down" and the SDK's own retries (adaptive,
    /// see [`crate::aws::calls::retry_config`]) did not get past it: the caller should
    /// come back later, not give up. Step Functions answers `ThrottlingException`
    /// (unmodelled, a common error of every API), and `KmsThrottlingException` when
    /// the state machine's KMS key throttles (modelled, not retried by the SDK).
    pub fn is_throttling(&self) -> bool {
        match self {
            SfnError::Api { code, .. } => {
                crate::aws::retry::is_throttling(code) || code == "KmsThrottlingException"
            }
            _ => false,
        }
    }
}

/// What became of an answer to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAnswer {
    /// The execution took the answer.
    Delivered,
    /// The task was already over (answered, timed out, or the execution ended): the
    /// execution has moved on, which is what a retried answer wants anyway.
    AlreadyOver,
}

/// Where an execution is (defined with the state machine's messages).
pub use crate::contract::ExecutionState;

#[derive(Clone, Debug)]
pub struct StepFunctionClient {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

/// The execution name of a request: deterministic, so a retry or a restart never starts
/// a second execution.
pub fn execution_name(request_uid: &str) -> String {
    format!("ar-{request_uid}")
}

impl StepFunctionClient {
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: impl Into<String>) -> Self {
        Self {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }

    pub fn state_machine_arn(&self) -> &str {
        &self.state_machine_arn
    }

    /// The ARN an execution of this state machine named `name` has.
    pub fn execution_arn(&self, name: &str) -> Result<String, SfnError> {
        let bad = || SfnError::BadStateMachineArn {
            state_machine_arn: self.state_machine_arn.clone(),
        };
        let (prefix, machine) = self
            .state_machine_arn
            .split_once(":stateMachine:")
            .ok_or_else(bad)?;
        if machine.is_empty() || machine.contains(':') {
            return Err(bad());
        }
        Ok(format!("{prefix}:execution:{machine}:{name}"))
    }

    /// Starts the execution of a request, once. A second call with the same name and
    /// input returns the existing execution; with another input it is an error.
    pub async fn start_execution(
        &self,
        name: &str,
        input: &ExecutionInput,
    ) -> Result<String, SfnError> {
        let body = serde_json::to_string(input)?;
        let res = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(&body)
            .send()
            .await;
        match res {
            Ok(out) => Ok(out.execution_arn),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                let arn = self.execution_arn(name)?;
                let existing = self
                    .client
                    .describe_execution()
                    .execution_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| SfnError::api("DescribeExecution", &e))?;
                // Exactly what we would send, as JSON: a struct would ignore fields it
                // does not know, which an execution started by someone else could carry.
                let ours = serde_json::to_value(input)?;
                let same = existing
                    .input()
                    .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
                    .is_some_and(|theirs| theirs == ours);
                if same {
                    Ok(arn)
                } else {
                    Err(SfnError::InputConflict {
                        name: name.to_string(),
                    })
                }
            }
            Err(err) => Err(SfnError::api("StartExecution", &err)),
        }
    }

    /// The seed's `send_success(message, task_token)`.
    pub async fn send_success<T: Serialize>(
        &self,
        task_token: &str,
        output: &T,
    ) -> Result<TaskAnswer, SfnError> {
        let body = serde_json::to_string(output)?;
        let res = self
            .client
            .send_task_success()
            .task_token(task_token)
            .output(body)
            .send()
            .await;
        match res {
            Ok(_) => Ok(TaskAnswer::Delivered),
            Err(err) if task_is_over(err.as_service_error().and_then(|e| e.code())) => {
                Ok(TaskAnswer::AlreadyOver)
            }
            Err(err) => Err(SfnError::api("SendTaskSuccess", &err)),
        }
    }

    /// The seed's `send_failure(message, task_token)`: `error` is one of
    /// [`crate::contract::errors`], `cause` a message (JSON for `Denied`).
    pub async fn send_failure(
        &self,
        task_token: &str,
        error: &str,
        cause: &str,
    ) -> Result<TaskAnswer, SfnError> {
        let res = self
            .client
            .send_task_failure()
            .task_token(task_token)
            .error(error)
            .cause(truncate(cause, 32_768))
            .send()
            .await;
        match res {
            Ok(_) => Ok(TaskAnswer::Delivered),
            Err(err) if task_is_over(err.as_service_error().and_then(|e| e.code())) => {
                Ok(TaskAnswer::AlreadyOver)
            }
            Err(err) => Err(SfnError::api("SendTaskFailure", &err)),
        }
    }

    /// Whether a task still waits for its answer: `SendTaskHeartbeat` with its token.
    /// The worker asks right before it writes a grant, so a work item that outlived its
    /// task never leaves a statement nobody will revoke.
    pub async fn heartbeat(&self, task_token: &str) -> Result<TaskAnswer, SfnError> {
        match self
            .client
            .send_task_heartbeat()
            .task_token(task_token)
            .send()
            .await
        {
            Ok(_) => Ok(TaskAnswer::Delivered),
            Err(err) if task_is_over(err.as_service_error().and_then(|e| e.code())) => {
                Ok(TaskAnswer::AlreadyOver)
            }
            Err(err) => Err(SfnError::api("SendTaskHeartbeat", &err)),
        }
    }

    /// The input an execution was started with (ours: the controller checked it when it
    /// started the execution, see [`StepFunctionClient::start_execution`]).
    pub async fn input_of(&self, execution_arn: &str) -> Result<ExecutionInput, SfnError> {
        let out = self
            .client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(|e| SfnError::api("DescribeExecution", &e))?;
        Ok(serde_json::from_str(out.input().unwrap_or("{}"))?)
    }

    /// Starts the session cleanup of a grant on `cleanup_state_machine_arn` (the deny
    /// goes once no session of the grant can be alive), named like the request's
    /// execution so it happens once: an existing one counts as started.
    pub async fn start_cleanup<T: Serialize>(
        &self,
        cleanup_state_machine_arn: &str,
        name: &str,
        input: &T,
    ) -> Result<(), SfnError> {
        let res = self
            .client
            .start_execution()
            .state_machine_arn(cleanup_state_machine_arn)
            .name(name)
            .input(serde_json::to_string(input)?)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                Ok(())
            }
            Err(err) => Err(SfnError::api("StartExecution", &err)),
        }
    }

    /// Stops an execution (only ever one aws-jit did not start: stopping one of ours
    /// would skip its revoke).
    pub async fn stop(&self, execution_arn: &str, cause: &str) -> Result<(), SfnError> {
        self.client
            .stop_execution()
            .execution_arn(execution_arn)
            .error("aws-jit.Foreign")
            .cause(truncate(cause, 32_768))
            .send()
            .await
            .map_err(|e| SfnError::api("StopExecution", &e))?;
        Ok(())
    }

    /// Where the execution is.
    pub async fn describe(&self, execution_arn: &str) -> Result<ExecutionState, SfnError> {
        let out = self
            .client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(|e| SfnError::api("DescribeExecution", &e))?;
        Ok(match out.status() {
            ExecutionStatus::Running | ExecutionStatus::PendingRedrive => ExecutionState::Running,
            ExecutionStatus::Succeeded => {
                let output: serde_json::Value = out
                    .output()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or(serde_json::Value::Null);
                let outcome = output
                    .get("outcome")
                    .and_then(|o| serde_json::from_value(o.clone()).ok());
                ExecutionState::Succeeded { outcome, output }
            }
            ExecutionStatus::Failed => ExecutionState::Failed {
                error: out.error().unwrap_or_default().to_string(),
                cause: out.cause().unwrap_or_default().to_string(),
            },
            other => ExecutionState::Ended {
                status: other.as_str().to_string(),
            },
        })
    }
}

/// Error codes that mean "this task no longer waits for an answer".
fn task_is_over(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("TaskTimedOut" | "TaskDoesNotExist" | "InvalidToken" | "ExecutionDoesNotExist")
    )
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(arn: &str) -> StepFunctionClient {
        let conf = aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .build();
        StepFunctionClient::new(aws_sdk_sfn::Client::from_conf(conf), arn)
    }

    #[test]
    fn execution_arns_follow_the_state_machine() {
        let c = client("arn:aws:states:eu-west-1:123456789012:stateMachine:aws-jit-access");
        assert_eq!(
            c.execution_arn(&execution_name("5b0c")).ok().as_deref(),
            Some("arn:aws:states:eu-west-1:123456789012:execution:aws-jit-access:ar-5b0c")
        );
        assert!(
            client("arn:aws:sqs:eu-west-1:1:q")
                .execution_arn("x")
                .is_err()
        );
    }

    #[test]
    fn answers_to_finished_tasks_are_not_errors() {
        assert!(task_is_over(Some("TaskTimedOut")));
        assert!(task_is_over(Some("InvalidToken")));
        assert!(!task_is_over(Some("ThrottlingException")));
        assert!(!task_is_over(None));
    }

    fn api(code: &str) -> SfnError {
        SfnError::Api {
            call: "StartExecution",
            code: code.into(),
            message: "Rate exceeded".into(),
        }
    }

    #[test]
    fn throttling_that_outlived_the_retries_is_transient() {
        for code in [
            "ThrottlingException",
            "TooManyRequestsException",
            "Throttling",
            "KmsThrottlingException",
        ] {
            assert!(api(code).is_throttling(), "{code}");
            assert!(api(code).is_transient(), "{code}");
        }
        for code in [
            "Transport",
            "ServiceUnavailable",
            "InternalFailure",
            "Unknown",
        ] {
            assert!(!api(code).is_throttling(), "{code}");
            assert!(api(code).is_transient(), "{code}");
        }
        for code in [
            "AccessDeniedException",
            "InvalidArn",
            "ExecutionLimitExceeded",
        ] {
            assert!(!api(code).is_transient(), "{code}");
        }
    }

    /// What the SDK makes of Step Functions' real throttling answer (awsJson1_0: the
    /// shape name after the `#` of `__type`): the code the two checks above match.
    #[tokio::test]
    async fn a_throttling_answer_surfaces_as_throttling_exception() {
        use aws_sdk_sfn::config::{Credentials, Region};
        crate::install_crypto_provider();
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::BAD_REQUEST,
                [(axum::http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                r#"{"__type":"com.amazonaws.swf.base.model#ThrottlingException","message":"Rate exceeded"}"#,
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let conf = aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .endpoint_url(format!("http://{addr}"))
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled())
            .build();
        let c = StepFunctionClient::new(
            aws_sdk_sfn::Client::from_conf(conf),
            "arn:aws:states:us-east-1:123456789012:stateMachine:m",
        );
        let err = c.heartbeat("token").await.expect_err("throttled");
        server.abort();
        assert!(
            matches!(&err, SfnError::Api { code, .. } if code == "ThrottlingException"),
            "{err:?}"
        );
        assert!(err.is_throttling() && err.is_transient());
    }

    #[test]
    fn causes_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
