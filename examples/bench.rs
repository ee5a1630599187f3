//! The benchmark of BENCHMARKS.md: N AccessRequests through the real operator binary on
//! the local stack, with an auto-approver. Run it through `hack/bench.sh [N...]`, which
//! builds the tools and the release binaries first. Everything it starts stops when it
//! exits.
//!
//! Two phases, each on a moto of its own so neither sees the other's executions:
//!
//! 1. moto alone: the same N executions of the shipped state machine, driven straight
//!    through Step Functions / SQS / IAM by this process (what the operator's queue
//!    consumer and trust-policy worker call, without Kubernetes and without the
//!    reconciler's DescribeExecution polls). moto's CPU for that is its floor.
//! 2. the operator: `target/release/aws-jit controller` as a separate process (so its
//!    RSS and CPU are its own) against kube-apiserver + etcd + moto. This process
//!    creates the requests as alice, watches them, and approves each as carol as soon
//!    as it is AwaitingApproval.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_jit::contract::{
    ApprovalOutput, ExecutionInput, GrantOutput, GrantTarget, RequestIdentity, RequestTask,
    WorkTask,
};
use aws_jit::crd::{AccessRequest, AccessRequestSpec, Phase};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use clap::Parser;
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::json;
use support::aws::ACCOUNT_ID;
use support::kube::User;
use support::measure::{
    LATENCY_HEADER, ProcSample, alive, clk_tck, free_loopback_port, latency_row, percentile,
    prometheus_samples, prometheus_sum, sample, stat_fields,
};

const OPERATOR_NS: &str = "aws-jit-system";
/// The trust policy every benchmark role starts with (one foreign statement).
const BASE_TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Ec2","Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
const REQUESTER: &str = "alice";
const APPROVER: &str = "carol";
const HOLD: &str = "1h";
const HOLD_SECONDS: u64 = 3600;

#[derive(Parser, Debug)]
#[command(about = "Benchmark: N AccessRequests through the operator on the local stack")]
struct Args {
    /// How many AccessRequests (and, for moto alone, executions). Not with --existing.
    #[arg(required_unless_present = "existing", conflicts_with = "existing")]
    n: Option<usize>,
    /// Instead of N requests through approval: this many AccessRequests already in the
    /// apiserver (mostly ended, --open of them waiting for approval), then a cold start of
    /// the operator and a leader takeover, measured.
    #[arg(long)]
    existing: Option<usize>,
    /// With --existing: how many of them are open (AwaitingApproval, with a real
    /// execution each). Default: 1 %, at least 1.
    #[arg(long, requires = "existing")]
    open: Option<usize>,
    /// Requests created (and approvals sent) at most this many at a time.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// With --existing: the ended requests are created this many at a time.
    #[arg(long, default_value_t = 32)]
    create_parallel: usize,
    /// The controller's --poll-interval, passed only when given (the binary's own default
    /// otherwise).
    #[arg(long)]
    poll_interval: Option<String>,
    /// More flags for the controller, one per use, e.g.
    /// `--operator-arg=--max-concurrent-reconciles=32`.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Deadline of each phase, seconds (default: 600, or 2 s per request when N > 300).
    #[arg(long)]
    deadline: Option<u64>,
    /// Length of the held-and-idle window (every grant held, nothing else to do), seconds.
    #[arg(long, default_value_t = 60)]
    steady: u64,
    /// Skip the moto-alone phase.
    #[arg(long)]
    skip_moto_alone: bool,
    /// The template's `WorkTaskTimeoutSeconds` in both phases. The template's default
    /// (300 s) is sized for AWS; this moto serves about one execution a second in all,
    /// so at N >= 500 a grant waits in its queue longer than that even in moto alone.
    #[arg(long, default_value_t = 3600)]
    work_task_timeout: u32,
}

impl Args {
    /// The template parameters of every deploy.
    fn template(&self) -> [(&'static str, String); 1] {
        [("WorkTaskTimeoutSeconds", self.work_task_timeout.to_string())]
    }

    /// N, or the number of existing requests.
    fn size(&self) -> usize {
        self.n.or(self.existing).unwrap_or(0)
    }

    fn deadline(&self) -> u64 {
        self.deadline
            .unwrap_or(600.max(2 * self.n.unwrap_or(0) as u64))
    }
}

// ---------------------------------------------------------------------------------------
// Processes: CPU and memory from /proc.

/// Our live child processes: (pid, argv).
fn children() -> Vec<(u32, Vec<String>)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.get(1) != Some(&me) || !alive(pid) {
            continue;
        }
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push((pid, argv));
    }
    out
}

/// The pid of our child whose argv[0] is the binary `name`.
fn child_named(name: &str) -> u32 {
    children()
        .into_iter()
        .find(|(_, argv)| argv.first().is_some_and(|a| Path::new(a).ends_with(name)))
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no child process {name} found"))
}

/// The pid of the moto server listening on `endpoint`'s port (moto is started with `-p PORT`).
fn moto_pid(endpoint: &str) -> u32 {
    let port = endpoint.rsplit(':').next().unwrap_or_default().to_owned();
    children()
        .into_iter()
        .find(|(_, argv)| {
            argv.iter().any(|a| a.contains("moto"))
                && argv.windows(2).any(|w| w[0] == "-p" && w[1] == port)
        })
        .map(|(pid, _)| pid)
        .unwrap_or_else(|| panic!("no moto child process on port {port} found"))
}

