//! moto's server: SQS, IAM, STS, CloudFormation and a Step Functions that runs the real
//! ASL (`{"stepfunctions": {"execute_state_machine": true}}`). One per test process;
//! every test deploys `deploy/aws/aws-jit.yaml` as a CloudFormation stack of its own
//! (see [`Moto::deploy`]), so tests never share queues.
//!
//! The server is moto's, from the virtualenv of `AWS_JIT_MOTO_SERVER` (set by
//! `hack/ensure-tools.sh`), started through `tests/support/moto_server.py`: moto's own
//! `main` with one gap closed (a Task `states:startExecution` takes its parameters in
//! PascalCase, as on AWS; moto 5.2.5 passes them to botocore unchanged and fails).
//!
//! moto gap worked around here (also in deploy/aws/README.md): moto's CloudFormation
//! creates `AWS::StepFunctions::StateMachine` in its plain Step Functions backend, but
//! with `execute_state_machine` on, the Step Functions API is served by a second backend
//! that runs the ASL and does not see the stack's state machines. [`Moto::deploy`]
//! therefore resolves each template `DefinitionString` (`Fn::Sub`) from the stack's
//! outputs and parameters, exactly as CloudFormation does, and creates both state
//! machines (the flow and its session cleanup) in the executing backend under the same
//! name and role, so they have the stack's ARNs.
//! Everything else (queues, roles, policies) is the stack's own, except what moto's
//! CloudFormation skips: `AWS::SQS::QueuePolicy` (not created; moto would not enforce
//! it anyway), `Rules`, `AllowedPattern` and `MinValue`/`MaxValue` (not checked;
//! [`check_parameters`] checks them here, tests/iam_actions.rs the policies and the
//! Rules).
use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};

use super::{procs, unique, wait};

/// moto's account and region (moto's defaults; the template reads them from `AWS::*`).
pub const ACCOUNT_ID: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// The shipped template, read at run time so a test always deploys the current one.
pub const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/aws/aws-jit.yaml");
/// moto's `main` with the gap described at the top of this file closed.
const LAUNCHER_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_server.py");

/// From spawning moto to a server that answers. Generous: importing moto takes a few
/// seconds, more on a machine busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// moto creates a stack synchronously; the deadline only guards against a hang.
/// A loaded moto builds the (now larger) stack inside its CreateStack call, one resource
/// after another: under the whole suite on 2 cores that took over a minute once.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Moto {
    /// `http://127.0.0.1:PORT` (or the host [`Moto::start_at`] was given)
    pub endpoint: String,
    /// moto's log (stdout + stderr), removed at exit.
    pub log: PathBuf,
}

/// The outputs of one deployed `deploy/aws/aws-jit.yaml` stack.
#[derive(Clone, Debug)]
pub struct AwsOutputs {
    pub stack_name: String,
    /// The template's `NamePrefix` parameter (= the stack name here).
    pub name_prefix: String,
    pub state_machine_arn: String,
    pub state_machine_role_arn: String,
    /// The session cleanup state machine (`CleanupStateMachineArn`) and its role.
    pub cleanup_state_machine_arn: String,
    pub cleanup_role_arn: String,
    pub request_queue_url: String,
    pub work_queue_url: String,
    pub alert_queue_url: String,
    pub request_dlq_url: String,
    pub work_dlq_url: String,
    pub alert_dlq_url: String,
    pub operator_policy_arn: String,
    pub relay_policy_arn: String,
    /// The DynamoDB table of who holds each IdentityCenter assignment / IamGroup
    /// membership (`GrantHoldersTableName`).
    pub grant_holders_table: String,
    /// The template's `OperatorRoleArn` / `RelayRoleArn` parameters (the queue policies
    /// name them; moto enforces neither, so they need not exist).
    pub operator_role_arn: String,
    pub relay_role_arn: String,
}

