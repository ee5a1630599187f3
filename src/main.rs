//! The `aws-jit` binary: a thin shell over the library, one subcommand per role.
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aws-jit",
    version,
    about = "Just-in-time, time-bound, approved AWS access for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crdgen,
    /// Run the operator: reconcile AccessRequests, consume the request and work queues.
    Controller(ControllerArgs),
    /// Run the Slack relay: alert queue → Slack (the operator pod's sidecar).
    ///
    /// Secrets come from the environment (a Kubernetes Secret), never from flags:
    /// SLACK_BOT_TOKEN (required); SLACK_APP_TOKEN (xapp-…): take Approve/Deny clicks
    /// over Socket Mode, no inbound endpoint needed; SLACK_SIGNING_SECRET: with
    /// --interactions-addr, take them over the HTTP endpoint. Both may run at once;
    /// with neither, the relay only posts.
    Relay(RelayArgs),
    /// Before uninstalling: revoke every active grant, cancel every pending request,
    /// then release the requests' finalizers (the records are kept).
    Drain(aws_jit::run::drain::Args),
}

#[derive(Args)]
struct RelayArgs {
    /// Template output AlertQueueUrl.
    #[arg(long, env = "AWS_JIT_ALERT_QUEUE_URL")]
    alert_queue_url: String,
    /// Template output AlertDeadLetterQueueUrl (alerts Slack refuses for good go there).
    #[arg(long, env = "AWS_JIT_ALERT_DLQ_URL")]
    alert_dlq_url: Option<String>,
    /// Channel (ID or name) for roles without `slackChannel`.
    #[arg(long, env = "AWS_JIT_SLACK_DEFAULT_CHANNEL")]
    default_channel: String,
    /// Slack Web API base URL.
    #[arg(
        long,
        env = "AWS_JIT_SLACK_API_URL",
        default_value = "https://slack.com/api"
    )]
    slack_api_url: String,
    /// Minimum interval between two messages to one channel, e.g. 1s.
    #[arg(long, env = "AWS_JIT_SLACK_PACING", default_value = "1s", value_parser = parse_duration)]
    pacing: Duration,
    /// Who grant/revoke failures mention, comma-separated: `<!subteam^S012AB>`, `<@U012AB>`.
    #[arg(long, env = "AWS_JIT_SLACK_FAILURE_MENTION", value_delimiter = ',')]
    failure_mention: Vec<String>,
    /// Serve Slack's HTTP interactivity endpoint (POST /slack/interactions) on this
    /// address, e.g. 0.0.0.0:8081; needs SLACK_SIGNING_SECRET. Unset: no endpoint
    /// (Socket Mode, with SLACK_APP_TOKEN, needs none).
    #[arg(long, env = "AWS_JIT_INTERACTIONS_ADDR")]
    interactions_addr: Option<std::net::SocketAddr>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "AWS_JIT_METRICS_ADDR", default_value = "0.0.0.0:8082")]
    metrics_addr: std::net::SocketAddr,
}