/// A set of processes watched during a phase: CPU from snapshots, peak RSS from a
/// sampler thread (every 200 ms).
struct Procs {
    list: Vec<(&'static str, u32)>,
    peaks: Arc<Mutex<HashMap<u32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl Procs {
    fn new(list: Vec<(&'static str, u32)>) -> Procs {
        let peaks = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, pids) = (
            peaks.clone(),
            stop.clone(),
            list.iter().map(|x| x.1).collect::<Vec<_>>(),
        );
        std::thread::spawn(move || {
            // Ends with the flag or with the process; each pass is a few small reads.
            while !s.load(Ordering::Relaxed) {
                for &pid in &pids {
                    let rss = sample(pid).rss_kb;
                    let mut peaks = p.lock().expect("peaks");
                    let e = peaks.entry(pid).or_insert(0);
                    *e = (*e).max(rss);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Procs { list, peaks, stop }
    }

    fn snapshot(&self) -> Vec<ProcSample> {
        self.list.iter().map(|(_, pid)| sample(*pid)).collect()
    }

    fn reset_peaks(&self) {
        self.peaks.lock().expect("peaks").clear();
    }

    fn peak(&self, pid: u32) -> u64 {
        self.peaks
            .lock()
            .expect("peaks")
            .get(&pid)
            .copied()
            .unwrap_or(0)
    }

    /// One row per process: CPU seconds and average cores over `wall`, RSS now, peak
    /// RSS in the window, VmHWM (peak since the process started).
    fn table(
        &self,
        before: &[ProcSample],
        after: &[ProcSample],
        wall: Duration,
        n: usize,
    ) -> String {
        let mut s = String::from(
            "| process | CPU s | avg cores | CPU ms / request | RSS end MiB | peak RSS MiB (sampled) | VmHWM MiB |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (i, (label, pid)) in self.list.iter().enumerate() {
            let cpu = after[i].ticks.saturating_sub(before[i].ticks) as f64 / clk_tck();
            s.push_str(&format!(
                "| {label} | {cpu:.1} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
                cpu / wall.as_secs_f64(),
                cpu * 1000.0 / n.max(1) as f64,
                after[i].rss_kb as f64 / 1024.0,
                self.peak(*pid).max(after[i].rss_kb) as f64 / 1024.0,
                after[i].hwm_kb as f64 / 1024.0,
            ));
        }
        s
    }

    fn cpu_rates(&self, before: &[ProcSample], after: &[ProcSample], wall: Duration) -> String {
        self.list
            .iter()
            .enumerate()
            .map(|(i, (label, _))| {
                let cpu = after[i].ticks.saturating_sub(before[i].ticks) as f64 / clk_tck();
                format!("| {label} | {:.3} |\n", cpu / wall.as_secs_f64())
            })
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Latencies.

// ---------------------------------------------------------------------------------------
// The apiserver's request counters.

/// (verb, group, resource, subresource, code) -> count.
type Counters = BTreeMap<(String, String, String, String, String), f64>;

fn scrape(kube: &support::kube::KubeStack) -> Counters {
    let text = support::succeeded(&kube.kubectl(User::Admin, &["get", "--raw", "/metrics"]));
    let mut out = Counters::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut map = HashMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.trim(), v.trim_end_matches('"').to_owned());
            }
        }
        let get = |k: &str| map.get(k).cloned().unwrap_or_default();
        let key = (
            get("verb"),
            get("group"),
            get("resource"),
            get("subresource"),
            get("code"),
        );
        *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

fn resource_name(group: &str, resource: &str, sub: &str) -> String {
    let r = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    if sub.is_empty() {
        r
    } else {
        format!("{r}/{sub}")
    }
}

/// Whether a resource belongs to a request's lifecycle (the rest is the apiserver's own
/// background, e.g. its identity lease).
fn lifecycle(resource: &str) -> bool {
    matches!(resource, "accessrequests" | "secrets" | "events")
}

struct Writes {
    table: String,
    lifecycle_total: f64,
    other_total: f64,
}

fn writes(d: &Counters, n: usize) -> Writes {
    // (resource, verb) -> (all, of which not 2xx)
    let mut rows: BTreeMap<(bool, String, String), (f64, f64)> = BTreeMap::new();
    for ((verb, group, resource, sub, code), v) in d {
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let key = (
            !lifecycle(resource),
            resource_name(group, resource, sub),
            verb.clone(),
        );
        let e = rows.entry(key).or_insert((0.0, 0.0));
        e.0 += v;
        if !code.starts_with('2') {
            e.1 += v;
        }
    }
    let mut table = String::from(
        "| resource | verb | requests | of which refused (non-2xx) | per AccessRequest |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    let (mut lifecycle_total, mut other_total) = (0.0, 0.0);
    for ((other, resource, verb), (all, refused)) in &rows {
        if *other {
            other_total += all;
        } else {
            lifecycle_total += all;
        }
        table.push_str(&format!(
            "| {resource}{} | {verb} | {all:.0} | {refused:.0} | {:.2} |\n",
            if *other { " (background)" } else { "" },
            all / n.max(1) as f64
        ));
    }
    Writes {
        table,
        lifecycle_total,
        other_total,
    }
}

/// The other requests (reads: GET, LIST, WATCH) by resource and verb, in all and per
/// AccessRequest, and the total of the resource reads. Non-resource GETs (the bench's own
/// `/metrics` scrapes) are shown apart and left out of the total.
fn reads(d: &Counters, n: usize) -> (String, f64) {
    let mut rows: BTreeMap<(bool, String, String), f64> = BTreeMap::new();
    for ((verb, group, resource, sub, _), v) in d {
        if !WRITE_VERBS.contains(&verb.as_str()) {
            *rows
                .entry((
                    resource.is_empty(),
                    resource_name(group, resource, sub),
                    verb.clone(),
                ))
                .or_insert(0.0) += v;
        }
    }
    let mut s = String::from(
        "| resource | verb | requests | per AccessRequest |\n| --- | --- | ---: | ---: |\n",
    );
    let mut total = 0.0;
    for ((non_resource, resource, verb), v) in rows {
        let resource = if non_resource {
            "(non-resource: the bench's /metrics scrapes)".to_owned()
        } else {
            total += v;
            resource
        };
        s.push_str(&format!(
            "| {resource} | {verb} | {v:.0} | {:.2} |\n",
            v / n.max(1) as f64
        ));
    }
    (s, total)
}

/// Requests per second by verb and resource (all verbs), for the steady-state window.
fn rates(d: &Counters, wall: Duration) -> String {
    let mut rows: BTreeMap<(String, String), f64> = BTreeMap::new();
    for ((verb, group, resource, sub, _), v) in d {
        *rows
            .entry((resource_name(group, resource, sub), verb.clone()))
            .or_insert(0.0) += v;
    }
    let mut s = String::from("| resource | verb | per second |\n| --- | --- | ---: |\n");
    for ((resource, verb), v) in rows {
        s.push_str(&format!(
            "| {resource} | {verb} | {:.1} |\n",
            v / wall.as_secs_f64()
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Roles: how many grants fit in one trust policy.

/// How many grants for `principal` fit in one role's trust policy under IAM's default
/// size limit (moto enforces none; the operator does, and fails a grant that does not
/// fit). The benchmark spreads its requests over enough roles that none is refused.
fn grants_per_role(principal: &str) -> usize {
    use aws_jit::grant::trust_policy::document as tp;
    let mut doc = tp::parse(BASE_TRUST_POLICY).expect("base trust policy");
    let expiry = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    for i in 0..1000 {
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", 0xfeed_u32, i);
        let terms = tp::SessionTerms {
            session_name: format!("ar-{uid}"),
            source_identity: REQUESTER.into(),
        };
        match tp::grant(
            &doc,
            &uid,
            principal,
            &terms,
            expiry,
            tp::DEFAULT_SIZE_LIMIT,
        ) {
            Ok(next) => doc = next,
            Err(tp::TrustPolicyError::TooLarge { .. }) => return i as usize,
            Err(e) => panic!("grant: {e}"),
        }
    }
    1000
}

async fn create_iam_roles(sdk: &aws_config::SdkConfig, names: &[String]) -> Vec<String> {
    let iam = aws_sdk_iam::Client::new(sdk);
    let mut arns = Vec::new();
    for name in names {
        let created = iam
            .create_role()
            .role_name(name)
            .path("/jit/")
            .assume_role_policy_document(BASE_TRUST_POLICY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create IAM role {name}: {e:?}"));
        arns.push(
            created
                .role()
                .map(|r| r.arn().to_owned())
                .expect("role ARN"),
        );
    }
    arns
}

/// One AccessRole per IAM role: alice may ask, carol approves (one vote), 1 h.
fn access_roles_yaml(names: &[String], arns: &[String]) -> String {
    let mut yaml = String::new();
    for (name, arn) in names.iter().zip(arns) {
        yaml.push_str(&format!(
            "---\napiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {name}\nspec:\n  roleArn: {arn}\n  method: TrustPolicy\n\
             \x20 defaultDuration: {HOLD}\n  maxDuration: 4h\n  approvalTimeout: {HOLD}\n  approvalsRequired: 1\n\
             \x20 requesters: [{{user: {REQUESTER}}}]\n  approvers: [{{user: {APPROVER}}}]\n\
             \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT_ID}:user/{{username}}'}}\n"
        ));
    }
    yaml
}

fn requester_arn() -> String {
    format!("arn:aws:iam::{ACCOUNT_ID}:user/{REQUESTER}")
}

// ---------------------------------------------------------------------------------------
// Phase 1: moto alone.

#[derive(Default, Clone, Copy)]
struct ExecRec {
    start: Option<Instant>,
    /// StartExecution answered.
    started: Option<Instant>,
    approval_task: Option<Instant>,
    answered: Option<Instant>,
    hold_task: Option<Instant>,
}

struct MotoAlone {
    report: String,
    cpu_s: f64,
    wall: Duration,
    /// Executions that reached their Hold state, per second of the run.
    throughput: f64,
    /// StartExecution sent → approval task received (the operator's apply →
    /// AwaitingApproval without Kubernetes).
    to_approval: Vec<Duration>,
    /// SendTaskSuccess sent → hold task received (the operator's approve → Active).
    to_hold: Vec<Duration>,
}

/// The template, deployed with the bench's parameters.
async fn deploy(moto: &support::aws::Moto, prefix: &str, args: &Args) -> support::aws::AwsOutputs {
    let params = args.template();
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    moto.deploy_with_params(prefix, &[], &params).await
}

async fn moto_alone(args: &Args, n: usize, roles: usize) -> MotoAlone {
    let moto = tokio::task::spawn_blocking(support::aws::Moto::start)
        .await
        .expect("start a second moto");
    let pid = moto_pid(&moto.endpoint);
    let out = deploy(&moto, "bench-alone", args).await;
    let sdk = moto.sdk_config().await;
    let names: Vec<String> = (0..roles).map(|i| format!("bench-role-{i}")).collect();
    let arns = create_iam_roles(&sdk, &names).await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let iam = aws_sdk_iam::Client::new(&sdk);
    let procs = Procs::new(vec![("moto", pid), ("bench (driver)", std::process::id())]);
    let recs: Arc<Mutex<Vec<ExecRec>>> = Arc::new(Mutex::new(vec![ExecRec::default(); n]));
    let holds = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.deadline());
    let index_of = |input: &ExecutionInput| {
        input
            .request
            .name
            .strip_prefix("bench-")
            .and_then(|i| i.parse::<usize>().ok())
    };

    let load0 = loadavg();
    let before = procs.snapshot();
    let t0 = Instant::now();
    // The request queue: approvals answered at once (as carol), holds recorded.
    let consumer = {
        let (sqs, sfn, recs, holds, errors) = (
            sqs.clone(),
            sfn.clone(),
            recs.clone(),
            holds.clone(),
            errors.clone(),
        );
        let url = out.request_queue_url.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline && holds.load(Ordering::Relaxed) < n {
                let got = match sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(2)
                    .send()
                    .await
                {
                    Ok(got) => got,
                    Err(e) => {
                        eprintln!("moto alone: receive from the request queue: {e:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let mut tasks = tokio::task::JoinSet::new();
                for m in got.messages.unwrap_or_default() {
                    let (sqs, sfn, recs, holds, errors, url) = (
                        sqs.clone(),
                        sfn.clone(),
                        recs.clone(),
                        holds.clone(),
                        errors.clone(),
                        url.clone(),
                    );
                    tasks.spawn(async move {
                        let seen = Instant::now();
                        let task: RequestTask = serde_json::from_str(m.body().unwrap_or_default())
                            .expect("a request task");
                        match task {
                            RequestTask::Approval {
                                task_token, input, ..
                            } => {
                                let i = index_of(&input).expect("bench request name");
                                recs.lock().expect("recs")[i].approval_task = Some(seen);
                                let answer = ApprovalOutput {
                                    approver_name: APPROVER.into(),
                                    approvers: vec![APPROVER.into()],
                                    requester_arn: input.requester_arn.clone(),
                                    expires_at: aws_jit::policy::decide::expiry_after(
                                        jiff::Timestamp::now(),
                                        input.duration_seconds,
                                    ),
                                    grant: Some(GrantTarget::TrustPolicy {}),
                                };
                                recs.lock().expect("recs")[i].answered = Some(Instant::now());
                                if let Err(e) = sfn
                                    .send_task_success()
                                    .task_token(task_token)
                                    .output(serde_json::to_string(&answer).expect("json"))
                                    .send()
                                    .await
                                {
                                    eprintln!("moto alone: send task success: {e:?}");
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            RequestTask::Hold { input, .. } => {
                                let i = index_of(&input).expect("bench request name");
                                let mut recs = recs.lock().expect("recs");
                                if recs[i].hold_task.is_none() {
                                    recs[i].hold_task = Some(seen);
                                    holds.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        if let Err(e) = sqs
                            .delete_message()
                            .queue_url(&url)
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .send()
                            .await
                        {
                            eprintln!("moto alone: delete message: {e:?}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
        })
    };
    // The work queue: grants made the way the operator's worker makes them (GetRole,
    // the same trust-policy edit, UpdateAssumeRolePolicy, SendTaskSuccess, DeleteMessage);
    // message groups concurrently, in order within a group.
    let worker = {
        let (sqs, sfn, iam, holds, errors) = (
            sqs.clone(),
            sfn.clone(),
            iam.clone(),
            holds.clone(),
            errors.clone(),
        );
        let url = out.work_queue_url.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline && holds.load(Ordering::Relaxed) < n {
                let got = match sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(2)
                    .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                    .send()
                    .await
                {
                    Ok(got) => got,
                    Err(e) => {
                        eprintln!("moto alone: receive from the work queue: {e:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let mut groups: BTreeMap<String, Vec<aws_sdk_sqs::types::Message>> =
                    BTreeMap::new();
                for m in got.messages.unwrap_or_default() {
                    let g = m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned()
                        .unwrap_or_default();
                    groups.entry(g).or_default().push(m);
                }
                let mut tasks = tokio::task::JoinSet::new();
                for (_, group) in groups {
                    let (sqs, sfn, iam, errors, url) = (
                        sqs.clone(),
                        sfn.clone(),
                        iam.clone(),
                        errors.clone(),
                        url.clone(),
                    );
                    tasks.spawn(async move {
                        for m in group {
                            if let Err(e) =
                                grant_alone(&sfn, &iam, m.body().unwrap_or_default()).await
                            {
                                eprintln!("moto alone: grant: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            if let Err(e) = sqs
                                .delete_message()
                                .queue_url(&url)
                                .receipt_handle(m.receipt_handle().unwrap_or_default())
                                .send()
                                .await
                            {
                                eprintln!("moto alone: delete work message: {e:?}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
        })
    };
    // The starts, as the controller makes them.
    let run_id = t0.elapsed().subsec_nanos() ^ std::process::id();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let (sfn, recs, gate, errors) = (sfn.clone(), recs.clone(), gate.clone(), errors.clone());
        let role = (arns[i % roles].clone(), names[i % roles].clone());
        let machine = out.state_machine_arn.clone();
        starts.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let uid = format!("{run_id:08x}-0000-4000-8000-{i:012x}");
            let input = ExecutionInput {
                requester_arn: requester_arn(),
                requester_name: REQUESTER.into(),
                reason: "bench".into(),
                ticket: String::new(),
                role_arn: role.0,
                method: "TrustPolicy".into(),
                work_group: format!("{ACCOUNT_ID}/{}", role.1),
                duration_seconds: HOLD_SECONDS,
                approval_timeout_seconds: HOLD_SECONDS,
                request: RequestIdentity {
                    namespace: "bench".into(),
                    name: format!("bench-{i:04}"),
                    uid: uid.clone(),
                },
                role_name: role.1.clone(),
                session_name: format!("ar-{uid}"),
                source_identity: REQUESTER.into(),
                session_policy_name: aws_jit::grant::trust_policy::session::policy_name(&uid),
                start_at: String::new(),
                break_glass: false,
            };
            recs.lock().expect("recs")[i].start = Some(Instant::now());
            if let Err(e) = sfn
                .start_execution()
                .state_machine_arn(machine)
                .name(aws_jit::aws::sfn::execution_name(&uid))
                .input(serde_json::to_string(&input).expect("json"))
                .send()
                .await
            {
                eprintln!("moto alone: start execution: {e:?}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
            recs.lock().expect("recs")[i].started = Some(Instant::now());
        });
    }
    while starts.join_next().await.is_some() {}
    let _ = consumer.await;
    let _ = worker.await;
    let wall = t0.elapsed();
    let after = procs.snapshot();
    let load1 = loadavg();
    let held = holds.load(Ordering::Relaxed);

    // Steady state: N executions waiting in their Hold state, nobody calling moto.
    let steady_before = procs.snapshot();
    let steady_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let steady_after = procs.snapshot();
    let steady_wall = steady_t0.elapsed();
    // This moto is ours alone and done: stop it so its waiting executions do not take
    // CPU from the operator phase. (The stack's exit hook reaps it.)
    // SAFETY: signalling our own child process by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    let recs = recs.lock().expect("recs").clone();
    let first = |a: fn(&ExecRec) -> Option<Instant>, b: fn(&ExecRec) -> Option<Instant>| {
        recs.iter()
            .filter_map(|r| Some(b(r)?.duration_since(a(r)?)))
            .collect::<Vec<_>>()
    };
    let cpu_s = after[0].ticks.saturating_sub(before[0].ticks) as f64 / clk_tck();
    let mut report = format!(
        "### moto alone (N = {n}, {roles} roles)\n\n\
         {held} of {n} executions reached their Hold state in {:.1} s ({:.1} executions/s); \
         {} errors. The driver started executions {} at a time. Machine load average \
         (1/5/15 min) {load0} at the start, {load1} at the end.\n\n",
        wall.as_secs_f64(),
        held as f64 / wall.as_secs_f64(),
        errors.load(Ordering::Relaxed),
        args.parallel,
    );
    report.push_str(LATENCY_HEADER);
    report.push_str(&latency_row(
        "StartExecution call",
        first(|r| r.start, |r| r.started),
    ));
    report.push_str(&latency_row(
        "StartExecution → approval task received",
        first(|r| r.start, |r| r.approval_task),
    ));
    report.push_str(&latency_row(
        "SendTaskSuccess → hold task received (grant included)",
        first(|r| r.answered, |r| r.hold_task),
    ));
    report.push_str("\nDuring the run:\n\n");
    report.push_str(&procs.table(&before, &after, wall, n));
    report.push_str(&format!(
        "\nSteady state, {n} executions holding, {:.0} s window (cores used):\n\n| process | avg cores |\n| --- | ---: |\n",
        steady_wall.as_secs_f64()
    ));
    report.push_str(&procs.cpu_rates(&steady_before, &steady_after, steady_wall));
    if held < n {
        report.push_str(&format!(
            "\n**Incomplete: only {held} of {n} reached Hold before the deadline.**\n"
        ));
    }
    MotoAlone {
        report,
        cpu_s,
        wall,
        throughput: held as f64 / wall.as_secs_f64(),
        to_approval: first(|r| r.start, |r| r.approval_task),
        to_hold: first(|r| r.answered, |r| r.hold_task),
    }
}

async fn grant_alone(
    sfn: &aws_sdk_sfn::Client,
    iam: &aws_sdk_iam::Client,
    body: &str,
) -> Result<(), String> {
    use aws_jit::grant::trust_policy::document as tp;
    let task: WorkTask = serde_json::from_str(body).map_err(|e| format!("work task: {e}"))?;
    let WorkTask::Grant {
        task_token, input, ..
    } = task
    else {
        return Err("unexpected revoke".into());
    };
    let role = input
        .role_arn
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let got = iam
        .get_role()
        .role_name(&role)
        .send()
        .await
        .map_err(|e| format!("GetRole: {e:?}"))?;
    let doc = tp::parse(
        got.role()
            .and_then(|r| r.assume_role_policy_document())
            .unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let now = jiff::Timestamp::now();
    let expires = now + jiff::SignedDuration::from_secs(input.duration_seconds as i64);
    let terms = tp::SessionTerms {
        session_name: input.session_name.clone(),
        source_identity: input.source_identity.clone(),
    };
    let granted = tp::grant(
        &doc,
        &input.request.uid,
        &input.requester_arn,
        &terms,
        expires,
        tp::DEFAULT_SIZE_LIMIT,
    )
    .map_err(|e| e.to_string())?;
    iam.update_assume_role_policy()
        .role_name(&role)
        .policy_document(tp::to_json(&granted))
        .send()
        .await
        .map_err(|e| format!("UpdateAssumeRolePolicy: {e:?}"))?;
    let output = GrantOutput {
        granted_at: now.to_string(),
        expires_at: expires.to_string(),
        statement_id: tp::sid_for(&input.request.uid).map_err(|e| e.to_string())?,
        ..Default::default()
    };
    sfn.send_task_success()
        .task_token(task_token)
        .output(serde_json::to_string(&output).expect("json"))
        .send()
        .await
        .map_err(|e| format!("SendTaskSuccess: {e:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Phase 2: the operator.

#[derive(Default, Clone, Debug)]
struct Rec {
    apply: Option<Instant>,
    pending: Option<Instant>,
    awaiting: Option<Instant>,
    approve: Option<Instant>,
    approved: Option<Instant>,
    active: Option<Instant>,
    /// A phase it should never reach here (and its message).
    bad: Option<String>,
}

type Recs = Arc<Mutex<HashMap<String, Rec>>>;

/// An operator process of the bench, and where its /metrics are.
#[derive(Clone, Copy)]
struct Operator {
    pid: u32,
    metrics: std::net::SocketAddr,
}

fn start_operator(
    args: &Args,
    stack: &support::Stack,
    aws: &support::aws::AwsOutputs,
    ns: &str,
    log: &Path,
) -> Operator {
    let port = free_loopback_port().expect("a free loopback port");
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = stack.operator_command("controller");
    cmd.args(["--state-machine-arn", &aws.state_machine_arn])
        .args([
            "--cleanup-state-machine-arn",
            &aws.cleanup_state_machine_arn,
        ])
        .args(["--request-queue-url", &aws.request_queue_url])
        .args(["--request-dlq-url", &aws.request_dlq_url])
        .args(["--work-queue-url", &aws.work_queue_url])
        .args(["--work-dlq-url", &aws.work_dlq_url])
        .args(["--operator-namespace", OPERATOR_NS])
        .args(["--watch-namespace", ns])
        .args(["--metrics-addr", &metrics.to_string()]);
    if let Some(every) = &args.poll_interval {
        cmd.args(["--poll-interval", every]);
    }
    cmd.args(&args.operator_args);
    let pid = support::procs::spawn_service(cmd, log.to_path_buf()).expect("start the operator");
    Operator { pid, metrics }
}

/// The operator's own /metrics (OpenMetrics text).
async fn operator_metrics(op: Operator) -> Result<String, String> {
    let url = format!("http://{}/metrics", op.metrics);
    let got = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !got.status().is_success() {
        return Err(format!("GET {url}: {}", got.status()));
    }
    got.text().await.map_err(|e| format!("GET {url}: {e}"))
}

/// (service, api) -> attempts, from `aws_jit_aws_calls_total`.
type AwsCalls = BTreeMap<(String, String), f64>;

fn aws_calls(text: &str) -> AwsCalls {
    let mut out = AwsCalls::new();
    for (labels, v) in prometheus_samples(text, "aws_jit_aws_calls_total") {
        let get = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        *out.entry((get("service"), get("api"))).or_insert(0.0) += v;
    }
    out
}

/// Every call in `d` (a fold from +0.0: an empty sum of f64 is -0.0, printed "-0").
fn aws_total(d: &AwsCalls) -> f64 {
    d.values().fold(0.0, |a, b| a + b)
}

fn aws_delta(before: &AwsCalls, after: &AwsCalls) -> AwsCalls {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The operator's AWS calls by API: in all, and divided by `per` (`per_label` names it).
fn aws_table(d: &AwsCalls, per: f64, per_label: &str) -> String {
    let mut s = format!("| service | API | calls | {per_label} |\n| --- | --- | ---: | ---: |\n");
    let mut total = 0.0;
    for ((service, api), v) in d {
        total += v;
        s.push_str(&format!(
            "| {service} | {api} | {v:.0} | {:.2} |\n",
            v / per
        ));
    }
    s.push_str(&format!(
        "| **all** | | **{total:.0}** | **{:.2}** |\n",
        total / per
    ));
    s
}

/// The operator's AWS calls, scraped from its /metrics; a failed scrape is reported in
/// the output (and the figures read as missing), never guessed.
async fn aws_now(op: Operator) -> Option<AwsCalls> {
    match operator_metrics(op).await {
        Ok(text) => Some(aws_calls(&text)),
        Err(e) => {
            eprintln!("cannot read the operator's metrics: {e}");
            None
        }
    }
}

struct SummaryInput<'a> {
    n: usize,
    alone: Option<&'a MotoAlone>,
    /// Requests Active per second, first create → last Active.
    throughput: f64,
    to_awaiting: Vec<Duration>,
    to_active: Vec<Duration>,
    cpu_ms: f64,
    writes: f64,
    reads: f64,
    aws: Option<&'a AwsCalls>,
    steady_aws: Option<&'a AwsCalls>,
    steady_minutes: f64,
    held: f64,
    steady_cpu_ms_per_min: f64,
}

/// One markdown table: the operator beside moto alone from the same run, and its cost
/// per request lifecycle and while idle.
fn summary(x: &SummaryInput) -> String {
    let mut s = format!(
        "\n#### Summary, N = {}: the operator beside moto alone (same run)\n\n\
         | figure | moto alone | operator | operator vs moto alone |\n| --- | ---: | ---: | ---: |\n",
        x.n
    );
    let alone_tp = x.alone.map(|a| a.throughput);
    s.push_str(&format!(
        "| end-to-end throughput, requests/s | {} | {:.2} | {} |\n",
        alone_tp.map_or("–".into(), |t| format!("{t:.2}")),
        x.throughput,
        alone_tp
            .filter(|t| *t > 0.0)
            .map_or("–".into(), |t| format!("{:.2} ×", x.throughput / t)),
    ));
    let sorted = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    // (label, moto alone's label, the operator's spans, moto alone's spans)
    type Spans<'a> = (&'a str, &'a str, Vec<Duration>, Option<Vec<Duration>>);
    let spans: [Spans; 2] = [
        (
            "apply → AwaitingApproval",
            "StartExecution → approval task",
            sorted(&x.to_awaiting),
            x.alone.map(|a| sorted(&a.to_approval)),
        ),
        (
            "approve → Active",
            "SendTaskSuccess → hold task",
            sorted(&x.to_active),
            x.alone.map(|a| sorted(&a.to_hold)),
        ),
    ];
    for (label, alone_label, ours, alone) in &spans {
        for p in [50.0, 95.0, 99.0] {
            let op = percentile(ours, p).as_millis() as i128;
            let al = alone.as_ref().map(|a| percentile(a, p).as_millis() as i128);
            s.push_str(&format!(
                "| {label} p{p:.0}, ms (moto alone: {alone_label}) | {} | {op} | {} |\n",
                al.map_or("–".into(), |v| v.to_string()),
                al.map_or("–".into(), |v| format!("{:+} ms", op - v)),
            ));
        }
    }
    let row = |what: &str, v: String| format!("| {what} | | {v} | |\n");
    s.push_str(&row(
        "operator CPU ms per request lifecycle (apply → Active)",
        format!("{:.1}", x.cpu_ms),
    ));
    s.push_str(&row(
        "operator apiserver writes per lifecycle",
        format!("{:.2}", x.writes),
    ));
    s.push_str(&row(
        "operator apiserver reads per lifecycle",
        format!("{:.2}", x.reads),
    ));
    match x.aws {
        Some(aws) => {
            let mut calls: BTreeMap<String, f64> = BTreeMap::new();
            // The targets' APIs always shown, zero included.
            for api in ["StartExecution", "DescribeExecution"] {
                calls.insert(api.into(), 0.0);
            }
            for ((_, api), v) in aws {
                *calls.entry(api.clone()).or_insert(0.0) += v;
            }
            for (api, v) in calls {
                s.push_str(&row(
                    &format!("operator AWS calls per lifecycle: {api}"),
                    format!("{:.2}", v / x.n as f64),
                ));
            }
        }
        None => s.push_str(&row("operator AWS calls per lifecycle", "not read".into())),
    }
    match x.steady_aws {
        Some(aws) => {
            let all = aws_total(aws);
            let polls = aws
                .iter()
                .filter(|((_, api), _)| api == "ReceiveMessage")
                .fold(0.0, |a, (_, v)| a + v);
            s.push_str(&row(
                "held and idle: operator AWS calls per minute, all (of which ReceiveMessage)",
                format!(
                    "{:.1} ({:.1})",
                    all / x.steady_minutes,
                    polls / x.steady_minutes
                ),
            ));
            s.push_str(&row(
                "held and idle: operator AWS calls per minute per held grant, beyond ReceiveMessage",
                format!("{:.3}", (all - polls) / x.steady_minutes / x.held),
            ));
        }
        None => s.push_str(&row("held and idle: operator AWS calls", "not read".into())),
    }
    s.push_str(&row(
        "held and idle: operator CPU ms per minute",
        format!("{:.0}", x.steady_cpu_ms_per_min),
    ));
    s
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The operator's log lines by level and message (and, for warnings and errors, the
/// kind of error, object names left out).
fn log_summary(log: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = v["level"].as_str().unwrap_or_default();
        let msg = v["fields"]["message"].as_str().unwrap_or("?");
        let err = v["fields"]["error"].as_str().unwrap_or_default();
        let err: String = err
            .split_whitespace()
            .map(|w| {
                if w.contains("AccessRequest.") || w.contains("aws-jit-task-") || w.contains('"') {
                    "<name>"
                } else {
                    w
                }
            })
            .take(20)
            .collect::<Vec<_>>()
            .join(" ");
        let key = if err.is_empty() {
            format!("{level} {msg}")
        } else {
            format!("{level} {msg}: {err}")
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn observe(
    recs: &Recs,
    r: &AccessRequest,
    now: Instant,
    approve_tx: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let Some(name) = r.metadata.name.clone() else {
        return;
    };
    let phase = r.status.as_ref().and_then(|s| s.phase);
    let mut recs = recs.lock().expect("recs");
    let rec = recs.entry(name.clone()).or_default();
    match phase {
        Some(Phase::Pending) => {
            rec.pending.get_or_insert(now);
        }
        Some(Phase::AwaitingApproval) if rec.awaiting.is_none() => {
            rec.awaiting = Some(now);
            let _ = approve_tx.send(name);
        }
        Some(Phase::Approved) => {
            rec.approved.get_or_insert(now);
        }
        Some(Phase::Active) => {
            rec.active.get_or_insert(now);
        }
        Some(other) if other.is_terminal() && rec.bad.is_none() => {
            let msg = r
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            rec.bad = Some(format!("{other:?}: {msg}"));
        }
        _ => {}
    }
}

async fn approve(api: &Api<AccessRequest>, name: &str) -> Result<(), String> {
    let patch = json!([{"op": "add", "path": "/status/approvals/-", "value": {"approver": APPROVER, "decision": "Approve"}}]);
    let patch = Patch::<()>::Json(serde_json::from_value(patch).map_err(|e| e.to_string())?);
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn new_request(name: &str, role: &str) -> AccessRequest {
    AccessRequest::new(
        name,
        AccessRequestSpec {
            role: role.into(),
            requester: REQUESTER.into(),
            requester_group: None,
            duration: Some(HOLD.into()),
            reason: "bench".into(),
            ticket: None,
            start_at: None,
            break_glass: false,
        },
    )
}

struct Counts {
    active: usize,
    bad: usize,
}

fn counts(recs: &Recs, names: &[String]) -> Counts {
    let recs = recs.lock().expect("recs");
    let mut c = Counts { active: 0, bad: 0 };
    for n in names {
        match recs.get(n) {
            Some(r) if r.active.is_some() => c.active += 1,
            Some(r) if r.bad.is_some() => c.bad += 1,
            _ => {}
        }
    }
    c
}

/// Waits (bounded by `deadline`) until every request in `names` is `done` (e.g. Active)
/// or failed. Returns false on timeout or if the operator died.
async fn wait_all(
    recs: &Recs,
    names: &[String],
    deadline: Instant,
    operator: u32,
    log: &Path,
    done: fn(&Rec) -> bool,
) -> bool {
    loop {
        let finished = {
            let recs = recs.lock().expect("recs");
            names
                .iter()
                .filter(|n| recs.get(*n).is_some_and(|r| done(r) || r.bad.is_some()))
                .count()
        };
        if finished == names.len() {
            return true;
        }
        if !alive(operator) {
            eprintln!(
                "the operator exited; tail of {}:\n{}",
                log.display(),
                log_tail(log)
            );
            return false;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_active(r: &Rec) -> bool {
    r.active.is_some()
}

async fn with_operator(
    args: &Args,
    n: usize,
    roles: usize,
    moto_alone: Option<&MotoAlone>,
) -> bool {
    let stack = support::stack();
    let kube = &stack.kube;
    let ns = kube.create_namespace("bench").await;
    let aws = deploy(&stack.aws, "bench", args).await;
    let sdk = stack.aws.sdk_config().await;
    // Role 0 is the warm-up's; the N requests use roles 1..=roles.
    let names: Vec<String> = (0..=roles).map(|i| format!("bench-role-{i}")).collect();
    let arns = create_iam_roles(&sdk, &names).await;
    support::succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &access_roles_yaml(&names, &arns),
    ));

    let logdir = tempfile::Builder::new()
        .prefix("aws-jit-bench-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let log = logdir.join("operator.log");
    let operator = start_operator(args, stack, &aws, &ns, &log);
    let procs = Procs::new(vec![
        ("operator (aws-jit controller)", operator.pid),
        ("kube-apiserver", child_named("kube-apiserver")),
        ("etcd", child_named("etcd")),
        ("moto", moto_pid(&stack.aws.endpoint)),
        ("bench (load + watch + approve)", std::process::id()),
    ]);

    let alice: Api<AccessRequest> = Api::namespaced(kube.client(User::Alice).await, &ns);
    let carol: Api<AccessRequest> = Api::namespaced(kube.client(User::Carol).await, &ns);
    let admin: Api<AccessRequest> = Api::namespaced(kube.client(User::Admin).await, &ns);
    let recs: Recs = Arc::new(Mutex::new(HashMap::new()));
    let deadline = Instant::now() + Duration::from_secs(args.deadline());

    // The watch, and the auto-approver it feeds.
    let (approve_tx, mut approve_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = {
        let recs = recs.clone();
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut events = watcher::watcher(admin, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                match ev {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => {
                        observe(&recs, &r, now, &approve_tx)
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("watch: {e}"),
                }
            }
        })
    };
    let approve_errors = Arc::new(AtomicUsize::new(0));
    let approve_tries = Arc::new(AtomicUsize::new(0));
    let approver = {
        let (recs, carol, errors, tries) = (
            recs.clone(),
            carol.clone(),
            approve_errors.clone(),
            approve_tries.clone(),
        );
        let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
        tokio::spawn(async move {
            while let Some(name) = approve_rx.recv().await {
                let (recs, carol, errors, gate, tries) = (
                    recs.clone(),
                    carol.clone(),
                    errors.clone(),
                    gate.clone(),
                    tries.clone(),
                );
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("semaphore");
                    recs.lock()
                        .expect("recs")
                        .entry(name.clone())
                        .or_default()
                        .approve = Some(Instant::now());
                    // A vote is refused only while status.approvals does not exist yet,
                    // which AwaitingApproval rules out; a few tries cover a blip.
                    for attempt in 1..=3 {
                        tries.fetch_add(1, Ordering::Relaxed);
                        match approve(&carol, &name).await {
                            Ok(()) => return,
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                eprintln!("approve {name} (try {attempt}): {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(30), synced_rx)
        .await
        .expect("the watch to list the namespace")
        .expect("watch task");

    // Warm-up: one request through, so the operator's watches and clients are up.
    let warm = vec!["warmup".to_string()];
    recs.lock()
        .expect("recs")
        .entry("warmup".into())
        .or_default()
        .apply = Some(Instant::now());
    alice
        .create(&PostParams::default(), &new_request("warmup", &names[0]))
        .await
        .expect("create the warm-up request");
    let warm_deadline = Instant::now() + Duration::from_secs(120);
    if !wait_all(&recs, &warm, warm_deadline, operator.pid, &log, is_active).await
        || counts(&recs, &warm).active != 1
    {
        eprintln!(
            "the warm-up request did not become Active: {:?}\noperator log {}:\n{}",
            recs.lock().expect("recs").get("warmup"),
            log.display(),
            log_tail(&log)
        );
        return false;
    }
    let warm_rec = recs
        .lock()
        .expect("recs")
        .get("warmup")
        .cloned()
        .unwrap_or_default();
    let warm_tries = approve_tries.load(Ordering::Relaxed);

    // The run.
    let request_names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
    let metrics_before = scrape(kube);
    let aws_before = aws_now(operator).await;
    let load0 = loadavg();
    let before = procs.snapshot();
    procs.reset_peaks();
    let t0 = Instant::now();
    let create_errors = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut creates = tokio::task::JoinSet::new();
    for (i, name) in request_names.iter().enumerate() {
        let (alice, recs, gate, errors) = (
            alice.clone(),
            recs.clone(),
            gate.clone(),
            create_errors.clone(),
        );
        let (name, role) = (name.clone(), names[1 + i % roles].clone());
        creates.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            recs.lock()
                .expect("recs")
                .entry(name.clone())
                .or_default()
                .apply = Some(Instant::now());
            if let Err(e) = alice
                .create(&PostParams::default(), &new_request(&name, &role))
                .await
            {
                errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("create {name}: {e}");
            }
        });
    }
    while creates.join_next().await.is_some() {}
    let created_in = t0.elapsed();
    let complete = wait_all(
        &recs,
        &request_names,
        deadline,
        operator.pid,
        &log,
        is_active,
    )
    .await;
    let last_active = recs
        .lock()
        .expect("recs")
        .values()
        .filter_map(|r| r.active)
        .max()
        .unwrap_or_else(Instant::now);
    let wall = last_active.saturating_duration_since(t0);
    // Let the last status writes and Events land before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = procs.snapshot();
    let load1 = loadavg();
    let metrics_after = scrape(kube);
    let aws_after = aws_now(operator).await;
    let run_wall = t0.elapsed();

    // Held and idle: every grant held, nothing else happening. A fixed window is what is
    // measured here (a rate over time), not a wait for something to happen.
    let steady_metrics = scrape(kube);
    let steady_aws = aws_now(operator).await;
    let steady_before = procs.snapshot();
    let steady_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let steady_after = procs.snapshot();
    let steady_metrics_after = scrape(kube);
    let steady_aws_after = aws_now(operator).await;
    let steady_wall = steady_t0.elapsed();
    watch.abort();
    approver.abort();

    // The report.
    let recs_now = recs.lock().expect("recs").clone();
    let ours: Vec<&Rec> = request_names
        .iter()
        .filter_map(|n| recs_now.get(n))
        .collect();
    let span = |a: fn(&Rec) -> Option<Instant>, b: fn(&Rec) -> Option<Instant>| {
        ours.iter()
            .filter_map(|r| Some(b(r)?.saturating_duration_since(a(r)?)))
            .collect::<Vec<_>>()
    };
    let c = counts(&recs, &request_names);
    let mut out = String::new();
    out.push_str(&format!(
        "### The operator (N = {n}, {roles} roles, poll interval {}, release build)\n\n\
         {} of {n} requests Active, {} in another phase; all created in {:.1} s ({} at a time), \
         the last Active {:.1} s after the first create: {} requests/s end to end. \
         {} create errors, {} approval retries. Warm-up request (not counted): \
         apply→AwaitingApproval {} ms, approve→Active {} ms. Machine load average (1/5/15 min) \
         {load0} at the first create, {load1} at the end.\n\n",
        args.poll_interval
            .as_deref()
            .unwrap_or("the binary's default"),
        c.active,
        c.bad,
        created_in.as_secs_f64(),
        args.parallel,
        wall.as_secs_f64(),
        if c.active > 0 {
            format!("{:.1}", c.active as f64 / wall.as_secs_f64())
        } else {
            "no".into()
        },
        create_errors.load(Ordering::Relaxed),
        approve_errors.load(Ordering::Relaxed),
        warm_rec
            .awaiting
            .zip(warm_rec.apply)
            .map(|(b, a)| b.duration_since(a).as_millis())
            .unwrap_or(0),
        warm_rec
            .active
            .zip(warm_rec.approve)
            .map(|(b, a)| b.duration_since(a).as_millis())
            .unwrap_or(0),
    ));
    out.push_str(LATENCY_HEADER);
    type Mark = fn(&Rec) -> Option<Instant>;
    let rows: [(&str, Mark, Mark); 7] = [
        ("**apply → AwaitingApproval**", |r| r.apply, |r| r.awaiting),
        ("**approve → Active**", |r| r.approve, |r| r.active),
        (
            "apply → Pending (execution started)",
            |r| r.apply,
            |r| r.pending,
        ),
        ("Pending → AwaitingApproval", |r| r.pending, |r| r.awaiting),
        (
            "AwaitingApproval seen → approval sent (bench)",
            |r| r.awaiting,
            |r| r.approve,
        ),
        ("approve → Approved", |r| r.approve, |r| r.approved),
        ("Approved → Active", |r| r.approved, |r| r.active),
    ];
    for (label, from, to) in rows {
        out.push_str(&latency_row(label, span(from, to)));
    }

    let d = delta(&metrics_before, &metrics_after);
    let w = writes(&d, n);
    // Every create is one POST (refused ones too); every approval try one PATCH.
    let bench_writes = (n + approve_tries.load(Ordering::Relaxed) - warm_tries) as f64;
    out.push_str(&format!(
        "\napiserver write requests (`apiserver_request_total`, verbs {}), from the first create to 3 s after \
         the last Active:\n\n{}\n\
         | per AccessRequest lifecycle (apply → Active) | writes |\n| --- | ---: |\n\
         | all lifecycle writes (accessrequests, their status, secrets, events) | {:.2} |\n\
         | of which the bench's own (create as alice, approval as carol) | {:.2} |\n\
         | **the operator's** | **{:.2}** |\n\
         | background (not per request; whole window) | {:.0} total |\n",
        WRITE_VERBS.join("/"),
        w.table,
        w.lifecycle_total / n as f64,
        bench_writes / n as f64,
        (w.lifecycle_total - bench_writes) / n as f64,
        w.other_total,
    ));
    let (reads_table, reads_total) = reads(&d, n);
    out.push_str(&format!(
        "\nand the reads (GET/LIST/WATCH) in the same window. The bench's own reads among \
         them: its one AccessRequest watch (a WATCH is counted when it ends; the watcher \
         reopens it every 290 s or so) and its /metrics scrapes (shown apart):\n\n{reads_table}\n\
         | per AccessRequest lifecycle (apply → Active) | reads |\n| --- | ---: |\n\
         | **the operator's** (resource reads; the bench's watch reopenings included) | **{:.2}** |\n",
        reads_total / n as f64
    ));
    let aws_run = aws_before
        .as_ref()
        .zip(aws_after.as_ref())
        .map(|(b, a)| aws_delta(b, a));
    match &aws_run {
        Some(d) => out.push_str(&format!(
            "\nThe operator's AWS calls (`aws_jit_aws_calls_total{{service,api}}` from its own \
             /metrics: every attempt, retries included) in the same window, per request \
             lifecycle (every API divided by N, so ReceiveMessage's long polls are amortised \
             over the requests):\n\n{}",
            aws_table(d, n as f64, "per request")
        )),
        None => {
            out.push_str("\n**The operator's /metrics could not be read: no AWS call figures.**\n")
        }
    }
    out.push_str(&format!(
        "\nProcesses, first create → 3 s after the last Active ({:.1} s):\n\n",
        run_wall.as_secs_f64()
    ));
    out.push_str(&procs.table(&before, &after, run_wall, n));
    if let Some(alone) = moto_alone {
        let moto_cpu = after[3].ticks.saturating_sub(before[3].ticks) as f64 / clk_tck();
        out.push_str(&format!(
            "\nmoto: {:.1} CPU s for this run ({:.1} ms per request, over {:.1} s) vs {:.1} CPU s alone \
             ({:.1} ms per execution, over {:.1} s).\n",
            moto_cpu,
            moto_cpu * 1000.0 / n as f64,
            run_wall.as_secs_f64(),
            alone.cpu_s,
            alone.cpu_s * 1000.0 / n as f64,
            alone.wall.as_secs_f64(),
        ));
    }
    out.push_str(&format!(
        "\n{}, {} grants held (warm-up included), {:.0} s window: cores used\n\n| process | avg cores |\n| --- | ---: |\n",
        if complete { "Steady state" } else { "After the deadline (not a steady state)" },
        c.active + 1,
        steady_wall.as_secs_f64()
    ));
    out.push_str(&procs.cpu_rates(&steady_before, &steady_after, steady_wall));
    let minutes = steady_wall.as_secs_f64() / 60.0;
    let steady_cpu_ms_per_min =
        steady_after[0].ticks.saturating_sub(steady_before[0].ticks) as f64 / clk_tck() * 1000.0
            / minutes;
    let aws_steady = steady_aws
        .as_ref()
        .zip(steady_aws_after.as_ref())
        .map(|(b, a)| aws_delta(b, a));
    out.push_str(&format!(
        "\nThe operator: {steady_cpu_ms_per_min:.0} CPU ms per minute; its AWS calls per minute \
         in that window (target: only the request and work queues' ReceiveMessage long polls), \
         in all and per held grant:\n\n"
    ));
    let held_grants = (c.active + 1) as f64;
    match &aws_steady {
        Some(d) => {
            let per_min: AwsCalls = d.iter().map(|(k, v)| (k.clone(), v / minutes)).collect();
            out.push_str(
                &aws_table(&per_min, held_grants, "per minute per held grant")
                    .replace("| calls |", "| calls per minute |"),
            );
        }
        None => out.push_str("**The operator's /metrics could not be read.**\n"),
    }
    out.push_str("\nand apiserver requests in that window:\n\n");
    out.push_str(&rates(
        &delta(&steady_metrics, &steady_metrics_after),
        steady_wall,
    ));
    // The summary: the operator beside moto alone, ready to paste.
    let operator_cpu_ms =
        after[0].ticks.saturating_sub(before[0].ticks) as f64 / clk_tck() * 1000.0 / n as f64;
    let throughput = c.active as f64 / wall.as_secs_f64();
    out.push_str(&summary(&SummaryInput {
        n,
        alone: moto_alone,
        throughput,
        to_awaiting: span(|r| r.apply, |r| r.awaiting),
        to_active: span(|r| r.approve, |r| r.active),
        cpu_ms: operator_cpu_ms,
        writes: (w.lifecycle_total - bench_writes) / n as f64,
        reads: reads_total / n as f64,
        aws: aws_run.as_ref(),
        steady_aws: aws_steady.as_ref(),
        steady_minutes: minutes,
        held: held_grants,
        steady_cpu_ms_per_min,
    }));
    let lines = log_summary(&log);
    if !lines.is_empty() {
        out.push_str("\nThe operator's log lines (whole run, warm-up included):\n\n| count | level, message: error (first words) |\n| ---: | --- |\n");
        for (m, k) in &lines {
            out.push_str(&format!("| {k} | {} |\n", m.replace('|', "\\|")));
        }
    }
    if !complete {
        let mut stuck: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &ours {
            let at = if r.active.is_some() {
                "Active"
            } else if r.bad.is_some() {
                "failed"
            } else if r.approved.is_some() {
                "Approved"
            } else if r.approve.is_some() {
                "approval sent"
            } else if r.awaiting.is_some() {
                "AwaitingApproval"
            } else if r.pending.is_some() {
                "Pending"
            } else {
                "created, no phase"
            };
            *stuck.entry(at).or_insert(0) += 1;
        }
        out.push_str(&format!(
            "\n**Incomplete: not every request reached Active within {} s.** Where they are: {stuck:?}\n",
            args.deadline()
        ));
    }
    let bad: Vec<&String> = ours.iter().filter_map(|r| r.bad.as_ref()).take(5).collect();
    if !bad.is_empty() {
        out.push_str(&format!(
            "\nRequests that ended elsewhere (first 5): {bad:?}\n"
        ));
    }
    println!("{out}");
    eprintln!("operator log: {}", log.display());
    let ok = complete && c.bad == 0;
    // An incomplete run keeps the operator's log for a look afterwards.
    if ok && std::env::var_os("AWS_JIT_KEEP_STACK").is_none() {
        support::procs::remove_at_exit(logdir);
    }
    ok
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.size() == 0 || args.parallel == 0 || args.create_parallel == 0 {
        eprintln!("bench: N (or --existing), --parallel and --create-parallel must be positive");
        return std::process::ExitCode::from(2);
    }
    let started = Instant::now();
    let stack = support::stack();
    eprintln!(
        "local stack up in {:.1}s: kube-apiserver {}, moto {}",
        started.elapsed().as_secs_f64(),
        stack.kube.server(),
        stack.aws.endpoint
    );
    let machine = machine();
    if let Some(total) = args.existing {
        println!(
            "## {total} existing AccessRequests: cold start and leader takeover\n\n{machine}\n"
        );
        let ok = existing::run(&args, total).await;
        return if ok {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let n = args.size();
    let per_role = grants_per_role(&requester_arn());
    let roles = n.div_ceil(per_role);
    println!(
        "## N = {n}\n\n{machine} Every request is alice's, for {HOLD}, approved by carol \
         (approvalsRequired 1). A trust policy holds at most {per_role} of these grants under IAM's \
         2048-character limit, so the requests are spread round-robin over {roles} IAM roles, one \
         AccessRole each. Both phases deploy the template with WorkTaskTimeoutSeconds {}.\n",
        args.work_task_timeout,
    );
    let alone = if args.skip_moto_alone {
        None
    } else {
        let a = moto_alone(&args, n, roles).await;
        println!("{}", a.report);
        Some(a)
    };
    let ok = with_operator(&args, n, roles, alone.as_ref()).await;
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The machine the figures come from, and how busy it is.
fn machine() -> String {
    format!(
        "Machine: {} cores; {} MiB RAM; load average (1/5/15 min) {} at the start.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0)
            / 1024,
        loadavg(),
    )
}

// ---------------------------------------------------------------------------------------
// --existing M: M AccessRequests already there, a cold start and a leader takeover.

mod existing {
    use super::*;
    use aws_jit::crd::{
        AccessRequestStatus, Approval, ApprovalChannel, Decision, FINALIZER, Revocation,
    };
    use aws_jit::policy::decide;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ListParams;

    /// The ended phases, in turn: what a busy cluster's audit trail holds.
    const ENDED: [Phase; 3] = [Phase::Expired, Phase::Denied, Phase::Revoked];
    /// One ended request in this many has no finalizer (released by `aws-jit drain`).
    const DRAINED_EVERY: usize = 10;
    /// The quiet window: this long with no more reconciles than open requests, and the
    /// operator using under a tenth of a core.
    const QUIET: Duration = Duration::from_secs(5);

    /// The status an ended request has: the conditions the controller writes on its way
    /// through the phases (so it is in today's terms and nothing rewrites it), votes,
    /// times, and an execution ARN that names no execution (any AWS call for it shows).
    fn ended_status(phase: Phase, execution_arn: String) -> AccessRequestStatus {
        let t = |ago: i64| Time(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(ago));
        let path: &[Phase] = match phase {
            Phase::Denied => &[Phase::Pending, Phase::AwaitingApproval, Phase::Denied],
            _ => &[
                Phase::Pending,
                Phase::AwaitingApproval,
                Phase::Approved,
                Phase::Active,
                phase,
            ],
        };
        let message = match phase {
            Phase::Denied => format!("denied by {APPROVER}"),
            Phase::Revoked => format!("revoked by {REQUESTER}"),
            _ => "access expired".to_owned(),
        };
        let mut conditions = Vec::new();
        for p in path {
            conditions = decide::conditions_for(&conditions, *p, &message, Some(1), &t(2));
        }
        let granted = phase != Phase::Denied;
        AccessRequestStatus {
            phase: Some(phase),
            conditions,
            observed_generation: Some(1),
            execution_arn: Some(execution_arn),
            approvals: Some(vec![Approval {
                approver: APPROVER.into(),
                decision: if granted {
                    Decision::Approve
                } else {
                    Decision::Deny
                },
                group: None,
                comment: None,
                time: Some(t(3)),
                via: ApprovalChannel::Kubectl,
            }]),
            revocations: Some(if phase == Phase::Revoked {
                vec![Revocation {
                    requested_by: REQUESTER.into(),
                    group: None,
                    reason: Some("done".into()),
                    time: Some(t(2)),
                }]
            } else {
                Vec::new()
            }),
            granted_at: granted.then(|| t(3)),
            expires_at: granted.then(|| t(2)),
            revoked_at: granted.then(|| t(2)),
            message: Some(message),
            ..Default::default()
        }
    }

    /// Phase counts of the namespace's requests (one LIST).
    async fn phases(api: &Api<AccessRequest>) -> Result<BTreeMap<String, usize>, String> {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list: {e}"))?;
        let mut out = BTreeMap::new();
        for r in list.items {
            let p = r
                .status
                .and_then(|s| s.phase)
                .map_or("(none)".to_owned(), |p| format!("{p:?}"));
            *out.entry(p).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// What a start (cold or takeover) reached and when.
    struct Synced {
        /// The Lease held.
        leading: Duration,
        /// Every request in the controller's cache (`aws_jit_requests` sums to M).
        listed: Duration,
        /// Every request holding the finalizer reconciled at least once, then quiet.
        quiet: Duration,
        reconciles: f64,
        metrics: String,
    }

    /// Waits (bounded by `deadline`) for the operator to lead, hold every request in its
    /// cache, reconcile each finalized one at least once, and then stay quiet for
    /// [`QUIET`]. Err says where it stopped.
    #[allow(clippy::too_many_arguments)]
    async fn wait_synced(
        op: Operator,
        from: Instant,
        total: usize,
        finalized: usize,
        open: usize,
        deadline: Instant,
        log: &Path,
    ) -> Result<Synced, String> {
        let (mut leading, mut listed) = (None, None);
        let mut window: Option<(Instant, f64, ProcSample)> = None;
        let mut last = String::from("no scrape yet");
        loop {
            if !alive(op.pid) {
                return Err(format!(
                    "the operator exited; tail of {}:\n{}",
                    log.display(),
                    log_tail(log)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("not synced before the deadline: {last}"));
            }
            match operator_metrics(op).await {
                Err(e) => last = e,
                Ok(text) => {
                    let now = Instant::now();
                    let leader = prometheus_sum(&text, "aws_jit_leader");
                    let cached = prometheus_sum(&text, "aws_jit_requests");
                    let reconciles = prometheus_sum(&text, "aws_jit_reconciles_total");
                    last = format!(
                        "leader {leader}, {cached} of {total} requests cached, {reconciles} reconciles \
                         (of {finalized} finalized requests)"
                    );
                    if leader >= 1.0 {
                        leading.get_or_insert(now);
                    }
                    if leader >= 1.0 && cached as usize >= total {
                        listed.get_or_insert(now);
                    }
                    if listed.is_some() && reconciles as usize >= finalized {
                        let cpu = sample(op.pid);
                        match window {
                            Some((t, r0, c0)) if now.duration_since(t) >= QUIET => {
                                let cores = cpu.ticks.saturating_sub(c0.ticks) as f64
                                    / clk_tck()
                                    / now.duration_since(t).as_secs_f64();
                                if reconciles - r0 <= open as f64 && cores < 0.1 {
                                    return Ok(Synced {
                                        leading: leading.unwrap_or(now).duration_since(from),
                                        listed: listed.unwrap_or(now).duration_since(from),
                                        quiet: now.duration_since(from),
                                        reconciles,
                                        metrics: text,
                                    });
                                }
                                last.push_str(&format!(
                                    "; not quiet: {} reconciles and {cores:.2} cores in the last {:.0} s",
                                    reconciles - r0,
                                    now.duration_since(t).as_secs_f64()
                                ));
                                window = Some((now, reconciles, cpu));
                            }
                            Some(_) => {}
                            None => window = Some((now, reconciles, cpu)),
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits (bounded) for a process we signalled to end.
    async fn wait_exit(pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    fn signal(pid: u32, sig: i32) {
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// The figures of one start, as a markdown section.
    #[allow(clippy::too_many_arguments)]
    fn start_report(
        title: &str,
        synced: &Synced,
        cpu_s: f64,
        at_quiet: ProcSample,
        peak_kb: u64,
        aws: &AwsCalls,
        api: &Counters,
        total: usize,
        open: usize,
    ) -> String {
        let mut s = format!(
            "### {title}\n\n\
             | figure | value |\n| --- | ---: |\n\
             | leading after, s | {:.1} |\n\
             | every request in the cache after, s | {:.1} |\n\
             | synced and quiet after, s (every finalized request reconciled, then {} s quiet) | {:.1} |\n\
             | reconciles until then | {:.0} |\n\
             | **RSS after sync, MiB** | **{:.1}** |\n\
             | peak RSS (sampled), MiB / VmHWM, MiB | {:.1} / {:.1} |\n\
             | **CPU s until synced** | **{cpu_s:.2}** |\n\
             | CPU ms per existing request | {:.3} |\n\
             | **AWS calls until synced, all** | **{:.0}** |\n\
             | of which Step Functions (open requests: {open}) | {:.0} |\n\n",
            synced.leading.as_secs_f64(),
            synced.listed.as_secs_f64(),
            QUIET.as_secs(),
            synced.quiet.as_secs_f64(),
            synced.reconciles,
            at_quiet.rss_kb as f64 / 1024.0,
            peak_kb.max(at_quiet.rss_kb) as f64 / 1024.0,
            at_quiet.hwm_kb as f64 / 1024.0,
            cpu_s * 1000.0 / total as f64,
            aws_total(aws),
            aws.iter()
                .filter(|((service, _), _)| service == "SFN")
                .fold(0.0, |a, (_, v)| a + v),
        );
        s.push_str("AWS calls by API (`aws_jit_aws_calls_total`):\n\n");
        s.push_str(&aws_table(aws, total as f64, "per existing request"));
        let w = writes(api, total);
        s.push_str(&format!(
            "\napiserver writes in that window (every replica and the bench's scrapes; the bench \
             writes nothing):\n\n{}\nand reads:\n\n{}\n",
            w.table,
            reads(api, total).0
        ));
        s
    }

    pub async fn run(args: &Args, total: usize) -> bool {
        let open = args.open.unwrap_or((total / 100).max(1)).min(total);
        let terminal = total - open;
        let stack = support::stack();
        let kube = &stack.kube;
        let ns = kube.create_namespace("bench").await;
        let aws = deploy(&stack.aws, "bench", args).await;
        let sdk = stack.aws.sdk_config().await;
        // The open requests never reach a grant: one role is enough.
        let names = vec!["bench-role-0".to_string()];
        let arns = create_iam_roles(&sdk, &names).await;
        support::succeeded(&kube.kubectl_stdin(
            User::Admin,
            &["apply", "-f", "-"],
            &access_roles_yaml(&names, &arns),
        ));
        let logdir = tempfile::Builder::new()
            .prefix("aws-jit-bench-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let alice: Api<AccessRequest> = Api::namespaced(kube.client(User::Alice).await, &ns);
        let admin: Api<AccessRequest> = Api::namespaced(kube.client(User::Admin).await, &ns);
        let operator_api: Api<AccessRequest> =
            Api::namespaced(kube.client(User::Operator).await, &ns);
        let deadline = Instant::now() + Duration::from_secs(args.deadline());
        let mut out = String::new();

        // 1. The open requests, each with a real execution waiting for its approval: a
        //    first operator takes them to AwaitingApproval and stops (releasing its Lease).
        let log0 = logdir.join("operator-setup.log");
        let op0 = start_operator(args, stack, &aws, &ns, &log0);
        let t_open = Instant::now();
        let open_names: Vec<String> = (0..open).map(|i| format!("open-{i:05}")).collect();
        let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
        let mut creates = tokio::task::JoinSet::new();
        for name in &open_names {
            let (alice, gate, name, role) =
                (alice.clone(), gate.clone(), name.clone(), names[0].clone());
            creates.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                alice
                    .create(&PostParams::default(), &new_request(&name, &role))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("create {name}: {e}"))
            });
        }
        while let Some(r) = creates.join_next().await {
            if let Ok(Err(e)) = r {
                eprintln!("{e}");
                return false;
            }
        }
        loop {
            let seen = match phases(&admin).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    BTreeMap::new()
                }
            };
            if seen.get("AwaitingApproval").copied().unwrap_or(0) >= open {
                break;
            }
            if !alive(op0.pid) || Instant::now() >= deadline {
                eprintln!(
                    "**Incomplete: the {open} open requests did not all reach AwaitingApproval** \
                     (phases: {seen:?}); operator log {}:\n{}",
                    log0.display(),
                    log_tail(&log0)
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        signal(op0.pid, libc::SIGTERM);
        if !wait_exit(op0.pid, Duration::from_secs(60)).await {
            eprintln!("the set-up operator did not stop within 60 s of SIGTERM");
            return false;
        }
        let open_took = t_open.elapsed();

        // 2. The ended requests, straight in the apiserver: created as admin, their status
        //    written as the operator would have written it.
        let t_create = Instant::now();
        let machine_arn = aws.state_machine_arn.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(args.create_parallel));
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..terminal {
            let (admin, op_api, gate) = (admin.clone(), operator_api.clone(), gate.clone());
            let (role, machine_arn) = (names[0].clone(), machine_arn.clone());
            creates.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                let name = format!("ended-{i:05}");
                let mut r = new_request(&name, &role);
                if i % DRAINED_EVERY != 0 {
                    r.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
                }
                let created = admin
                    .create(&PostParams::default(), &r)
                    .await
                    .map_err(|e| format!("create {name}: {e}"))?;
                let uid = created.metadata.uid.unwrap_or_default();
                let arn = format!(
                    "{}:{}",
                    machine_arn.replacen(":stateMachine:", ":execution:", 1),
                    aws_jit::aws::sfn::execution_name(&uid)
                );
                let status = ended_status(ENDED[i % ENDED.len()], arn);
                op_api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("status of {name}: {e}"))
            });
        }
        let mut create_errors = 0;
        while let Some(r) = creates.join_next().await {
            if let Ok(Err(e)) = r {
                create_errors += 1;
                if create_errors <= 5 {
                    eprintln!("{e}");
                }
            }
        }
        let create_took = t_create.elapsed();
        let finalized = open + terminal - terminal.div_ceil(DRAINED_EVERY);
        let before_start = match phases(&admin).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return false;
            }
        };
        if create_errors > 0 || before_start.values().sum::<usize>() != total {
            eprintln!(
                "**Incomplete: {create_errors} creates failed; the namespace holds {before_start:?}, \
                 not {total} requests**"
            );
            return false;
        }
        out.push_str(&format!(
            "{total} AccessRequests in one namespace: {open} open (AwaitingApproval, each with a \
             real execution waiting for its approval; taken there by a first operator in {:.1} s, \
             which then stopped on SIGTERM and released its Lease) and {terminal} ended ({}), \
             created as admin and their status written as the operator ({} at a time, {:.1} s); \
             one ended request in {DRAINED_EVERY} has no finalizer (as after `aws-jit drain`), \
             the rest keep it. Every ended request names an execution that does not exist, so \
             any AWS call made for one shows. Phases before the start: {before_start:?}.\n\n",
            open_took.as_secs_f64(),
            ENDED.map(|p| format!("{p:?}")).join("/"),
            args.create_parallel,
            create_took.as_secs_f64(),
        ));

        // 3. Cold start.
        let log_a = logdir.join("operator-a.log");
        let api0 = scrape(kube);
        let load0 = loadavg();
        let t_a = Instant::now();
        let op_a = start_operator(args, stack, &aws, &ns, &log_a);
        let procs_a = Procs::new(vec![("operator A", op_a.pid)]);
        let synced_a = match wait_synced(op_a, t_a, total, finalized, open, deadline, &log_a).await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("**Incomplete: the cold start did not sync**: {e}");
                println!("{out}");
                return false;
            }
        };
        let a_at = sample(op_a.pid);
        let api1 = scrape(kube);
        let aws_a = aws_calls(&synced_a.metrics);
        let api_a = delta(&api0, &api1);
        out.push_str(&start_report(
            &format!(
                "Cold start (operator A, from its exec; load average {load0} before, {} after)",
                loadavg()
            ),
            &synced_a,
            a_at.ticks as f64 / clk_tck(),
            a_at,
            procs_a.peak(op_a.pid),
            &aws_a,
            &api_a,
            total,
            open,
        ));

        // 4. Leader takeover: B starts as a standby, A stops, B takes over.
        let log_b = logdir.join("operator-b.log");
        let t_b = Instant::now();
        let op_b = start_operator(args, stack, &aws, &ns, &log_b);
        let procs_b = Procs::new(vec![("operator B", op_b.pid)]);
        let standby = loop {
            if let Ok(text) = operator_metrics(op_b).await {
                break text;
            }
            if !alive(op_b.pid) || Instant::now() >= deadline {
                eprintln!(
                    "**Incomplete: the second replica never served /metrics**; log {}:\n{}",
                    log_b.display(),
                    log_tail(&log_b)
                );
                println!("{out}");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let b_standby_at = t_b.elapsed();
        let b_before = sample(op_b.pid);
        let aws_b0 = aws_calls(&standby);
        let api2 = scrape(kube);
        let t_kill = Instant::now();
        signal(op_a.pid, libc::SIGTERM);
        procs_b.reset_peaks();
        let synced_b =
            match wait_synced(op_b, t_kill, total, finalized, open, deadline, &log_b).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("**Incomplete: the takeover did not sync**: {e}");
                    println!("{out}");
                    return false;
                }
            };
        let a_stopped = !alive(op_a.pid);
        let b_at = sample(op_b.pid);
        let api3 = scrape(kube);
        let aws_b = aws_delta(&aws_b0, &aws_calls(&synced_b.metrics));
        let api_b = delta(&api2, &api3);
        out.push_str(&format!(
            "Operator B started while A led; it served /metrics (standby) {:.1} s after its exec, \
             having used {:.2} CPU s and made {:.0} AWS calls, RSS {:.1} MiB. Then A got SIGTERM \
             (A {} within the window). From that SIGTERM:\n\n",
            b_standby_at.as_secs_f64(),
            b_before.ticks as f64 / clk_tck(),
            aws_total(&aws_b0),
            b_before.rss_kb as f64 / 1024.0,
            if a_stopped {
                "exited"
            } else {
                "had not exited"
            },
        ));
        out.push_str(&start_report(
            &format!(
                "Leader takeover (operator B, from A's SIGTERM; load average {})",
                loadavg()
            ),
            &synced_b,
            b_at.ticks.saturating_sub(b_before.ticks) as f64 / clk_tck(),
            b_at,
            procs_b.peak(op_b.pid),
            &aws_b,
            &api_b,
            total,
            open,
        ));

        // 5. Nothing moved: the ended stay ended, the open stay open.
        let after = phases(&admin).await.unwrap_or_default();
        let ok = after == before_start;
        out.push_str(&format!(
            "\nPhases after the takeover: {after:?}{}\n",
            if ok {
                " (as before the start)."
            } else {
                " — **changed since before the start**."
            }
        ));
        for (label, log) in [("A", &log_a), ("B", &log_b)] {
            let lines = log_summary(log);
            if !lines.is_empty() {
                out.push_str(&format!(
                    "\nOperator {label}'s log lines:\n\n| count | level, message: error (first words) |\n| ---: | --- |\n"
                ));
                for (m, k) in &lines {
                    out.push_str(&format!("| {k} | {} |\n", m.replace('|', "\\|")));
                }
            }
        }
        out.push_str(&summary_existing(
            (total, terminal, open),
            [
                Start {
                    synced: &synced_a,
                    at: a_at,
                    cpu_s: a_at.ticks as f64 / clk_tck(),
                    aws: &aws_a,
                    api: &api_a,
                },
                Start {
                    synced: &synced_b,
                    at: b_at,
                    cpu_s: b_at.ticks.saturating_sub(b_before.ticks) as f64 / clk_tck(),
                    aws: &aws_b,
                    api: &api_b,
                },
            ],
        ));
        println!("{out}");
        eprintln!("operator logs: {}", logdir.display());
        if ok && std::env::var_os("AWS_JIT_KEEP_STACK").is_none() {
            support::procs::remove_at_exit(logdir);
        }
        ok
    }

    /// One start's figures, for the summary.
    struct Start<'a> {
        synced: &'a Synced,
        at: ProcSample,
        cpu_s: f64,
        aws: &'a AwsCalls,
        api: &'a Counters,
    }

    /// The paste-ready table of the two starts side by side.
    fn summary_existing((total, terminal, open): (usize, usize, usize), s: [Start; 2]) -> String {
        let api = |aws: &AwsCalls, name: &str| -> f64 {
            aws.iter()
                .filter(|((_, api), _)| api == name)
                .fold(0.0, |a, (_, v)| a + v)
        };
        let rw = |c: &Counters| {
            let (mut w, mut refused, mut r) = (0.0, 0.0, 0.0);
            for ((verb, _, resource, _, code), v) in c {
                if resource.is_empty() || (!lifecycle(resource) && resource != "accessroles") {
                    continue;
                }
                if WRITE_VERBS.contains(&verb.as_str()) {
                    w += v;
                    if !code.starts_with('2') {
                        refused += v;
                    }
                } else {
                    r += v;
                }
            }
            (w, refused, r)
        };
        let (a, b) = (&s[0], &s[1]);
        let (wa, wa_refused, ra) = rw(a.api);
        let (wb, wb_refused, rb) = rw(b.api);
        let mut apis: Vec<String> = a
            .aws
            .keys()
            .chain(b.aws.keys())
            .map(|(_, api)| api.clone())
            .chain(["DescribeExecution".to_owned()])
            .collect();
        apis.sort();
        apis.dedup();
        let mut out = format!(
            "\n#### Summary, {total} existing requests ({terminal} ended, {open} open)\n\n\
             | figure | cold start | leader takeover |\n| --- | ---: | ---: |\n\
             | synced and quiet after, s | {:.1} | {:.1} |\n\
             | RSS after sync, MiB | {:.1} | {:.1} |\n\
             | CPU s until synced | {:.2} | {:.2} |\n\
             | apiserver writes on requests, Secrets, Events (of which refused) | {wa:.0} ({wa_refused:.0}) | {wb:.0} ({wb_refused:.0}) |\n\
             | apiserver reads of requests, roles, Secrets, Events | {ra:.0} | {rb:.0} |\n\
             | AWS calls until synced, all | {:.0} | {:.0} |\n",
            a.synced.quiet.as_secs_f64(),
            b.synced.quiet.as_secs_f64(),
            a.at.rss_kb as f64 / 1024.0,
            b.at.rss_kb as f64 / 1024.0,
            a.cpu_s,
            b.cpu_s,
            aws_total(a.aws),
            aws_total(b.aws),
        );
        for name in apis {
            out.push_str(&format!(
                "| AWS calls: {name} | {:.0} | {:.0} |\n",
                api(a.aws, &name),
                api(b.aws, &name)
            ));
        }
        out
    }
}