impl AwsOutputs {
    /// An operator configuration for this stack, as the demo and the sandbox run it
    /// (no alert queue consumer, 1 s polls, a minute between drift sweeps).
    pub fn operator_config(
        &self,
        watch_namespace: Option<String>,
    ) -> aws_jit::run::operator::Config {
        aws_jit::run::operator::Config {
            aws: aws_jit::run::operator::AwsTargets {
                state_machine_arn: self.state_machine_arn.clone(),
                cleanup_state_machine_arn: self.cleanup_state_machine_arn.clone(),
                request_queue_url: self.request_queue_url.clone(),
                request_dead_letter_url: Some(self.request_dlq_url.clone()),
                work_queue_url: self.work_queue_url.clone(),
                work_dead_letter_url: Some(self.work_dlq_url.clone()),
                alert_queue_url: None,
            },
            settings: aws_jit::controller::Settings {
                watch_namespace,
                operator_namespace: "aws-jit-system".into(),
                poll_interval: Duration::from_secs(1),
                concurrency: 16,
            },
            queue_wait: Duration::from_secs(1),
            trust_policy_size_limit: aws_jit::grant::trust_policy::document::DEFAULT_SIZE_LIMIT,
            faults: aws_jit::faults::Faults::default(),
            metrics: Default::default(),
            health: aws_jit::telemetry::probes::Health::new(),
            sweep_interval: Duration::from_secs(60),
            aws_max_in_flight: aws_jit::aws::calls::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl Moto {
    /// Starts moto's server on a free loopback port, waits until it answers and turns
    /// on execution of state machines. Synchronous: called once per process from
    /// `support::stack()`, on a thread of its own.
    pub fn start() -> Moto {
        Moto::start_at(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)
    }

    /// [`Moto::start`], listening on `listen` (e.g. every address of a node's network
    /// namespace, so its pods reach it too) and reached at `host`.
    pub fn start_at(listen: Ipv4Addr, host: Ipv4Addr) -> Moto {
        let server = std::env::var_os("AWS_JIT_MOTO_SERVER").unwrap_or_else(|| {
            panic!(
                "AWS_JIT_MOTO_SERVER is not set: run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("aws-jit-moto-")
            .tempdir()
            .expect("create moto's temp dir")
            .keep();
        procs::remove_at_exit(dir.clone());
        let log = dir.join("moto.log");

        // moto_server's own virtualenv python runs the launcher.
        let python = std::path::Path::new(&server)
            .parent()
            .map(|bin| bin.join("python"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "no python next to {} (AWS_JIT_MOTO_SERVER must be the virtualenv's bin/moto_server)",
                    server.to_string_lossy()
                )
            });
        let port = free_port();
        let mut cmd = Command::new(&python);
        cmd.arg(LAUNCHER_PATH)
            .args(["-H", &listen.to_string(), "-p", &port.to_string()])
            // The state machine's own SQS calls go to http://localhost:$MOTO_PORT.
            .env("MOTO_PORT", port.to_string())
            .current_dir(&dir);
        let pid = procs::spawn_service(cmd, log.clone())
            .unwrap_or_else(|e| panic!("start {} {LAUNCHER_PATH}: {e}", python.display()));

        let endpoint = format!("http://{host}:{port}");
        // A throwaway runtime, on a thread of its own so that start() also works when
        // called from inside a test's runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for moto's start")
                    .block_on(configure(&endpoint, pid, &log))
            })
            .join()
        })
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Moto { endpoint, log }
    }

    /// An SDK config for this moto: its endpoint, us-east-1, static test credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }

    /// Deploys the shipped template as a new stack (name from `stack_prefix`, unique)
    /// with `ManagedRoleArns` = every role under the path `/jit/` of moto's account (where
    /// the tests create the roles they grant), `OperatorRoleArn` / `RelayRoleArn` =
    /// `role/<stack>-operator` / `role/<stack>-relay`, waits for CREATE_COMPLETE and
    /// returns its outputs.
    pub async fn deploy(&self, stack_prefix: &str) -> AwsOutputs {
        self.deploy_with_params(stack_prefix, &[], &[]).await
    }

    /// [`Moto::deploy`] with an explicit `ManagedRoleArns`.
    pub async fn deploy_with(
        &self,
        stack_prefix: &str,
        managed_role_arns: &[String],
    ) -> AwsOutputs {
        self.deploy_with_params(stack_prefix, managed_role_arns, &[])
            .await
    }

    /// [`Moto::deploy_with`] and more template parameters (e.g. `WorkTaskTimeoutSeconds`);
    /// no `managed_role_arns`: every role under `/jit/`. Every parameter is checked
    /// against the template's `AllowedPattern`, `MinValue` and `MaxValue` first, as
    /// CloudFormation does and moto does not.
    ///
    /// A create that moto answers with an error is tried again under a new name, up to
    /// three times: a loaded moto fails a creation inside the call now and then (its
    /// stack then stays `CREATE_IN_PROGRESS` for good), and the SDK's own retry of the
    /// call would only be told "already exists". The errors are printed.
    pub async fn deploy_with_params(
        &self,
        stack_prefix: &str,
        managed_role_arns: &[String],
        extra: &[(&str, &str)],
    ) -> AwsOutputs {
        const ATTEMPTS: usize = 3;
        let mut failed = Vec::new();
        for _ in 0..ATTEMPTS {
            match self
                .try_deploy(stack_prefix, managed_role_arns, extra)
                .await
            {
                Ok(deployed) => return deployed,
                Err(e) => {
                    eprintln!("{e}; deploying again under a new name");
                    failed.push(e);
                }
            }
        }
        panic!("the template did not deploy in {ATTEMPTS} attempts: {failed:#?}");
    }

    async fn try_deploy(
        &self,
        stack_prefix: &str,
        managed_role_arns: &[String],
        extra: &[(&str, &str)],
    ) -> Result<AwsOutputs, String> {
        let sdk = self.sdk_config().await;
        let cfn = aws_sdk_cloudformation::Client::new(&sdk);
        let stack_name = unique(stack_prefix);
        let all_roles = [format!("arn:aws:iam::{ACCOUNT_ID}:role/jit/*")];
        let managed_role_arns = if managed_role_arns.is_empty() {
            &all_roles[..]
        } else {
            managed_role_arns
        };
        let template = std::fs::read_to_string(TEMPLATE_PATH)
            .unwrap_or_else(|e| panic!("read {TEMPLATE_PATH}: {e}"));
        let mut params: HashMap<String, String> = HashMap::from([
            ("NamePrefix".to_string(), stack_name.clone()),
            ("ManagedRoleArns".to_string(), managed_role_arns.join(",")),
            (
                "OperatorRoleArn".to_string(),
                format!("arn:aws:iam::{ACCOUNT_ID}:role/{stack_name}-operator"),
            ),
            (
                "RelayRoleArn".to_string(),
                format!("arn:aws:iam::{ACCOUNT_ID}:role/{stack_name}-relay"),
            ),
        ]);
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        check_parameters(&template, &params);

        let mut create = cfn
            .create_stack()
            .stack_name(&stack_name)
            .template_body(&template)
            .capabilities(Capability::CapabilityNamedIam);
        for (k, v) in &params {
            create = create.parameters(
                Parameter::builder()
                    .parameter_key(k)
                    .parameter_value(v)
                    .build(),
            );
        }
        // Not retried by the SDK: a retry of a creation that failed inside moto is told
        // "already exists" and the failure is never seen.
        let once = aws_sdk_cloudformation::config::Builder::default()
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Err(e) = create.customize().config_override(once).send().await {
            return Err(format!(
                "create stack {stack_name}: {}",
                aws_sdk_cloudformation::error::DisplayErrorContext(e)
            ));
        }

        let (cfn, name) = (&cfn, stack_name.as_str());
        let outputs = wait::eventually(
            &format!("stack {stack_name} to be CREATE_COMPLETE"),
            DEPLOY_TIMEOUT,
            || async move {
                let stacks = cfn
                    .describe_stacks()
                    .stack_name(name)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let stack = stacks.stacks().first().ok_or("no stack")?;
                match stack.stack_status() {
                    Some(StackStatus::CreateComplete) => Ok(stack
                        .outputs()
                        .iter()
                        .filter_map(|o| {
                            Some((o.output_key()?.to_string(), o.output_value()?.to_string()))
                        })
                        .collect::<HashMap<_, _>>()),
                    Some(StackStatus::CreateInProgress) | None => {
                        Err(format!("{:?}", stack.stack_status()))
                    }
                    Some(other) => panic!(
                        "stack {name} ended {other:?}: {:?}; events: {:#?}",
                        stack.stack_status_reason(),
                        cfn.describe_stack_events().stack_name(name).send().await
                    ),
                }
            },
        )
        .await;
        let out = |key: &str| {
            outputs
                .get(key)
                .unwrap_or_else(|| panic!("stack {stack_name} has no output {key}: {outputs:?}"))
                .clone()
        };
        let deployed = AwsOutputs {
            stack_name: stack_name.clone(),
            name_prefix: stack_name.clone(),
            state_machine_arn: out("StateMachineArn"),
            state_machine_role_arn: out("StateMachineRoleArn"),
            cleanup_state_machine_arn: out("CleanupStateMachineArn"),
            cleanup_role_arn: out("SessionCleanupRoleArn"),
            request_queue_url: out("RequestQueueUrl"),
            work_queue_url: out("WorkQueueUrl"),
            alert_queue_url: out("AlertQueueUrl"),
            request_dlq_url: out("RequestDeadLetterQueueUrl"),
            work_dlq_url: out("WorkDeadLetterQueueUrl"),
            alert_dlq_url: out("AlertDeadLetterQueueUrl"),
            operator_policy_arn: out("OperatorPolicyArn"),
            relay_policy_arn: out("RelayPolicyArn"),
            grant_holders_table: out("GrantHoldersTableName"),
            operator_role_arn: params["OperatorRoleArn"].clone(),
            relay_role_arn: params["RelayRoleArn"].clone(),
        };
        register_with_executor(&sdk, &template, &params, &deployed).await;
        Ok(deployed)
    }
}

/// moto ignores a parameter's `AllowedPattern`, `MinValue` and `MaxValue`;
/// CloudFormation refuses a value that does not match its pattern (each element, for a
/// `CommaDelimitedList`) or a `Number` outside its bounds. Panics on such a value, so no
/// test runs on a stack AWS would not create.
fn check_parameters(template: &str, params: &HashMap<String, String>) {
    let doc: serde_yaml::Value = serde_yaml::from_str(template).expect("template is YAML");
    let declared = doc["Parameters"].as_mapping().expect("template Parameters");
    for (name, value) in params {
        let decl = declared
            .get(name.as_str())
            .unwrap_or_else(|| panic!("the template has no parameter {name}"));
        if decl["Type"].as_str() == Some("Number") {
            let n: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("parameter {name} = {value:?} is not a number: {e}"));
            let min = decl["MinValue"].as_f64().unwrap_or(f64::NEG_INFINITY);
            let max = decl["MaxValue"].as_f64().unwrap_or(f64::INFINITY);
            assert!(
                (min..=max).contains(&n),
                "parameter {name} = {value} is outside [{min}, {max}] (MinValue, MaxValue): CloudFormation would refuse the stack"
            );
        }
        let Some(pattern) = decl["AllowedPattern"].as_str() else {
            continue;
        };
        let re = regex_lite::Regex::new(pattern)
            .unwrap_or_else(|e| panic!("{name}: AllowedPattern {pattern:?}: {e}"));
        let values: Vec<&str> = if decl["Type"].as_str() == Some("CommaDelimitedList") {
            value.split(',').collect()
        } else {
            vec![value.as_str()]
        };
        for v in values {
            assert!(
                re.is_match(v),
                "parameter {name} = {v:?} does not match its AllowedPattern {pattern:?}: CloudFormation would refuse the stack"
            );
        }
    }
}

