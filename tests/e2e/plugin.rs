//! The `kubectl jit` plugin on the real stack: the BUILT binary run as the real users with
//! their own kubeconfigs, the operator's own code running (`controller::Env`), the
//! shipped state machine on moto, and `credentials` against moto's STS with alice's own
//! IAM access key. Every refusal is checked to leave `status.approvals` as it was.
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_jit::crd::Phase;
use serde_json::Value;

use crate::controller::{ACCOUNT, Env};
use crate::support::kube::User;
use crate::support::policy_eval::{Decision, assume_role};
use crate::support::stack;
use crate::support::wait::eventually;

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Generous: the suite runs on two loaded cores.
const WAIT: Duration = Duration::from_secs(180);

/// `kubectl-jit`, as `user` (their kubeconfig through `KUBECONFIG`), nothing inherited
/// but `PATH`; `env` adds variables (AWS ones for `credentials`).
fn jit_command(user: User, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-jit"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", stack().kube.kubeconfig(user))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn jit_env(user: User, args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = jit_command(user, args, env).output();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("kubectl-jit {args:?} did not finish within {WAIT:?}"))
        .expect("run kubectl-jit")
}

async fn jit(user: User, args: &[&str]) -> Output {
    jit_env(user, args, &[]).await
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn exits(out: &Output, code: i32, needle: &str) -> String {
    let all = text(out);
    assert_eq!(out.status.code(), Some(code), "exit code; output: {all}");
    assert!(all.contains(needle), "no {needle:?} in: {all}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status.approvals` of `name` as the operator reads it.
async fn approvals(env: &Env, name: &str) -> Value {
    let r = env.requests().get(name).await.expect("get request");
    serde_json::to_value(r.status.and_then(|s| s.approvals)).expect("json")
}

/// One form-encoded request body, its fields in order.
type Form = Vec<(String, String)>;

/// What the plugin sent to STS: every form-encoded request through a recording proxy
/// in front of moto.
#[derive(Clone, Default)]
struct Recorder {
    bodies: Arc<Mutex<Vec<Form>>>,
}

impl Recorder {
    fn calls(&self, action: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter(|b| b.iter().any(|(k, v)| k == "Action" && v == action))
            .map(|b| b.iter().cloned().collect())
            .collect()
    }
}

/// Forwards 127.0.0.1:<port> to moto, keeping each request's form body.
async fn recording_proxy(moto: &str) -> (String, Recorder, tokio::task::JoinHandle<()>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = (recorder.clone(), moto.to_owned(), reqwest::Client::new());
    async fn forward(
        State((recorder, moto, http)): State<(Recorder, String, reqwest::Client)>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        recorder.bodies.lock().expect("lock").push(
            form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = http.request(
            reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method"),
            format!("{moto}{path}"),
        );
        for (k, v) in &headers {
            if k != "host" && k != "content-length" {
                req = req.header(k.as_str(), v.as_bytes());
            }
        }
        match req.body(body.to_vec()).send().await {
            Ok(resp) => {
                let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("text/xml")
                    .to_owned();
                let bytes = resp.bytes().await.unwrap_or_default();
                (status, [("content-type", ct)], bytes.to_vec()).into_response()
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    }
    let app = axum::Router::new().fallback(forward).with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), recorder, task)
}

/// alice's own IAM user in moto and a fresh access key of hers: her base credentials.
async fn alices_access_key(sdk: &aws_config::SdkConfig) -> (String, String) {
    let iam = aws_sdk_iam::Client::new(sdk);
    // Shared by the whole run (IAM user names are global): create it once.
    let _ = iam.create_user().user_name("alice").send().await;
    // IAM allows two keys per user: drop older ones first.
    if let Ok(keys) = iam.list_access_keys().user_name("alice").send().await {
        for k in keys.access_key_metadata() {
            if let Some(id) = k.access_key_id() {
                let _ = iam
                    .delete_access_key()
                    .user_name("alice")
                    .access_key_id(id)
                    .send()
                    .await;
            }
        }
    }
    let key = iam
        .create_access_key()
        .user_name("alice")
        .send()
        .await
        .expect("create alice's access key");
    let key = key.access_key().expect("key");
    (
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    )
}

#[tokio::test]
async fn alice_asks_and_waits_carol_approves_alice_assumes_then_revokes_with_the_plugin() {
    let env = Env::new("plg-flow", "").await;
    let ns = env.ns.as_str();
    let role = env.access_role.as_str();

    // alice asks and waits, as a child process; carol approves while it waits.
    let waiting = jit_command(
        User::Alice,
        &[
            "request",
            role,
            "--reason",
            "INC-7 fix",
            "--duration",
            "1h",
            "--name",
            "flow",
            "-n",
            ns,
            "--wait",
        ],
        &[],
    )
    .spawn()
    .expect("spawn request --wait");
    env.wait_phase_within("flow", Phase::AwaitingApproval, WAIT)
        .await;

    // A second request, name generated, printed as -o name.
    let out = jit(
        User::Alice,
        &[
            "request", role, "--reason", "second", "-n", ns, "-o", "name",
        ],
    )
    .await;
    let second = exits(&out, 0, "accessrequest.aws-jit.io/")
        .trim()
        .trim_start_matches("accessrequest.aws-jit.io/")
        .to_owned();
    assert!(second.starts_with(&format!("{role}-")), "{second}");

    // Refusals while it awaits approval: her own request; bob, who is no approver.
    let before = approvals(&env, "flow").await;
    let out = jit(User::Alice, &["approve", "flow", "-n", ns]).await;
    exits(&out, 3, "your own request");
    let out = jit(User::Bob, &["approve", "flow", "-n", ns]).await;
    exits(&out, 3, "not an approver of this AccessRole");
    assert_eq!(approvals(&env, "flow").await, before);

    // carol approves (her kubeconfig given as a flag this time, not KUBECONFIG).
    let carol_config = stack().kube.kubeconfig(User::Carol);
    let out = jit_env(
        User::Olivia,
        &[
            "--kubeconfig",
            carol_config.to_str().expect("path"),
            "approve",
            "flow",
            "-n",
            ns,
            "--comment",
            "go ahead",
        ],
        &[],
    )
    .await;
    exits(&out, 0, "approved by carol");

    let waited = tokio::time::timeout(WAIT, waiting.wait_with_output())
        .await
        .expect("request --wait to finish")
        .expect("wait output");
    let progress = exits(&waited, 0, "approved by carol via kubectl");
    println!("request --wait said:\n{}", text(&waited));
    assert!(
        progress.contains("accessrequest.aws-jit.io/flow created"),
        "{progress}"
    );
    let all = text(&waited);
    assert!(all.contains("flow: Active"), "{all}");
    assert!(all.contains("kubectl jit credentials flow"), "{all}");
    let active = env.wait_phase_within("flow", Phase::Active, WAIT).await;
    let status = active.status.clone().expect("status");
    let access = status.access.clone().expect("access");
    let expires = status.expires_at.clone().expect("expiresAt").0;

    // Refusals once decided: carol again, dave on a decided request.
    let before = approvals(&env, "flow").await;
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    let out = jit(User::Carol, &["approve", "flow", "-n", ns]).await;
    exits(&out, 3, "already voted");
    let out = jit(User::Dave, &["deny", "flow", "-n", ns, "--comment", "late"]).await;
    exits(&out, 3, "already decided");
    assert_eq!(approvals(&env, "flow").await, before);

    // list: alice's view, --mine, carol's --pending-for-me, -A, -o json/yaml/name.
    let out = jit(User::Alice, &["list", "-n", ns]).await;
    let table = exits(&out, 0, "flow");
    let flow_line = table
        .lines()
        .find(|l| l.starts_with("flow "))
        .unwrap_or_else(|| panic!("no flow row: {table}"));
    assert!(flow_line.contains("Active"), "{flow_line}");
    assert!(flow_line.contains("1/1"), "{flow_line}");
    assert!(flow_line.contains(" alice "), "{flow_line}");
    // NAME ROLE REQUESTER PHASE APPROVALS "EXPIRES IN" AGE: the time left of 1 h.
    let left = flow_line.split_whitespace().nth(5).unwrap_or_default();
    // Whole seconds: listed within the second of the approval, exactly 1h is left.
    let minutes: u32 = match left {
        "1h" => 60,
        _ => left
            .strip_suffix('m')
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("expires in {left:?}: {flow_line}")),
    };
    assert!((45..=60).contains(&minutes), "{flow_line}");
    assert!(!table.contains('\x1b'), "no colour off a terminal: {table}");
    let out = jit(User::Alice, &["list", "-n", ns, "--mine", "-o", "name"]).await;
    let names = exits(&out, 0, "accessrequest.aws-jit.io/flow");
    assert!(names.contains(&second), "{names}");
    let out = jit(User::Carol, &["list", "-n", ns, "--mine"]).await;
    assert!(!exits(&out, 0, "").contains("flow"));
    env.wait_phase_within(&second, Phase::AwaitingApproval, WAIT)
        .await;
    let out = jit(
        User::Carol,
        &["list", "-n", ns, "--pending-for-me", "-o", "name"],
    )
    .await;
    let pending = exits(&out, 0, &second);
    assert!(!pending.contains("/flow\n"), "{pending}");
    let out = jit(
        User::Alice,
        &["list", "-n", ns, "--pending-for-me", "-o", "name"],
    )
    .await;
    assert_eq!(exits(&out, 0, ""), "", "nothing is alice's to approve");
    let out = jit(User::Carol, &["list", "-A"]).await;
    let wide = exits(&out, 0, "NAMESPACE");
    assert!(
        wide.lines()
            .any(|l| l.starts_with(ns) && l.contains(" flow ")),
        "{wide}"
    );
    let out = jit(User::Alice, &["list", "-n", ns, "-o", "json"]).await;
    let list: Value = serde_json::from_str(&exits(&out, 0, "")).expect("json");
    let item = list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "flow"))
        .cloned()
        .expect("flow in the json list");
    assert_eq!(item["status"]["phase"], "Active");
    assert_eq!(item["status"]["approvals"][0]["approver"], "carol");
    let out = jit(User::Alice, &["describe", "flow", "-n", ns, "-o", "yaml"]).await;
    let yaml: Value = serde_yaml::from_str(&exits(&out, 0, "")).expect("yaml");
    assert_eq!(yaml["spec"]["reason"], "INC-7 fix");

    // describe: the timeline, with the controller's Events.
    let out = jit(User::Alice, &["describe", "flow", "-n", ns]).await;
    let page = exits(&out, 0, "Timeline:");
    for needle in [
        "requested by alice",
        "approved by carol via kubectl: \"go ahead\"",
        "access granted (TrustPolicy)",
        "access expires",
        "Approvals:",
        "[event]",
    ] {
        assert!(page.contains(needle), "no {needle:?} in: {page}");
    }
    assert!(!page.contains("may not read Events"), "{page}");

    // credentials: alice's own IAM key, STS on moto through a recorder.
    let (key_id, secret) = alices_access_key(&env.sdk).await;
    let (proxy, recorder, proxy_task) = recording_proxy(&stack().aws.endpoint).await;
    let aws_env = [
        ("AWS_ENDPOINT_URL", proxy.as_str()),
        ("AWS_ACCESS_KEY_ID", key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_REGION", crate::support::aws::REGION),
    ];
    let asked_at = now_s();
    let out = jit_env(User::Alice, &["credentials", "flow", "-n", ns], &aws_env).await;
    let printed = exits(&out, 0, "SessionToken");
    assert!(
        !text(&out).contains(&secret),
        "the base secret is never printed"
    );
    let creds: Value = serde_json::from_str(&printed).expect("credential_process JSON");
    assert_eq!(creds["Version"], 1);
    let expiration: jiff::Timestamp = creds["Expiration"]
        .as_str()
        .expect("Expiration")
        .parse()
        .expect("a time");
    assert!(
        expiration <= expires,
        "{expiration} after the grant's {expires}"
    );
    let sent = recorder.calls("AssumeRole");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["RoleArn"], access.role_arn);
    assert_eq!(sent[0]["RoleSessionName"], access.session_name);
    assert_eq!(sent[0]["SourceIdentity"], "alice");
    // min(1 h, the time left), never past the grant's end.
    let asked: i64 = sent[0]["DurationSeconds"].parse().expect("seconds");
    assert!(
        (900..=3600).contains(&asked) && asked <= expires.as_second() - asked_at,
        "{asked}"
    );

    // The printed keys are a session of the role named as the request's session.
    let base = stack().aws.sdk_config().await;
    let session_conf = aws_sdk_sts::config::Builder::from(&base)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            creds["AccessKeyId"].as_str().expect("key"),
            creds["SecretAccessKey"].as_str().expect("secret"),
            creds["SessionToken"].as_str().map(str::to_owned),
            None,
            "plugin",
        ))
        .build();
    let me = aws_sdk_sts::Client::from_conf(session_conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with the printed keys");
    let arn = me.arn().unwrap_or_default();
    assert!(
        arn.ends_with(&format!(
            "assumed-role/{}/{}",
            env.iam_role_name, access.session_name
        )),
        "{arn}"
    );
    // moto returns no source identity: what was sent is judged against the role's real
    // trust policy by a real evaluator (as alice, the principal the statement names).
    let role_doc = aws_sdk_iam::Client::new(&env.sdk)
        .get_role()
        .role_name(&env.iam_role_name)
        .send()
        .await
        .expect("get role");
    let trust = aws_jit::grant::trust_policy::document::decode_json(
        role_doc
            .role()
            .and_then(|r| r.assume_role_policy_document())
            .expect("trust policy"),
    )
    .expect("JSON");
    let alice_arn = format!("arn:aws:iam::{ACCOUNT}:user/alice");
    let now = jiff::Timestamp::now();
    assert_eq!(
        assume_role(
            &trust,
            &sent[0]["RoleArn"],
            &alice_arn,
            &sent[0]["RoleSessionName"],
            Some(&sent[0]["SourceIdentity"]),
            now
        ),
        Decision::Allowed,
        "what the plugin sent is what the trust statement allows"
    );
    assert_ne!(
        assume_role(
            &trust,
            &sent[0]["RoleArn"],
            &alice_arn,
            "alice-own-name",
            Some("alice"),
            now
        ),
        Decision::Allowed,
        "another session name is not"
    );

    // The role's name works too (her Active request for it).
    let out = jit_env(User::Alice, &["credentials", role, "-n", ns], &aws_env).await;
    exits(&out, 0, "AccessKeyId");
    assert_eq!(
        recorder.calls("AssumeRole")[1]["RoleSessionName"],
        access.session_name
    );
    // bob may read the request but gets no credentials of alice's through the plugin.
    let out = jit_env(User::Bob, &["credentials", "flow", "-n", ns], &aws_env).await;
    exits(&out, 3, "alice's request, not yours");
    assert_eq!(
        recorder.calls("AssumeRole").len(),
        2,
        "nothing sent for bob"
    );

    // aws-profile: a profile that runs the plugin with the same namespace.
    let out = jit(User::Alice, &["aws-profile", "flow", "-n", ns]).await;
    let profile = exits(&out, 0, "[profile aws-jit-flow]");
    assert!(
        profile.contains(&format!(
            "credential_process = kubectl-jit credentials flow --kubeconfig {} --namespace {ns}",
            stack().kube.kubeconfig(User::Alice).display()
        )),
        "{profile}"
    );

    let out = jit(
        User::Alice,
        &[
            "aws-profile",
            role,
            "--context",
            "alice",
            "-n",
            ns,
            "--profile-name",
            "ops",
        ],
    )
    .await;
    let profile = exits(&out, 0, "[profile ops]");
    assert!(
        profile.contains(&format!(
            "credentials {role} --kubeconfig {} --context alice --namespace {ns}\n",
            stack().kube.kubeconfig(User::Alice).display()
        )),
        "{profile}"
    );

    // alice revokes: Revoked, and the trust statement is gone.
    let out = jit(
        User::Alice,
        &["revoke", "flow", "-n", ns, "--reason", "done"],
    )
    .await;
    exits(&out, 0, "revoke asked by alice");
    env.wait_phase_within("flow", Phase::Revoked, WAIT).await;
    let trust = env.trust_policy().await;
    assert!(
        aws_jit::grant::trust_policy::document::grants(&trust).is_empty(),
        "{trust:?}"
    );
    let out = jit(User::Alice, &["revoke", "flow", "-n", ns]).await;
    exits(&out, 3, "has ended");

    // No credentials without an Active grant: said how to ask, exit 4, nothing sent.
    let out = jit_env(User::Alice, &["credentials", "flow", "-n", ns], &aws_env).await;
    exits(&out, 4, &format!("kubectl jit request {role} --reason"));
    let out = jit_env(User::Alice, &["credentials", role, "-n", ns], &aws_env).await;
    exits(&out, 4, &format!("kubectl jit request {role} --reason"));
    assert_eq!(recorder.calls("AssumeRole").len(), 2);
    let out = jit_env(
        User::Alice,
        &["credentials", "no-such-thing", "-n", ns],
        &aws_env,
    )
    .await;
    exits(
        &out,
        5,
        "no AccessRequest and no AccessRole named no-such-thing",
    );
    proxy_task.abort();

    let out = jit(User::Alice, &["describe", "flow", "-n", ns]).await;
    let page = exits(&out, 0, "early revoke asked by alice: \"done\"");
    println!("describe said:\n{page}");
    assert!(page.contains("ended Revoked"), "{page}");
    assert!(page.contains("access revoked early"), "{page}");
}