#[derive(Args)]
struct ControllerArgs {
    /// The state machine's ARN (template output StateMachineArn).
    #[arg(long, env = "AWS_JIT_STATE_MACHINE_ARN")]
    state_machine_arn: String,
    /// Template output CleanupStateMachineArn: the operator starts a grant's session
    /// cleanup itself when the execution ended without revoking.
    #[arg(long, env = "AWS_JIT_CLEANUP_STATE_MACHINE_ARN")]
    cleanup_state_machine_arn: String,
    /// Template output RequestQueueUrl.
    #[arg(long, env = "AWS_JIT_REQUEST_QUEUE_URL")]
    request_queue_url: String,
    /// Template output RequestDeadLetterQueueUrl (poison messages are moved there).
    #[arg(long, env = "AWS_JIT_REQUEST_DLQ_URL")]
    request_dlq_url: Option<String>,
    /// Template output WorkQueueUrl.
    #[arg(long, env = "AWS_JIT_WORK_QUEUE_URL")]
    work_queue_url: String,
    /// Template output WorkDeadLetterQueueUrl.
    #[arg(long, env = "AWS_JIT_WORK_DLQ_URL")]
    work_dlq_url: Option<String>,
    /// Template output AlertQueueUrl: security findings (tampering, forged tasks, drift)
    /// go there for the relay to post to Slack. Unset: Events, logs and metrics only.
    #[arg(long, env = "AWS_JIT_ALERT_QUEUE_URL")]
    alert_queue_url: Option<String>,
    /// How often the drift sweeper compares AWS with Kubernetes (it also runs at start).
    #[arg(long, env = "AWS_JIT_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    sweep_interval: Duration,
    /// The operator's namespace, where task-token Secrets live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "aws-jit-system")]
    operator_namespace: String,
    /// Watch one namespace only (default: all).
    #[arg(long, env = "AWS_JIT_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// How soon a request waiting on something outside the operator (a deleted
    /// request's execution ending, a write conflict) is looked at again, e.g. 15s.
    /// Nothing else polls: requests move on events and their own deadlines.
    #[arg(long, env = "AWS_JIT_POLL_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// At most this many AccessRequests are reconciled at once.
    #[arg(long, env = "AWS_JIT_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// The account's IAM trust-policy size quota (2048 unless raised; at most 4096).
    #[arg(long, env = "AWS_JIT_TRUST_POLICY_SIZE_LIMIT", default_value_t = aws_jit::grant::trust_policy::document::DEFAULT_SIZE_LIMIT)]
    trust_policy_size_limit: usize,
    /// At most this many of the operator's AWS calls (Step Functions, IAM, Identity
    /// Center) on the wire at once; more wait their turn. SQS long-polls are not counted.
    #[arg(long, env = "AWS_JIT_AWS_MAX_IN_FLIGHT", default_value_t = aws_jit::aws::calls::DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    aws_max_in_flight: usize,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "AWS_JIT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Elect a leader among replicas on a Lease in the operator's namespace; only the
    /// leader reconciles and consumes the queues. Turn off only for a single replica.
    #[arg(long, env = "AWS_JIT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "AWS_JIT_LEASE_NAME", default_value = "aws-jit-controller")]
    lease_name: String,
    /// How long a Lease lasts without renewal (how long a dead leader blocks), e.g. 15s.
    #[arg(long, env = "AWS_JIT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    aws_jit::policy::decide::parse_duration("duration", s).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

async fn controller(args: ControllerArgs) -> ExitCode {
    let kube = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach Kubernetes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = std::sync::Arc::new(aws_jit::telemetry::metrics::Metrics::new());
    let health = aws_jit::telemetry::probes::Health::new();
    let probes = match serve_probes(args.metrics_addr, &health, &metrics).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let election = args.leader_election.then(|| {
        let mut e = aws_jit::run::leader::Election::new(
            &args.lease_name,
            &args.operator_namespace,
            &aws_jit::run::leader::default_identity(),
        );
        e.lease_duration = args.lease_duration;
        e.renew_before = (args.lease_duration / 3).max(Duration::from_secs(1));
        e
    });
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let targets = aws_jit::run::operator::AwsTargets {
        state_machine_arn: args.state_machine_arn,
        cleanup_state_machine_arn: args.cleanup_state_machine_arn,
        request_queue_url: args.request_queue_url,
        request_dead_letter_url: args.request_dlq_url,
        work_queue_url: args.work_queue_url,
        work_dead_letter_url: args.work_dlq_url,
        alert_queue_url: args.alert_queue_url,
    };
    if let Err(e) = targets.validate() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let config = aws_jit::run::operator::Config {
        aws: targets,
        settings: aws_jit::controller::Settings {
            watch_namespace: args.watch_namespace,
            operator_namespace: args.operator_namespace,
            poll_interval: args.poll_interval,
            concurrency: args.max_concurrent_reconciles,
        },
        queue_wait: Duration::from_secs(20),
        trust_policy_size_limit: args.trust_policy_size_limit,
        faults: aws_jit::faults::Faults::default(),
        metrics,
        health: health.clone(),
        sweep_interval: args.sweep_interval,
        aws_max_in_flight: args.aws_max_in_flight,
    };
    let stopping = health.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping.set_stopping();
    };
    let result = aws_jit::run::operator::run_elected(kube, &aws, config, election, shutdown).await;
    probes.stop().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Exit so the kubelet starts this replica over as a candidate.
            tracing::error!(error = %e, "stopping");
            ExitCode::FAILURE
        }
    }
}

