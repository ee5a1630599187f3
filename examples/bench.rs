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
    LATENCY_HEADER, ProcSample, alive, clk_tck, latency_row, sample, stat_fields,
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
    /// How many AccessRequests (and, for moto alone, executions).
    n: usize,
    /// Requests created (and approvals sent) at most this many at a time.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// The controller's --poll-interval.
    #[arg(long, default_value = "2s")]
    poll_interval: String,
    /// Deadline of each phase, seconds (default: 600, or 2 s per request when N > 300).
    #[arg(long)]
    deadline: Option<u64>,
    /// Length of the steady-state window (every grant held, nothing else to do), seconds.
    #[arg(long, default_value_t = 20)]
    steady: u64,
    /// Skip the moto-alone phase.
    #[arg(long)]
    skip_moto_alone: bool,
}

impl Args {
    fn deadline(&self) -> u64 {
        self.deadline.unwrap_or(600.max(2 * self.n as u64))
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

/// The other requests (reads) by resource and verb, in all and per AccessRequest.
fn reads(d: &Counters, n: usize) -> String {
    let mut rows: BTreeMap<(String, String), f64> = BTreeMap::new();
    for ((verb, group, resource, sub, _), v) in d {
        if !WRITE_VERBS.contains(&verb.as_str()) {
            *rows
                .entry((resource_name(group, resource, sub), verb.clone()))
                .or_insert(0.0) += v;
        }
    }
    let mut s = String::from(
        "| resource | verb | requests | per AccessRequest |\n| --- | --- | ---: | ---: |\n",
    );
    for ((resource, verb), v) in rows {
        s.push_str(&format!(
            "| {resource} | {verb} | {v:.0} | {:.2} |\n",
            v / n.max(1) as f64
        ));
    }
    s
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
}

async fn moto_alone(args: &Args, roles: usize) -> MotoAlone {
    let n = args.n;
    let moto = tokio::task::spawn_blocking(support::aws::Moto::start)
        .await
        .expect("start a second moto");
    let pid = moto_pid(&moto.endpoint);
    let out = moto.deploy("bench-alone").await;
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

fn start_operator(
    args: &Args,
    stack: &support::Stack,
    aws: &support::aws::AwsOutputs,
    ns: &str,
    log: &Path,
) -> u32 {
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
        .args(["--poll-interval", &args.poll_interval]);
    support::procs::spawn_service(cmd, log.to_path_buf()).expect("start the operator")
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

/// Waits (bounded by `deadline`) until every request in `names` is Active or failed.
/// Returns false on timeout or if the operator died.
async fn wait_all(
    recs: &Recs,
    names: &[String],
    deadline: Instant,
    operator: u32,
    log: &Path,
) -> bool {
    loop {
        let c = counts(recs, names);
        if c.active + c.bad == names.len() {
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

async fn with_operator(args: &Args, roles: usize, moto_alone: Option<&MotoAlone>) -> bool {
    let n = args.n;
    let stack = support::stack();
    let kube = &stack.kube;
    let ns = kube.create_namespace("bench").await;
    let aws = stack.aws.deploy("bench").await;
    let sdk = stack.aws.sdk_config().await;
    // Role 0 is the warm-up's; the N requests use roles 1..=roles.
    let names: Vec<String> = (0..=roles).map(|i| format!("bench-role-{i}")).collect();
    let arns = create_iam_roles(&sdk, &names).await;
    let mut yaml = String::new();
    for (name, arn) in names.iter().zip(&arns) {
        yaml.push_str(&format!(
            "---\napiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {name}\nspec:\n  roleArn: {arn}\n  method: TrustPolicy\n\
             \x20 defaultDuration: {HOLD}\n  maxDuration: 4h\n  approvalTimeout: {HOLD}\n  approvalsRequired: 1\n\
             \x20 requesters: [{{user: {REQUESTER}}}]\n  approvers: [{{user: {APPROVER}}}]\n\
             \x20 principal: {{template: 'arn:aws:iam::{ACCOUNT_ID}:user/{{username}}'}}\n"
        ));
    }
    support::succeeded(&kube.kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml));

    let logdir = tempfile::Builder::new()
        .prefix("aws-jit-bench-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let log = logdir.join("operator.log");
    let operator = start_operator(args, stack, &aws, &ns, &log);
    let procs = Procs::new(vec![
        ("operator (aws-jit controller)", operator),
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
    if !wait_all(&recs, &warm, warm_deadline, operator, &log).await
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
    let complete = wait_all(&recs, &request_names, deadline, operator, &log).await;
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
    let run_wall = t0.elapsed();

    // Steady state: every grant held, nothing else happening.
    let steady_metrics = scrape(kube);
    let steady_before = procs.snapshot();
    let steady_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let steady_after = procs.snapshot();
    let steady_metrics_after = scrape(kube);
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
        args.poll_interval,
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
    out.push_str(&format!(
        "\nand the reads in the same window (every reconcile of a started request reads its \
         token Secret once, after one DescribeExecution to Step Functions):\n\n{}",
        reads(&d, n)
    ));
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
    out.push_str("\nand apiserver requests in that window:\n\n");
    out.push_str(&rates(
        &delta(&steady_metrics, &steady_metrics_after),
        steady_wall,
    ));
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
    assert!(
        args.n > 0 && args.parallel > 0,
        "N and --parallel must be positive"
    );
    let started = Instant::now();
    let stack = support::stack();
    eprintln!(
        "local stack up in {:.1}s: kube-apiserver {}, moto {}",
        started.elapsed().as_secs_f64(),
        stack.kube.server(),
        stack.aws.endpoint
    );
    let per_role = grants_per_role(&requester_arn());
    let roles = args.n.div_ceil(per_role);
    println!(
        "## N = {}\n\nMachine: {} cores; {} MiB RAM. Every request is alice's, for {HOLD}, approved by carol \
         (approvalsRequired 1). A trust policy holds at most {per_role} of these grants under IAM's \
         2048-character limit, so the requests are spread round-robin over {roles} IAM roles, one \
         AccessRole each.\n",
        args.n,
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
    );
    let alone = if args.skip_moto_alone {
        None
    } else {
        let a = moto_alone(&args, roles).await;
        println!("{}", a.report);
        Some(a)
    };
    let ok = with_operator(&args, roles, alone.as_ref()).await;
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