/// The moto gap described at the top of this file: create the stack's state machines
/// (the session cleanup first: the flow names it), each definition resolved the way
/// CloudFormation resolves it, in the backend that runs them.
async fn register_with_executor(
    sdk: &aws_config::SdkConfig,
    template: &str,
    params: &HashMap<String, String>,
    out: &AwsOutputs,
) {
    let doc: serde_yaml::Value = serde_yaml::from_str(template).expect("template is YAML");
    let vars = substitutions(&doc, params, out);
    let sfn = aws_sdk_sfn::Client::new(sdk);
    for (logical, arn, role) in [
        (
            "SessionCleanupStateMachine",
            &out.cleanup_state_machine_arn,
            &out.cleanup_role_arn,
        ),
        (
            "StateMachine",
            &out.state_machine_arn,
            &out.state_machine_role_arn,
        ),
    ] {
        let definition = definition(&doc, logical, &vars);
        let name = arn
            .rsplit(':')
            .next()
            .expect("state machine ARN has a name");
        let created = sfn
            .create_state_machine()
            .name(name)
            .definition(&definition)
            .role_arn(role)
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto refused the {logical} definition: {e:?}"));
        assert_eq!(
            created.state_machine_arn(),
            arn.as_str(),
            "the executable {logical} must have the stack's ARN"
        );
    }
}