async fn relay(args: RelayArgs) -> ExitCode {
    // From the environment only (a Kubernetes Secret), never a flag: flags show in `ps`.
    let token = match std::env::var("SLACK_BOT_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            eprintln!("error: SLACK_BOT_TOKEN is not set");
            return ExitCode::FAILURE;
        }
    };
    let kube = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot reach Kubernetes: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.interactions_addr {
        // Like the bot token: from the environment (a Kubernetes Secret) only.
        let secret = match std::env::var("SLACK_SIGNING_SECRET") {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                eprintln!("error: --interactions-addr needs SLACK_SIGNING_SECRET");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let slack = match aws_jit::slack::interactions::SlackWeb::new(&args.slack_api_url, &token) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let state = aws_jit::slack::interactions::State::new(
            kube.clone(),
            aws_jit::slack::interactions::SigningSecret::new(&secret),
        )
        .with_slack(slack);
        tokio::spawn(async move {
            if let Err(e) = aws_jit::slack::interactions::serve(listener, state).await {
                tracing::error!(error = %e, "the Slack interactivity endpoint stopped");
            }
        });
    }
    // Socket Mode: with an app-level token, from the environment (a Secret) only.
    if let Some(app_token) = std::env::var("SLACK_APP_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        use aws_jit::slack::interactions::{Handler, SlackWeb, socket};
        let built = socket::Config::new(&args.slack_api_url, &app_token)
            .map_err(|e| e.to_string())
            .and_then(|c| SlackWeb::new(&args.slack_api_url, &token).map(|s| (c, s)));
        let (config, slack) = match built {
            Ok(built) => built,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let handler = Handler::new(kube.clone()).with_slack(slack);
        tokio::spawn(async move {
            if let Err(e) = socket::run(handler, config, shutdown_signal()).await {
                tracing::error!(error = %e, "Slack Socket Mode stopped");
            }
        });
    }
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut config =
        aws_jit::slack::relay::Config::new(&args.alert_queue_url, &args.default_channel, &token);
    config.dead_letter_url = args.alert_dlq_url;
    config.slack_api_url = args.slack_api_url;
    config.pacing = args.pacing;
    config.failure_mentions = args
        .failure_mention
        .into_iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let health = aws_jit::telemetry::probes::Health::new();
    let probes = match serve_probes(args.metrics_addr, &health, &config.metrics).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    health.set_ready();
    let stopping = health.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping.set_stopping();
    };
    let result = aws_jit::slack::relay::run(kube, &aws, config, shutdown).await;
    probes.stop().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The probe server of one subcommand, stopped once its loops have stopped.
struct Probes {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), aws_jit::telemetry::probes::ProbeError>>,
}

impl Probes {
    async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "probes"),
            Err(e) => tracing::error!(error = %e, "the probe server ended abnormally"),
        }
    }
}

async fn serve_probes(
    addr: std::net::SocketAddr,
    health: &std::sync::Arc<aws_jit::telemetry::probes::Health>,
    metrics: &std::sync::Arc<aws_jit::telemetry::metrics::Metrics>,
) -> Result<Probes, ExitCode> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(aws_jit::telemetry::probes::serve(
        listener,
        health.clone(),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Probes { stop, task })
}

fn main() -> ExitCode {
    aws_jit::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => match aws_jit::crd::to_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => {
            init_tracing();
            match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(controller(args)),
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Relay(args) => {
            init_tracing();
            match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(relay(args)),
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Drain(args) => {
            init_tracing();
            match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(aws_jit::run::drain::main(args)),
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