#[tokio::test]
async fn dave_denies_and_alices_wait_ends_with_his_reason() {
    let env = Env::new(
        "plg-deny",
        "  approvalsRequired: 2\n  approvers: [{user: carol}, {user: dave}, {group: sre}]",
    )
    .await;
    let ns = env.ns.as_str();
    let role = env.access_role.as_str();
    let waiting = jit_command(
        User::Alice,
        &[
            "request", role, "--reason", "INC-8", "--name", "doomed", "-n", ns, "--wait",
        ],
        &[],
    )
    .spawn()
    .expect("spawn request --wait");
    env.wait_phase_within("doomed", Phase::AwaitingApproval, WAIT)
        .await;

    // Who may vote now.
    let out = jit(User::Erin, &["list", "-n", ns, "--pending-for-me"]).await;
    exits(&out, 0, "doomed");

    // Through groups: bob may ask only as a member of `developers`, erin approve only as
    // one of `sre`; the plugin names the group the role lists, and the controller counts it.
    let out = jit(
        User::Bob,
        &[
            "request", role, "--reason", "bob's", "--name", "bobs", "-n", ns,
        ],
    )
    .await;
    exits(&out, 0, "bob asks");
    let bobs = env
        .wait_phase_within("bobs", Phase::AwaitingApproval, WAIT)
        .await;
    assert_eq!(bobs.spec.requester_group.as_deref(), Some("developers"));
    let out = jit(User::Erin, &["approve", "bobs", "-n", ns]).await;
    exits(&out, 0, "approved by erin as group sre (approvals 1/2)");
    let recorded = approvals(&env, "bobs").await;
    assert_eq!(recorded[0]["approver"], "erin", "{recorded}");
    assert_eq!(recorded[0]["group"], "sre", "{recorded}");
    let out = jit(
        User::Bob,
        &["list", "-n", ns, "--pending-for-me", "-o", "name"],
    )
    .await;
    assert_eq!(exits(&out, 0, ""), "");

    // carol approves (1 of 2), then may not vote again, either way.
    let out = jit(User::Carol, &["approve", "doomed", "-n", ns]).await;
    exits(&out, 0, "approvals 1/2");
    let before = approvals(&env, "doomed").await;
    let out = jit(User::Carol, &["approve", "doomed", "-n", ns]).await;
    exits(&out, 3, "already voted");
    let out = jit(
        User::Carol,
        &["deny", "doomed", "-n", ns, "--comment", "no"],
    )
    .await;
    exits(&out, 3, "already voted");
    let out = jit(User::Alice, &["approve", "doomed", "-n", ns]).await;
    exits(&out, 3, "your own request");
    let out = jit(User::Bob, &["deny", "doomed", "-n", ns, "--comment", "x"]).await;
    exits(&out, 3, "not an approver");
    // A group dave is not in: refused before anything is written.
    let out = jit(
        User::Dave,
        &["approve", "doomed", "-n", ns, "--as-group", "sre-leads"],
    )
    .await;
    exits(&out, 3, "you are not in that group");
    // olivia owns the namespace but has no aws-jit role: the apiserver refuses her
    // (exit 3, with its message); the plugin gives her nothing RBAC does not.
    let out = jit(User::Olivia, &["approve", "doomed", "-n", ns]).await;
    exits(&out, 3, "forbidden");
    assert_eq!(approvals(&env, "doomed").await, before);
    let out = jit(
        User::Carol,
        &["list", "-n", ns, "--pending-for-me", "-o", "name"],
    )
    .await;
    assert_eq!(
        exits(&out, 0, ""),
        "accessrequest.aws-jit.io/bobs\n",
        "carol has voted on doomed, not on bob's"
    );

    // The namespace of the kubeconfig's context is the default, as in kubectl.
    let mut carol_config: Value = serde_json::from_slice(
        &std::fs::read(stack().kube.kubeconfig(User::Carol)).expect("read kubeconfig"),
    )
    .expect("kubeconfig JSON");
    carol_config["contexts"][0]["context"]["namespace"] = Value::String(ns.to_owned());
    let dir = tempfile::tempdir().expect("tempdir");
    let with_ns = dir.path().join("carol-in-ns.yaml");
    std::fs::write(&with_ns, carol_config.to_string()).expect("write kubeconfig");
    let out = jit(
        User::Olivia,
        &["--kubeconfig", with_ns.to_str().expect("path"), "list"],
    )
    .await;
    exits(&out, 0, "doomed");

    // dave denies; alice's wait ends with exit 4 and his reason. His kubeconfig is one
    // of two in KUBECONFIG, chosen with --context.
    let both = std::env::join_paths([
        stack().kube.kubeconfig(User::Alice),
        stack().kube.kubeconfig(User::Dave),
    ])
    .expect("join paths");
    let both = both.to_str().expect("utf-8");
    let out = jit_env(
        User::Alice,
        &[
            "--context",
            "dave",
            "deny",
            "doomed",
            "-n",
            ns,
            "--comment",
            "not during the freeze",
        ],
        &[("KUBECONFIG", both)],
    )
    .await;
    exits(&out, 0, "denied by dave");
    let waited = tokio::time::timeout(WAIT, waiting.wait_with_output())
        .await
        .expect("request --wait to finish")
        .expect("wait output");
    let all = text(&waited);
    println!("request --wait said:\n{all}");
    assert_eq!(waited.status.code(), Some(4), "{all}");
    assert!(
        all.contains("ended Denied: denied by dave: not during the freeze"),
        "{all}"
    );

    // Decided: erin's vote is refused, and nothing changes.
    env.wait_phase_within("doomed", Phase::Denied, WAIT).await;
    let before = approvals(&env, "doomed").await;
    assert_eq!(before.as_array().map(Vec::len), Some(2), "{before}");
    let out = jit(User::Erin, &["approve", "doomed", "-n", ns]).await;
    exits(&out, 3, "already decided");
    let out = jit(User::Alice, &["revoke", "doomed", "-n", ns]).await;
    exits(&out, 3, "has ended");
    assert_eq!(approvals(&env, "doomed").await, before);

    let out = jit(User::Carol, &["describe", "doomed", "-n", ns]).await;
    let page = exits(
        &out,
        0,
        "denied by dave via kubectl: \"not during the freeze\"",
    );
    assert!(page.contains("approved by carol via kubectl"), "{page}");
    assert!(page.contains("ended Denied"), "{page}");
    let out = jit(User::Carol, &["list", "-n", ns]).await;
    let table = exits(&out, 0, "doomed");
    assert!(
        table.contains("Denied") && table.contains("denied"),
        "{table}"
    );

    // What the controller would reject is refused before anything is created.
    let before = env
        .requests()
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    let out = jit(
        User::Alice,
        &[
            "request",
            role,
            "--reason",
            "x",
            "--duration",
            "5h",
            "-n",
            ns,
        ],
    )
    .await;
    exits(&out, 3, "exceeds");
    let out = jit(User::Carol, &["request", role, "--reason", "x", "-n", ns]).await;
    exits(&out, 3, "may not request");
    let out = jit(User::Alice, &["request", "no-such-role", "-n", ns]).await;
    exits(&out, 5, "AccessRole no-such-role does not exist");
    let out = jit(
        User::Alice,
        &["request", role, "--wait", "--timeout", "soon", "-n", ns],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let after = env
        .requests()
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(after, before, "nothing was created");

    let out = jit(User::Carol, &["describe", "nope", "-n", ns]).await;
    exits(&out, 5, "not found");
    let out = jit(User::Carol, &["approve", "nope", "-n", ns]).await;
    exits(&out, 5, "not found");
    let out = jit(User::Carol, &["frobnicate"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn alice_extends_with_the_plugin_and_carol_approves_the_extension() {
    let env = Env::new("plg-extend", "  extension: {maxExtensions: 1}\n").await;
    let ns = env.ns.as_str();
    env.request(User::Alice, "longer", "  duration: 1h\n");
    env.wait_phase("longer", Phase::AwaitingApproval).await;
    env.vote(User::Carol, "longer", "Approve");
    env.wait_phase("longer", Phase::Active).await;
    // Only the requester asks; the plugin says what the controller would refuse.
    let out = jit(User::Carol, &["extend", "longer", "-n", ns, "--by", "30m"]).await;
    exits(&out, 3, "only they may ask to extend it");
    let out = jit(User::Alice, &["extend", "longer", "-n", ns, "--by", "4h"]).await;
    exits(&out, 3, "past maxDuration");
    let out = jit(
        User::Alice,
        &[
            "extend",
            "longer",
            "-n",
            ns,
            "--by",
            "30m",
            "--reason",
            "still down",
        ],
    )
    .await;
    exits(&out, 0, "extension 1 asked");
    let out = jit(
        User::Alice,
        &["approve", "longer", "-n", ns, "--extension", "1"],
    )
    .await;
    exits(&out, 3, "your own request");
    let out = jit(
        User::Dave,
        &["approve", "longer", "-n", ns, "--extension", "2"],
    )
    .await;
    exits(&out, 3, "no extension 2");
    let out = jit(
        User::Carol,
        &["approve", "longer", "-n", ns, "--extension", "1"],
    )
    .await;
    exits(&out, 0, "extension 1 approved by carol");
    eventually("extension 1 to be Extended", WAIT, || async {
        let r = env
            .requests()
            .get("longer")
            .await
            .map_err(|e| e.to_string())?;
        let outcomes = r
            .status
            .and_then(|s| s.extension_outcomes)
            .unwrap_or_default();
        match outcomes.first() {
            Some(o) if o.phase == aws_jit::crd::ExtensionPhase::Extended => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Decided: no more votes on it, and the role allows one extension only.
    let out = jit(
        User::Dave,
        &[
            "deny",
            "longer",
            "-n",
            ns,
            "--extension",
            "1",
            "--comment",
            "late",
        ],
    )
    .await;
    exits(&out, 3, "already decided");
    let out = jit(User::Alice, &["extend", "longer", "-n", ns, "--by", "10m"]).await;
    exits(&out, 3, "the most AccessRole");
}

#[tokio::test]
async fn alice_breaks_the_glass_with_the_plugin_and_carol_reviews_it() {
    let env = Env::new(
        "plg-glass",
        "  breakGlass: {requesters: [{user: alice}], maxDuration: 15m}\n",
    )
    .await;
    let ns = env.ns.as_str();
    let role = env.access_role.as_str();
    // Past the break-glass bound: refused before anything is created.
    let out = jit(
        User::Alice,
        &[
            "request",
            role,
            "-n",
            ns,
            "--break-glass",
            "--duration",
            "1h",
            "--reason",
            "INC-1",
        ],
    )
    .await;
    exits(&out, 3, "lasts at most 15m");
    let out = jit(
        User::Alice,
        &[
            "request",
            role,
            "-n",
            ns,
            "--break-glass",
            "--duration",
            "10m",
            "--reason",
            "INC-1: down",
            "--name",
            "glass",
            "--wait",
        ],
    )
    .await;
    exits(&out, 0, "");
    env.wait_phase("glass", Phase::Active).await;
    let out = jit(
        User::Alice,
        &["review", "glass", "-n", ns, "--verdict", "Reviewed"],
    )
    .await;
    exits(&out, 3, "your own request");
    let out = jit(
        User::Carol,
        &["review", "glass", "-n", ns, "--verdict", "Flagged"],
    )
    .await;
    exits(&out, 3, "--comment is required to flag");
    let out = jit(
        User::Carol,
        &["review", "glass", "-n", ns, "--verdict", "Reviewed"],
    )
    .await;
    exits(&out, 0, "reviewed by carol");
    let out = jit(
        User::Carol,
        &["review", "glass", "-n", ns, "--verdict", "Reviewed"],
    )
    .await;
    exits(&out, 3, "already reviewed");
}
