//! The Slack relay on the real stack: the operator (`crate::controller::Env`) runs
//! requests through the shipped state machine on moto, which writes the alert queue;
//! the relay (`aws_jit::slack::relay`, the code `aws-jit relay` runs) carries them to the
//! Slack stand-in (`support::slack`).
use std::time::Duration;

use aws_jit::crd::{AccessRequest, Phase, SlackMessage};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::controller::Env;
use crate::support::aws::take_messages;
use crate::support::kube::User;
use crate::support::slack::{Call, SlackStandIn, ghost_alert};
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const TOKEN: &str = "xoxb-test-relay";
const ROLE_CHANNEL: &str = "C0ROLE";
const DEFAULT_CHANNEL: &str = "C0DEFAULT";
const WAIT: Duration = Duration::from_secs(90);
const ROLE_SPEC: &str = "  slackChannel: C0ROLE\n  approvers: [{user: carol, slackUserId: U0CAROL}, {user: dave}, {group: sre-leads}]";

/// The relay as a task of the test, stopped gracefully or killed.
struct RelayTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RelayTask {
    fn start(env: &Env, config: aws_jit::slack::relay::Config) -> RelayTask {
        // The relay's log, shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("aws_jit::slack::relay=debug")
            .try_init();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = aws_jit::slack::relay::Relay::new(
            env.kube.clone(),
            aws_sdk_sqs::Client::new(&env.sdk),
            config,
        )
        .expect("relay");
        let handle = tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = rx.await;
                })
                .await;
        });
        RelayTask {
            stop: Some(tx),
            handle,
        }
    }

    /// SIGTERM: the relay finishes what it has and returns.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("the relay returns after shutdown")
            .expect("the relay task did not panic");
    }

    /// A crash: the task is dropped wherever it is.
    fn kill(self) {
        self.handle.abort();
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn config(env: &Env, slack: &SlackStandIn) -> aws_jit::slack::relay::Config {
    let mut c =
        aws_jit::slack::relay::Config::new(&env.aws.alert_queue_url, DEFAULT_CHANNEL, TOKEN);
    c.dead_letter_url = Some(env.aws.alert_dlq_url.clone());
    c.slack_api_url = slack.url.clone();
    c.pacing = Duration::from_millis(50);
    c.failure_mentions = vec!["<!subteam^S0SRE>".into()];
    c.queue_wait = Duration::from_secs(1);
    c.visibility_timeout = Duration::from_secs(4);
    c.retry_base = Duration::from_millis(100);
    c.retry_max = Duration::from_secs(1);
    c.shutdown_grace = Duration::from_secs(10);
    c
}

/// What the relay remembers on the request (`status.slack`).
fn slack_of(r: &AccessRequest) -> SlackMessage {
    r.status
        .as_ref()
        .and_then(|s| s.slack.clone())
        .unwrap_or_default()
}

/// Waits until the request's `status.slack` lists `events` as shown in Slack.
async fn wait_relayed(env: &Env, name: &str, events: &[&str]) -> AccessRequest {
    let want = events.join(",");
    let api = env.requests();
    eventually(&format!("{name} relayed as {want}"), WAIT, || {
        let api = api.clone();
        let want = want.clone();
        async move {
            let r = api.get(name).await.map_err(|e| e.to_string())?;
            let got = slack_of(&r).relayed.join(",");
            if got == want {
                Ok(r)
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await
}

/// The accepted calls about one request: its top-level posts, and the updates and
/// thread replies of its living message `ts`.
fn calls_of(
    slack: &SlackStandIn,
    ns: &str,
    name: &str,
    ts: &str,
) -> (Vec<Call>, Vec<Call>, Vec<Call>) {
    let accepted = slack.accepted();
    let request = format!("`{ns}/{name}`");
    let posts = accepted
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.thread_ts.is_none())
        .filter(|c| c.blocks.to_string().contains(&request))
        .cloned()
        .collect();
    let updates = accepted
        .iter()
        .filter(|c| c.method == "chat.update" && c.ts == ts)
        .cloned()
        .collect();
    let replies = accepted
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.thread_ts.as_deref() == Some(ts))
        .cloned()
        .collect();
    (posts, updates, replies)
}

fn header(c: &Call) -> String {
    c.blocks[0]["text"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn every_step_of_a_request_is_one_living_message_with_thread_replies() {
    let started = std::time::Instant::now();
    let env = Env::new("relay-flow", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));

    env.request(User::Alice, "happy", "  duration: 15s\n  ticket: OPS-7\n");
    env.request(User::Alice, "nope", "");
    env.wait_phase("happy", Phase::AwaitingApproval).await;
    env.wait_phase("nope", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "happy", "Approve");
    env.vote(User::Dave, "nope", "Deny");

    // happy: requested → approved → granted → expired.
    wait_relayed(
        &env,
        "happy",
        &["requested", "approved", "granted", "expired"],
    )
    .await;
    // The relay may be quicker than the operator's status; both end in the same place.
    let r = env.wait_phase("happy", Phase::Expired).await;
    // status.slack is the relay's field alone: the controller's status apply (a full
    // snapshot of its own fields, forced) never claims it, so never reverts or wipes it.
    let owners: Vec<String> = r
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:status/f:slack").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        owners,
        [aws_jit::slack::relay::FIELD_MANAGER],
        "owners of status.slack"
    );
    assert_eq!(slack_of(&r).channel, ROLE_CHANNEL);
    let ts = slack_of(&r).ts;
    let (posts, updates, replies) = calls_of(&slack, &env.ns, "happy", &ts);
    assert_eq!(posts.len(), 1, "one top-level message: {posts:#?}");
    let first = &posts[0];
    assert_eq!(first.channel, ROLE_CHANNEL);
    assert_eq!(first.ts, ts);
    assert_eq!(
        header(first),
        ":hourglass_flowing_sand: AWS access request: awaiting approval"
    );
    let fields = first.blocks[2]["fields"].to_string();
    for needle in ["alice", "OPS-7", "15s", &format!("{}/happy", env.ns)] {
        assert!(fields.contains(needle), "{needle} in {fields}");
    }
    assert!(first.blocks.to_string().contains("*Reason*\\ne2e"));
    // The buttons carry the request's identity, as the interactivity side reads it.
    let actions = &first.blocks[4];
    assert_eq!(actions["type"], "actions");
    assert_eq!(actions["elements"][0]["action_id"], "aws-jit-approve");
    assert_eq!(actions["elements"][1]["action_id"], "aws-jit-deny");
    let value: Value =
        serde_json::from_str(actions["elements"][0]["value"].as_str().expect("value"))
            .expect("JSON");
    assert_eq!(
        value,
        json!({"namespace": env.ns, "name": "happy", "uid": r.uid().expect("uid")})
    );
    let heads: Vec<String> = updates.iter().map(header).collect();
    assert_eq!(
        heads,
        [
            ":white_check_mark: AWS access request: approved, granting",
            ":unlock: AWS access request: active",
            ":lock: AWS access request: expired, access removed",
        ],
        "chat.update per later step, in order"
    );
    assert!(updates.iter().all(|u| u.channel == ROLE_CHANNEL && !u.blocks.to_string().contains("aws-jit-approve")));
    let expires = r
        .status
        .as_ref()
        .and_then(|s| s.expires_at.clone())
        .expect("expiresAt")
        .0;
    let texts: Vec<&str> = replies.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[0], "Approved by *carol*.");
    assert!(
        texts[1].starts_with("Granted (approved by *carol*) until *"),
        "{}",
        texts[1]
    );
    assert!(texts[2].starts_with("Access ended at *"), "{}", texts[2]);
    // The expiry shown is the one in the request's status (same instant, AWS's format).
    let shown: jiff::Timestamp = texts[2]
        .trim_start_matches("Access ended at *")
        .split('*')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("an RFC 3339 instant");
    assert_eq!(shown.as_second(), expires.as_second());

    // nope: requested → denied by dave.
    let r = wait_relayed(&env, "nope", &["requested", "denied"]).await;
    let ts = slack_of(&r).ts;
    let (posts, updates, replies) = calls_of(&slack, &env.ns, "nope", &ts);
    assert_eq!((posts.len(), updates.len(), replies.len()), (1, 1, 1));
    assert_eq!(header(&updates[0]), ":no_entry: AWS access request: denied");
    assert_eq!(replies[0].text, "Denied by *dave*: e2e");

    // Nothing refused, nothing sent twice, and the relay stops when asked.
    assert!(slack.calls().iter().all(Call::ok), "{:#?}", slack.calls());
    assert_eq!(slack.accepted().len(), 4 + 3 + 2 + 1);
    relay.shutdown().await;
    eprintln!("relay flow test took {:?}", started.elapsed());
}

#[tokio::test]
async fn slack_rate_limits_and_outages_lose_and_duplicate_nothing() {
    let env = Env::new("relay-flaky", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    // Slack is rate limiting, then down, from the start.
    slack.rate_limit(2);
    slack.server_error(4);
    let config = config(&env, &slack);
    let metrics = config.metrics.clone();
    let relay = RelayTask::start(&env, config);

    env.request(User::Alice, "flaky", "");
    wait_relayed(&env, "flaky", &["requested"]).await;
    // Then Slack is down for longer than the alert's visibility timeout (4 s here;
    // 15 failures at up to 1 s apart), and rate limiting after that. While the relay
    // retries, the alert stays in flight: its visibility is extended, it never shows
    // up in the queue again (where another replica would take it).
    slack.server_error(15);
    slack.rate_limit(2);
    let outage = std::time::Instant::now();
    env.vote(User::Dave, "flaky", "Deny");
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let in_outage_visible = std::sync::Mutex::new(Vec::<String>::new());
    eventually("Slack to recover", WAIT, || {
        let (sqs, slack, seen, url) = (
            &sqs,
            &slack,
            &in_outage_visible,
            env.aws.alert_queue_url.as_str(),
        );
        async move {
            let pending = slack.failures_pending();
            let failed_on_denied = slack
                .calls()
                .iter()
                .any(|c| c.outcome == "500" && c.method == "chat.update");
            if pending > 0 && failed_on_denied {
                let (visible, in_flight) = queue_counts(sqs, url).await;
                if visible != "0" {
                    seen.lock()
                        .unwrap()
                        .push(format!("visible {visible}, in flight {in_flight}"));
                }
            }
            if pending == 0 {
                Ok(())
            } else {
                Err(format!("{pending} failures to go"))
            }
        }
    })
    .await;
    assert!(
        outage.elapsed() > Duration::from_secs(5),
        "the outage outlasted the visibility timeout: {:?}",
        outage.elapsed()
    );
    assert_eq!(
        in_outage_visible.into_inner().unwrap(),
        Vec::<String>::new()
    );
    let r = wait_relayed(&env, "flaky", &["requested", "denied"]).await;
    let outcomes: Vec<String> = slack.calls().iter().map(|c| c.outcome.clone()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "429").count(),
        4,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "500").count(),
        19,
        "{outcomes:?}"
    );
    let ts = slack_of(&r).ts;
    let (posts, updates, replies) = calls_of(&slack, &env.ns, "flaky", &ts);
    assert_eq!(
        (posts.len(), updates.len(), replies.len()),
        (1, 1, 1),
        "no second post, one update, one reply: {:#?}",
        slack.accepted()
    );
    assert_eq!(slack.accepted().len(), 3);
    relay.shutdown().await;
    // The relay's metrics saw what Slack saw.
    let text = metrics.encode().expect("metrics");
    for line in [
        "aws_jit_slack_rate_limited_total 4",
        "aws_jit_slack_requests_total{method=\"chat.postMessage\",result=\"ok\"} 2",
        "aws_jit_slack_requests_total{method=\"chat.update\",result=\"ok\"} 1",
        "aws_jit_queue_messages_total{queue=\"alert\",result=\"processed\"} 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// (visible, in flight) messages of a queue, as SQS approximates them.
async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes().cloned().unwrap_or_default();
    let get = |k: A| attrs.get(&k).cloned().unwrap_or_default();
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Puts an alert on the stack's alert queue as the state machine does.
async fn send_alert(env: &Env, group: &str, dedup: &str, body: &str) {
    aws_sdk_sqs::Client::new(&env.sdk)
        .send_message()
        .queue_url(&env.aws.alert_queue_url)
        .message_group_id(group)
        .message_deduplication_id(dedup)
        .message_body(body)
        .send()
        .await
        .expect("send an alert");
}

#[tokio::test]
async fn a_refused_alert_goes_to_the_dead_letter_queue_and_the_rest_flows() {
    let env = Env::new("relay-refused", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    slack.refuse_channel(DEFAULT_CHANNEL, "channel_not_found");
    // A request whose role is unknown goes to the default channel, which Slack refuses;
    // and a message that is not an alert at all.
    let refused = ghost_alert("ghost", "arn:aws:iam::123456789012:role/unknown");
    send_alert(&env, "ghost-exec", "ghost-requested", &refused).await;
    send_alert(&env, "junk-exec", "junk", "not an alert").await;
    let config = config(&env, &slack);
    let metrics = config.metrics.clone();
    let relay = RelayTask::start(&env, config);

    env.request(User::Alice, "after", "");
    env.wait_phase("after", Phase::AwaitingApproval).await;
    env.vote(User::Dave, "after", "Deny");
    wait_relayed(&env, "after", &["requested", "denied"]).await;

    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let dlq = env.aws.alert_dlq_url.clone();
    let bodies: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    eventually("both refused alerts in the alert DLQ", WAIT, || {
        let (sqs, dlq) = (sqs.clone(), dlq.clone());
        let bodies = &bodies;
        async move {
            let out = sqs
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            for m in out.messages() {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get(aws_jit::slack::relay::DEAD_LETTER_REASON_ATTRIBUTE))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_string();
                bodies
                    .lock()
                    .unwrap()
                    .push((m.body().unwrap_or_default().to_string(), reason));
                sqs.delete_message()
                    .queue_url(&dlq)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
            }
            let got = bodies.lock().unwrap();
            if got.len() >= 2 {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    let mut bodies = bodies.into_inner().unwrap();
    bodies.sort();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0].0, "not an alert");
    assert!(bodies[0].1.starts_with("not an alert"), "{}", bodies[0].1);
    assert_eq!(bodies[1].0, refused);
    assert_eq!(bodies[1].1, "channel_not_found");
    // Slack saw the refused one once; the queue is empty afterwards.
    let refusals = slack
        .calls()
        .into_iter()
        .filter(|c| c.outcome == "channel_not_found")
        .count();
    assert_eq!(refusals, 1);
    relay.shutdown().await;
    let text = metrics.encode().expect("metrics");
    for line in [
        "aws_jit_queue_messages_total{queue=\"alert\",result=\"dead_lettered\"} 2",
        "aws_jit_slack_requests_total{method=\"chat.postMessage\",result=\"refused\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(
        queue_counts(&sqs, &env.aws.alert_queue_url).await,
        ("0".to_string(), "0".to_string()),
        "nothing left in the alert queue"
    );
}

#[tokio::test]
async fn a_relay_killed_mid_batch_then_restarted_loses_nothing() {
    let env = Env::new("relay-killed", ROLE_SPEC).await;
    let role_arn = aws_jit_role_arn(&env).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let names: Vec<String> = (0..6).map(|i| format!("ghost-{i}")).collect();
    for n in &names {
        send_alert(&env, &format!("{n}-exec"), n, &ghost_alert(n, &role_arn)).await;
    }
    // One channel at one message a second: the batch takes seconds.
    let mut slow = config(&env, &slack);
    slow.pacing = Duration::from_secs(1);
    let relay = RelayTask::start(&env, slow.clone());
    eventually("the first alert in Slack", WAIT, || async {
        let n = slack.accepted().len();
        if n >= 1 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    relay.kill();
    let shown_before = slack.accepted().len();
    assert!(
        shown_before < names.len(),
        "killed mid-batch: {shown_before}"
    );

    let relay = RelayTask::start(&env, slow);
    eventually("every alert in Slack after the restart", WAIT, || async {
        let accepted = slack.accepted();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| {
                !accepted
                    .iter()
                    .any(|c| c.blocks.to_string().contains(&format!("`nowhere/{n}`")))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    // A request that is gone still finds its role's channel (by role ARN).
    assert!(slack.accepted().iter().all(|c| c.channel == ROLE_CHANNEL));
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_while_slack_is_down_returns_the_alert_to_the_queue() {
    let env = Env::new("relay-shutdown", ROLE_SPEC).await;
    let role_arn = aws_jit_role_arn(&env).await;
    let slack = SlackStandIn::start(TOKEN).await;
    slack.server_error(10_000);
    send_alert(&env, "late-exec", "late", &ghost_alert("late", &role_arn)).await;
    let mut c = config(&env, &slack);
    c.shutdown_grace = Duration::from_secs(1);
    // Longer than the test waits: only the relay's release can bring it back in time.
    c.visibility_timeout = Duration::from_secs(120);
    let relay = RelayTask::start(&env, c.clone());
    eventually("the relay to be retrying", WAIT, || async {
        let failed = slack.calls().iter().filter(|c| c.outcome == "500").count();
        if failed >= 2 {
            Ok(())
        } else {
            Err(format!("{failed}"))
        }
    })
    .await;
    // SIGTERM: the relay gives the in-flight alert its grace, then returns it.
    relay.shutdown().await;
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    eventually(
        "the alert back in the queue",
        Duration::from_secs(30),
        || async {
            let counts = queue_counts(&sqs, &env.aws.alert_queue_url).await;
            if counts == ("1".to_string(), "0".to_string()) {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    )
    .await;
    assert!(slack.accepted().is_empty());
    // Slack is back; the next relay delivers it.
    slack.recover();
    let relay = RelayTask::start(&env, c);
    eventually("the alert in Slack", WAIT, || async {
        let shown = slack
            .accepted()
            .iter()
            .any(|c| c.blocks.to_string().contains("`nowhere/late`"));
        if shown {
            Ok(())
        } else {
            Err(format!("{:?}", slack.accepted().len()))
        }
    })
    .await;
    relay.shutdown().await;
}

async fn aws_jit_role_arn(env: &Env) -> String {
    let roles: kube::Api<aws_jit::crd::AccessRole> = kube::Api::all(env.kube.clone());
    roles
        .get(&env.access_role)
        .await
        .expect("AccessRole")
        .spec
        .role_arn
}

/// Waits until the request's events are `events` (each shown once, in this order), then
/// checks the Slack side: one top-level post in the role's channel, then per later event
/// one `chat.update` of it and one thread reply, in order, every update showing the
/// request's fields. Returns the updates and the replies.
async fn shown_in_order(
    env: &Env,
    slack: &SlackStandIn,
    name: &str,
    events: &[&str],
) -> (Vec<Call>, Vec<Call>) {
    let r = wait_relayed(env, name, events).await;
    let ts = slack_of(&r).ts;
    let (posts, updates, replies) = calls_of(slack, &env.ns, name, &ts);
    let later = events.len() - 1;
    assert_eq!(
        (posts.len(), updates.len(), replies.len()),
        (1, later, later),
        "one post, then one update and one reply per later event: {:#?}",
        slack.accepted()
    );
    let role_arn = aws_jit_role_arn(env).await;
    for call in posts.iter().chain(&updates) {
        assert_eq!(call.channel, ROLE_CHANNEL);
        let fields = call.blocks[2]["fields"].to_string();
        for needle in ["alice", &format!("`{}/{name}`", env.ns), &role_arn] {
            assert!(fields.contains(needle), "{needle} in {fields}");
        }
    }
    (updates, replies)
}

/// A finalizer of the tests' own, to keep a deleted request readable.
const HOLD: &str = "e2e.aws-jit.io/hold";

fn last(calls: &[Call]) -> &Call {
    calls.last().expect("at least one call")
}

#[tokio::test]
async fn a_withdrawn_request_shows_cancelled_on_its_message() {
    let env = Env::new("relay-cancel", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "withdrawn", "");
    wait_relayed(&env, "withdrawn", &["requested"]).await;
    // Hold the object after its deletion (a finalizer of the test's), so the relay
    // finds the request and its living message however late it handles the alert;
    // without it, a request already gone gets a new message (the ghost tests above).
    let hold = json!([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]).to_string();
    let ar = |args: &[&str]| {
        let mut all = vec!["-n", env.ns.as_str()];
        all.extend_from_slice(args);
        succeeded(&stack().kube.kubectl(User::Admin, &all));
    };
    ar(&["patch", "ar", "withdrawn", "--type=json", "-p", &hold]);
    ar(&["delete", "ar", "withdrawn", "--wait=false"]);
    let (updates, replies) =
        shown_in_order(&env, &slack, "withdrawn", &["requested", "cancelled"]).await;
    assert_eq!(
        header(last(&updates)),
        ":heavy_multiplication_x: AWS access request: cancelled"
    );
    assert!(
        !last(&updates)
            .blocks
            .to_string()
            .contains("aws-jit-approve"),
        "no buttons on a cancelled request"
    );
    let text = &last(&replies).text;
    assert!(text.starts_with("Cancelled before a decision"), "{text}");
    // The operator lets go once the execution has ended; then the test does.
    let api = env.requests();
    eventually("only the test's finalizer left", WAIT, || async {
        let r = api.get("withdrawn").await.map_err(|e| e.to_string())?;
        match r.finalizers() {
            [only] if only == HOLD => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    ar(&[
        "patch",
        "ar",
        "withdrawn",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    env.wait_gone("withdrawn").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn an_unanswered_request_shows_it_was_not_approved_in_time() {
    let env = Env::new(
        "relay-timeout",
        &format!("{ROLE_SPEC}\n  approvalTimeout: 2s"),
    )
    .await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "ignored", "");
    let (updates, replies) = shown_in_order(
        &env,
        &slack,
        "ignored",
        &["requested", "approval_timed_out"],
    )
    .await;
    assert_eq!(
        header(last(&updates)),
        ":alarm_clock: AWS access request: not approved in time"
    );
    assert_eq!(
        last(&replies).text,
        "Nobody approved in time; the request expired."
    );
    env.wait_phase("ignored", Phase::Expired).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn the_revoke_action_shows_revoked_after_granted() {
    let env = Env::new("relay-revoke", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "early", "  duration: 1h\n");
    env.wait_phase("early", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "early", "Approve");
    env.wait_phase("early", Phase::Active).await;
    env.revoke(User::Alice, "early", "done early");
    let (updates, replies) = shown_in_order(
        &env,
        &slack,
        "early",
        &["requested", "approved", "granted", "revoked"],
    )
    .await;
    let heads: Vec<String> = updates.iter().map(header).collect();
    assert_eq!(
        heads,
        [
            ":white_check_mark: AWS access request: approved, granting",
            ":unlock: AWS access request: active",
            ":lock: AWS access request: revoked, access removed",
        ]
    );
    assert_eq!(last(&replies).text, "Access was ended early and removed.");
    env.wait_phase("early", Phase::Revoked).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_failed_grant_is_loud_and_mentions_the_configured_people() {
    let env = Env::new("relay-grantfail", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));
    env.doomed_grant("doomed").await;
    let (updates, replies) = shown_in_order(
        &env,
        &slack,
        "doomed",
        &["requested", "approved", "grant_failed"],
    )
    .await;
    let failed = last(&updates);
    assert_eq!(header(failed), ":rotating_light: AWS access GRANT FAILED");
    // The configured group and the role's approver with a Slack ID, in the
    // notification text and in the thread.
    let mentions = "<!subteam^S0SRE> <@U0CAROL> ";
    assert!(failed.text.starts_with(mentions), "{}", failed.text);
    let reply = last(&replies);
    assert!(
        // The role is gone: the execution's own ReadRole fails before any grant.
        reply
            .text
            .starts_with(&format!("{mentions}The grant FAILED and was rolled back: "))
            && reply.text.contains("NoSuchEntity"),
        "{}",
        reply.text
    );
    assert_eq!(
        header(reply),
        ":rotating_light: AWS access GRANT FAILED",
        "a loud thread reply"
    );
    env.wait_phase("doomed", Phase::Failed).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_revoke_nobody_answers_in_time_is_loud_and_says_aws_still_ends_access() {
    // The operator is down from the grant until past the work-task timeout (30 s, the
    // template's minimum): the state machine's revoke times out, which is a failed
    // revoke. The grant's own condition still ends access at its expiry.
    let mut env = Env::with_template(
        "relay-revokefail",
        ROLE_SPEC,
        &[("WorkTaskTimeoutSeconds", "30")],
    )
    .await;
    let slack = SlackStandIn::start(TOKEN).await;
    let relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "unrevoked", "  duration: 10s\n");
    env.wait_phase("unrevoked", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "unrevoked", "Approve");
    let r = env.wait_phase("unrevoked", Phase::Active).await;
    env.kill_operator();
    let expires = r.status.and_then(|s| s.expires_at).expect("expiresAt").0;
    let (updates, replies) = shown_in_order(
        &env,
        &slack,
        "unrevoked",
        &["requested", "approved", "granted", "revoke_failed"],
    )
    .await;
    assert_eq!(
        header(last(&updates)),
        ":rotating_light: AWS access REVOKE FAILED"
    );
    let text = &last(&replies).text;
    assert!(
        text.starts_with("<!subteam^S0SRE> <@U0CAROL> The revoke FAILED: States.Timeout"),
        "{text}"
    );
    // The expiry AWS enforces, as the request's status has it.
    let shown: jiff::Timestamp = text
        .split("still ends at *")
        .nth(1)
        .and_then(|t| t.split('*').next())
        .unwrap_or_default()
        .parse()
        .expect("an RFC 3339 instant");
    assert_eq!(shown.as_second(), expires.as_second());
    // Back up, the operator still takes the statement away (late, but not never).
    env.start_operator();
    eventually("the late revoke", WAIT, || async {
        let grants =
            aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).len();
        if grants == 0 {
            Ok(())
        } else {
            Err(format!("{grants} grants left"))
        }
    })
    .await;
    relay.shutdown().await;
}

/// Attack: alice creates her requests with the annotations older releases kept the
/// relay's state in: one says every event was already shown (so no alert about it would
/// ever reach Slack), the other points at bob's living message (so its alerts would
/// overwrite it). The relay reads only `status.slack`, which only the operator writes.
#[tokio::test]
async fn annotations_a_requester_sets_do_not_steer_the_relay() {
    let env = Env::new("relay-steer", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let _relay = RelayTask::start(&env, config(&env, &slack));

    env.request(User::Bob, "victim", "  requesterGroup: developers\n");
    let victim = eventually("bob's message", WAIT, || async {
        match calls_of(&slack, &env.ns, "victim", "").0.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(victim.channel, ROLE_CHANNEL);

    let every_event = "requested,approved,denied,cancelled,approval_timed_out,granted,\
                       grant_failed,expired,revoked,revoke_failed";
    for (name, annotations) in [
        (
            "silenced",
            format!(
                "aws-jit.io/slack-relayed: \"{every_event}\"\n    aws-jit.io/slack-channel: C0ELSEWHERE\n    aws-jit.io/slack-ts: \"1.000001\""
            ),
        ),
        (
            "hijack",
            format!(
                "aws-jit.io/slack-channel: {}\n    aws-jit.io/slack-ts: \"{}\"",
                victim.channel, victim.ts
            ),
        ),
    ] {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             \x20 annotations:\n    {annotations}\nspec:\n  role: {role}\n  requester: alice\n  reason: e2e\n",
            ns = env.ns,
            role = env.access_role,
        );
        succeeded(
            &stack()
                .kube
                .kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        );
    }
    // Each gets its own message in its role's channel (what Slack shows comes first:
    // the failure lists what happened to bob's message meanwhile).
    let posts = eventually("a message of its own for each", WAIT, || async {
        let mine: Vec<Vec<Call>> = ["silenced", "hijack"]
            .iter()
            .map(|name| calls_of(&slack, &env.ns, name, "").0)
            .collect();
        match mine.as_slice() {
            [a, b] if a.len() == 1 && b.len() == 1 => Ok([a[0].clone(), b[0].clone()]),
            _ => {
                let (_, updates, replies) = calls_of(&slack, &env.ns, "victim", &victim.ts);
                Err(format!(
                    "own posts {mine:?}; bob's message updated {} times, replied to {} times",
                    updates.len(),
                    replies.len()
                ))
            }
        }
    })
    .await;
    for (name, post) in ["silenced", "hijack"].iter().zip(&posts) {
        assert_eq!(post.channel, ROLE_CHANNEL, "{name}");
        assert_ne!(post.ts, victim.ts, "{name}");
        let r = wait_relayed(&env, name, &["requested"]).await;
        let remembered = slack_of(&r);
        assert_eq!(
            (remembered.channel.as_str(), remembered.ts.as_str()),
            (ROLE_CHANNEL, post.ts.as_str()),
            "{name}"
        );
    }
    // bob's message was never touched: no update, no thread reply.
    let (posts, updates, replies) = calls_of(&slack, &env.ns, "victim", &victim.ts);
    assert_eq!(posts.len(), 1, "{posts:#?}");
    assert!(
        updates.is_empty(),
        "bob's message was overwritten: {updates:#?}"
    );
    assert!(replies.is_empty(), "{replies:#?}");
    assert!(
        slack.accepted().iter().all(|c| c.channel != "C0ELSEWHERE"),
        "an annotation chose the channel"
    );
}

/// Attack, the other way in: alice writes the relay's state into her request's status
/// herself (she may patch status, to vote and revoke), to silence its alerts or point
/// them at another message. Only the operator's identities may write `status.slack`.
#[tokio::test]
async fn requesters_and_approvers_cannot_write_the_relays_status() {
    let env = Env::new("relay-status", ROLE_SPEC).await;
    env.request(User::Alice, "mine", "");
    env.wait_phase("mine", Phase::AwaitingApproval).await;
    let patch = r#"[{"op":"add","path":"/status/slack","value":{"channel":"C0ELSEWHERE","ts":"1.000001","relayed":["requested","approved","granted","expired"]}}]"#;
    for user in [User::Alice, User::Carol] {
        refused(
            &stack()
                .kube
                .patch_status(user, &env.ns, "mine", "json", patch),
            "denied request",
        );
    }
    let r = env.requests().get("mine").await.expect("get");
    assert_eq!(r.status.and_then(|s| s.slack), None);
}

/// A plain AWS caller starts an execution with a copy of a live request's identity and
/// input of their own (another duration, a reason that makes approvers hurry): its
/// alerts come from the state machine itself. They must never reach the request's card
/// (before, the forged "cancelled" updated the real card, or a forged "requested" that
/// arrived first became the card approvers saw); they go to the alert dead-letter queue.
#[tokio::test]
async fn a_foreign_executions_alerts_never_reach_the_requests_card() {
    let env = Env::new("relay-forged", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let _relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "real", "  duration: 2h\n");
    env.wait_phase("real", Phase::AwaitingApproval).await;
    let shown = wait_relayed(&env, "real", &["requested"]).await;
    let exec = env.execution("real").await;
    let mut forged: Value = serde_json::from_str(exec.input().expect("input")).expect("JSON");
    forged["reason"] = json!("SEV1: approve at once");
    forged["duration_seconds"] = json!(900);
    let foreign = aws_sdk_sfn::Client::new(&env.sdk)
        .start_execution()
        .state_machine_arn(&env.aws.state_machine_arn)
        .name("forged-alerts")
        .input(forged.to_string())
        .send()
        .await
        .expect("a plain AWS caller starts an execution")
        .execution_arn()
        .to_string();
    // Its requested and (the consumer refuses its approval task) cancelled alerts land
    // in the dead-letter queue.
    let sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let dlq = env.aws.alert_dlq_url.clone();
    let dead = std::cell::RefCell::new(Vec::<String>::new());
    // Two alerts of an execution that moto runs among the whole suite's (every grant now
    // runs more states): a longer deadline than one step's.
    eventually(
        "the foreign alerts to be dead-lettered",
        WAIT * 2,
        || async {
            let taken = take_messages(&sqs, &dlq).await?;
            dead.borrow_mut().extend(taken);
            let events: Vec<String> = dead
                .borrow()
                .iter()
                .filter_map(|b| serde_json::from_str::<Value>(b).ok())
                .filter(|v| v["execution_arn"] == foreign.as_str())
                .map(|v| v["event"].as_str().unwrap_or_default().to_string())
                .collect();
            // Its cancelled alert comes unless the drift sweeper stopped it first (it
            // stops executions aws-jit did not start): then "requested" is all it sent.
            let stopped = aws_sdk_sfn::Client::new(&env.sdk)
                .describe_execution()
                .execution_arn(&foreign)
                .send()
                .await
                // Stopped: ABORTED on AWS; moto 5.2.5 may say FAILED.
                .is_ok_and(|d| ["ABORTED", "FAILED"].contains(&d.status().as_str()));
            if events.contains(&"requested".to_string()) && (events.len() >= 2 || stopped) {
                Ok(())
            } else {
                Err(format!("{events:?}, stopped: {stopped}"))
            }
        },
    )
    .await;
    let now = env.requests().get("real").await.expect("get");
    assert_eq!(slack_of(&now).relayed, vec!["requested".to_string()]);
    let ts = slack_of(&shown).ts;
    let (posts, updates, replies) = calls_of(&slack, &env.ns, "real", &ts);
    // Besides its card, the request is named by the operator's security finding about
    // the foreign execution (a message of its own).
    let (_, cards): (Vec<Call>, Vec<Call>) = posts
        .into_iter()
        .partition(|c| c.text.contains("aws-jit security"));
    assert_eq!(cards.len(), 1, "one card: {cards:?}");
    // And the operator's finding about the foreign execution reached Slack, loudly.
    eventually("the operator's finding in Slack", WAIT, || async {
        slack
            .accepted()
            .into_iter()
            .find(|c| {
                c.text.contains("aws-jit security: ForeignExecution") && c.text.contains(&foreign)
            })
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert!(
        updates.is_empty() && replies.is_empty(),
        "{updates:?} {replies:?}"
    );
    assert!(
        !slack
            .accepted()
            .iter()
            .any(|c| c.blocks.to_string().contains("SEV1")),
        "the forged reason is never shown"
    );
}

/// The operator's security findings (here: a tampered execution) are posted as a
/// message of their own, loudly, in the request's role's channel.
#[tokio::test]
async fn security_findings_are_posted_loudly_in_the_roles_channel() {
    let env = Env::new("relay-security", ROLE_SPEC).await;
    let slack = SlackStandIn::start(TOKEN).await;
    let _relay = RelayTask::start(&env, config(&env, &slack));
    env.request(User::Alice, "watched", "");
    let r = env.wait_phase("watched", Phase::AwaitingApproval).await;
    let finding = json!({
        "event": "security", "kind": "ExecutionTampered",
        "request": {"namespace": env.ns, "name": "watched", "uid": r.metadata.uid},
        "message": "execution ar-x was started by someone other than aws-jit"
    });
    send_alert(&env, "aws-jit-security", "finding-1", &finding.to_string()).await;
    let post = eventually("the finding in Slack", WAIT, || async {
        slack
            .accepted()
            .into_iter()
            .find(|c| c.method == "chat.postMessage" && c.text.contains("aws-jit security"))
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_eq!(post.channel, ROLE_CHANNEL);
    assert!(post.thread_ts.is_none(), "a message of its own");
    assert!(post.text.contains("ExecutionTampered"), "{}", post.text);
    assert!(
        post.text.contains("<!subteam^S0SRE>"),
        "loud: {}",
        post.text
    );
    assert!(
        post.text.contains("<@U0CAROL>"),
        "the role's approvers: {}",
        post.text
    );
}
