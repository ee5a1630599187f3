//! The relay's benchmark (BENCHMARKS.md, "Relay"): N alerts on the alert queue in moto,
//! spread over C channels, carried by the real `aws-jit relay` binary (a child process,
//! so its RSS and CPU are its own) to the Slack stand-in at the relay's pacing. Run it
//! through `hack/relay-bench.sh`, which builds the binaries first.
//!
//! The alerts are `requested` events of requests that are not in Kubernetes (as
//! `support::slack::ghost_alert` builds them), for C AccessRoles with C different
//! `slackChannel`s and role ARNs: the relay reads the request (404), finds the role by
//! its ARN, renders, posts. Each alert is its own message group (one execution each),
//! so SQS hands the relay up to 10 at a time.
//!
//! Measured: messages posted per second, the delay from just before an alert's
//! `SendMessage` to the stand-in receiving its `chat.postMessage` (p50/p95/p99/max),
//! and the relay process's peak RSS (VmHWM), RSS at the end and CPU time.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use support::kube::User;
use support::measure::{LATENCY_HEADER, clk_tck, latency_row, sample};
use support::slack::{SlackStandIn, ghost_alert};

const TOKEN: &str = "xoxb-relay-bench";

#[derive(Parser, Debug)]
#[command(about = "Benchmark: N alerts through the Slack relay on the local stack")]
struct Args {
    /// How many alerts.
    #[arg(default_value_t = 300)]
    n: usize,
    /// How many channels (one AccessRole each).
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Alerts sent per second; 0: all at once (in batches of 10).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The relay's --pacing.
    #[arg(long, default_value = "1s")]
    pacing: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
}

/// The AccessRoles: channel `C0BENCH<i>` for role `relay-bench-<i>`.
fn create_roles(stack: &support::Stack, channels: usize, tag: &str) -> Vec<String> {
    let mut arns = Vec::new();
    let mut yaml = String::new();
    for i in 0..channels {
        let arn = format!("arn:aws:iam::123456789012:role/{tag}-{i}");
        yaml.push_str(&format!(
            "---\napiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {tag}-{i}\nspec:\n  \
             roleArn: {arn}\n  slackChannel: C0BENCH{i:02}\n  approvers: [{{user: carol, slackUserId: U0CAROL}}]\n  \
             requesters: [{{user: alice}}]\n  principal: {{template: 'arn:aws:iam::123456789012:user/{{username}}'}}\n"
        ));
        arns.push(arn);
    }
    support::succeeded(
        &stack
            .kube
            .kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml),
    );
    arns
}

fn start_relay(
    stack: &support::Stack,
    aws: &support::aws::AwsOutputs,
    slack: &SlackStandIn,
    pacing: &str,
    log: &Path,
) -> u32 {
    let mut cmd = stack.operator_command("relay");
    cmd.args(["--alert-queue-url", &aws.alert_queue_url])
        .args(["--alert-dlq-url", &aws.alert_dlq_url])
        .args(["--default-channel", "C0BENCHDEFAULT"])
        .args(["--slack-api-url", &slack.url])
        .args(["--pacing", pacing])
        .env("SLACK_BOT_TOKEN", TOKEN);
    support::procs::spawn_service(cmd, log.to_path_buf()).expect("start the relay")
}

/// When each named ghost's message reached the stand-in.
fn posted(slack: &SlackStandIn) -> HashMap<String, Instant> {
    slack
        .accepted()
        .into_iter()
        .filter(|c| c.method == "chat.postMessage")
        .filter_map(|c| {
            let blocks = c.blocks.to_string();
            let start = blocks.find("`nowhere/")? + "`nowhere/".len();
            let name = blocks[start..].split('`').next()?.to_string();
            Some((name, c.at))
        })
        .collect()
}