/// The `DefinitionString` of the state machine `logical`, its `Fn::Sub` resolved.
fn definition(doc: &serde_yaml::Value, logical: &str, vars: &HashMap<String, String>) -> String {
    let sub = &doc["Resources"][logical]["Properties"]["DefinitionString"];
    let serde_yaml::Value::Tagged(sub) = sub else {
        panic!("{logical}.DefinitionString is expected to be !Sub: {sub:?}");
    };
    assert_eq!(sub.tag, "!Sub", "{logical}.DefinitionString");
    let body = sub.value.as_str().expect("!Sub of a plain string");
    let definition = substitute(body, vars);
    serde_json::from_str::<serde_json::Value>(&definition).unwrap_or_else(|e| {
        panic!("the resolved {logical} definition is not JSON ({e}):\n{definition}")
    });
    definition
}

/// What CloudFormation substitutes in a `DefinitionString`: pseudo parameters,
/// parameters (given or default), and the Ref of the resources the definitions name.
fn substitutions(
    doc: &serde_yaml::Value,
    params: &HashMap<String, String>,
    out: &AwsOutputs,
) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("AWS::Partition".into(), "aws".into()),
        ("AWS::Region".into(), REGION.into()),
        ("AWS::AccountId".into(), ACCOUNT_ID.into()),
        ("AWS::StackName".into(), out.stack_name.clone()),
        ("RequestQueue".into(), out.request_queue_url.clone()),
        ("WorkQueue".into(), out.work_queue_url.clone()),
        ("AlertQueue".into(), out.alert_queue_url.clone()),
        (
            "SessionCleanupStateMachine".into(),
            out.cleanup_state_machine_arn.clone(),
        ),
        ("GrantHoldersTable".into(), out.grant_holders_table.clone()),
    ]);
    for (name, decl) in doc["Parameters"].as_mapping().expect("template Parameters") {
        let name = name.as_str().expect("parameter name").to_string();
        let value = params
            .get(&name)
            .cloned()
            .or_else(|| match &decl["Default"] {
                serde_yaml::Value::String(s) => Some(s.clone()),
                serde_yaml::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        if let Some(value) = value {
            vars.insert(name, value);
        }
    }
    vars
}

/// `Fn::Sub` without a variable map: `${Name}` -> `vars[Name]`, `${!Literal}` ->
/// `${Literal}`. An unknown name panics: teach [`register_with_executor`] about it.
fn substitute(body: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .expect("unterminated ${ in DefinitionString");
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            let value = vars.get(name).unwrap_or_else(|| {
                panic!("DefinitionString uses ${{{name}}}; tests/support/aws.rs does not know its value")
            });
            out.push_str(value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("find a free loopback port")
        .port()
}

/// Waits for moto to answer, then turns on state machine execution. Panics with the
/// log's tail if moto exits or does not answer in time.
async fn configure(endpoint: &str, pid: u32, log: &PathBuf) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let url = format!("{endpoint}/moto-api/config");
    let body = serde_json::json!({"stepfunctions": {"execute_state_machine": true}});
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if exited(pid) || Instant::now() >= deadline {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = log_text
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "moto at {endpoint} {} (last: {last}); {}:\n{tail}",
                if exited(pid) {
                    "exited"
                } else {
                    "did not answer in time"
                },
                log.display()
            );
        }
        // Paces the polling; the condition is moto answering.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether our child `pid` has exited (a zombie until `procs` reaps it at exit).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// One receive of up to ten messages from `queue_url` (a one-second long poll), each
/// deleted once read: the bodies taken, for a test that watches a queue in place of its
/// consumer.
pub async fn take_messages(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<Vec<String>, String> {
    let got = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .map_err(|e| format!("receive: {e:?}"))?;
    let mut bodies = Vec::new();
    for m in got.messages() {
        sqs.delete_message()
            .queue_url(queue_url)
            .receipt_handle(m.receipt_handle().unwrap_or_default())
            .send()
            .await
            .map_err(|e| format!("delete: {e:?}"))?;
        bodies.push(m.body().unwrap_or_default().to_string());
    }
    Ok(bodies)
}

impl Moto {
    /// One call of an AWS JSON-protocol API on moto, for the services the test crate has
    /// no SDK client of (IAM Identity Center's `sso-admin` and `identitystore`, DynamoDB):
    /// `signing_name` (`sso`, `identitystore`, `dynamodb`) is what moto's single server
    /// reads from a SigV4 `Authorization` header to pick the service (it checks no
    /// signature), `target` the operation's `X-Amz-Target`
    /// (`SWBExternalService.ListAccountAssignments`, `AWSIdentityStore.CreateUser`,
    /// `DynamoDB_20120810.Query`). `Err` carries the HTTP status and the error body.
    pub async fn json_call(
        &self,
        signing_name: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let content_type = if signing_name == "dynamodb" {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        };
        let got = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{signing_name}/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .header("X-Amz-Target", target)
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let status = got.status();
        let text = got.text().await.map_err(|e| format!("{target}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{target}: HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{target}: {e}: {text}"))
    }
}