async fn wait_posted(slack: &SlackStandIn, names: &[String], until: Instant) -> bool {
    loop {
        let seen = posted(slack);
        let missing = names.iter().filter(|n| !seen.contains_key(*n)).count();
        if missing == 0 {
            return true;
        }
        if Instant::now() >= until {
            eprintln!("{missing} of {} alerts not posted in time", names.len());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, batch: &[(String, String)]) {
    let mut req = sqs.send_message_batch().queue_url(url);
    for (i, (name, body)) in batch.iter().enumerate() {
        req = req.entries(
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_group_id(format!("{name}-exec"))
                .message_deduplication_id(name)
                .message_body(body)
                .build()
                .expect("batch entry"),
        );
    }
    let out = req.send().await.expect("SendMessageBatch");
    assert!(out.failed().is_empty(), "{:?}", out.failed());
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    assert!(
        args.n > 0 && args.channels > 0,
        "N and --channels must be positive"
    );
    let stack = support::stack();
    let aws = stack.aws.deploy("relay-bench").await;
    let sdk = stack.aws.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let tag = support::unique("relay-bench");
    let arns = create_roles(stack, args.channels, &tag);
    let slack = SlackStandIn::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("relay.log");
    let pid = start_relay(stack, &aws, &slack, &args.pacing, &log);
    let until = Instant::now() + Duration::from_secs(args.deadline);

    // Warm-up: one alert through, so start-up is not in the figures.
    let warm = vec!["warm-up".to_string()];
    send(
        &sqs,
        &aws.alert_queue_url,
        &[(warm[0].clone(), ghost_alert(&warm[0], &arns[0]))],
    )
    .await;
    if !wait_posted(&slack, &warm, until).await {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        return std::process::ExitCode::FAILURE;
    }
    // The warm-up post takes its channel's pacing slot: let it pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let names: Vec<String> = (0..args.n).map(|i| format!("bench-{i}")).collect();
    let alerts: Vec<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), ghost_alert(n, &arns[i % args.channels])))
        .collect();
    let before = sample(pid);
    let started = Instant::now();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let chunk = if args.rate > 0.0 { 1 } else { 10 };
    for (k, batch) in alerts.chunks(chunk).enumerate() {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(k as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let at = Instant::now();
        send(&sqs, &aws.alert_queue_url, batch).await;
        for (name, _) in batch {
            sent.insert(name.clone(), at);
        }
    }
    let sending = started.elapsed();
    let ok = wait_posted(&slack, &names, until).await;
    let after = sample(pid);
    let wall = started.elapsed();
    if !ok {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        return std::process::ExitCode::FAILURE;
    }
    let seen = posted(&slack);
    let delays: Vec<Duration> = names
        .iter()
        .map(|n| seen[n].saturating_duration_since(sent[n]))
        .collect();
    let first = names.iter().map(|n| seen[n]).min().unwrap_or(started);
    let last = names.iter().map(|n| seen[n]).max().unwrap_or(started);
    let posting = last.saturating_duration_since(first);
    let refused = slack.calls().iter().filter(|c| !c.ok()).count();
    let cpu = after.ticks.saturating_sub(before.ticks) as f64 / clk_tck();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mode = if args.rate > 0.0 {
        format!("{} alerts/s", args.rate)
    } else {
        "all at once".into()
    };
    println!(
        "## Relay: N = {}, {} channels, pacing {}, sent {mode}\n\n\
         Machine: {} cores, load average {}; {profile} build of `aws-jit relay`.\n",
        args.n,
        args.channels,
        args.pacing,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!("| what | value |\n| --- | ---: |");
    println!("| alerts sent in | {:.1} s |", sending.as_secs_f64());
    println!(
        "| all posted after | {:.1} s (first post → last post {:.1} s) |",
        wall.as_secs_f64(),
        posting.as_secs_f64()
    );
    println!(
        "| messages posted per second | {:.2} (first → last post: {:.2}; the pacing allows {:.2}) |",
        args.n as f64 / wall.as_secs_f64(),
        (args.n - 1) as f64 / posting.as_secs_f64().max(f64::EPSILON),
        args.channels as f64
            / aws_jit::policy::decide::parse_duration("pacing", &args.pacing)
                .map(|d| d.as_secs_f64())
                .unwrap_or(1.0)
    );
    println!("| calls Slack refused (429, errors) | {refused} |");
    println!(
        "| relay CPU | {cpu:.1} s ({:.1} % of one core) |",
        100.0 * cpu / wall.as_secs_f64()
    );
    println!(
        "| relay peak RSS (VmHWM) | {:.1} MiB |",
        after.hwm_kb as f64 / 1024.0
    );
    println!(
        "| relay RSS at the end | {:.1} MiB |\n",
        after.rss_kb as f64 / 1024.0
    );
    print!("{LATENCY_HEADER}");
    print!(
        "{}",
        latency_row("alert SendMessage → chat.postMessage", delays)
    );
    std::process::ExitCode::SUCCESS
}
