//! Least privilege, checked against the code (no cluster, no moto: a few seconds).
//!
//! 1. Every AWS call in `src/` is allowed, on the resource it targets, to the identity
//!    that makes it by `deploy/aws/aws-jit.yaml`, and not blocked by a queue policy; and
//!    every action the template allows an identity is called by that identity's code
//!    (no unused grants). On real AWS a missing grant is an `AccessDenied` nobody sees
//!    until production: moto enforces no IAM, so no other test would notice.
//! 2. The queue policies, the parameters' `AllowedPattern`s and the `Rules`, which moto
//!    ignores, are evaluated here: who may send to and receive from each queue, what
//!    `ManagedRoleArns` may say, and that the operator can never edit its own roles.
//!
//! How calls are found: the SDK crates the package depends on (from `cargo metadata`)
//! list their operations (`src/operation/<op>.rs`, whose `Metadata::new("<Api>", ..)`
//! gives the API name, hence the IAM action). `src/` is scanned with comments, string
//! literals and `#[cfg(test)]` items blanked out, for `.op(` calls of those names; a call
//! counts when its method chain (across lines) reaches `.send()`, directly or through a
//! `let` binding. A call with an operation's name that is neither is an error: the scan
//! cannot tell, so it says so instead of guessing.
//!
//! Who calls: the modules the `relay` subcommand runs (`src/relay/`, `src/interactions/`)
//! run as the relay's role; everything else (controller, drain) as the operator's. Relay
//! code that uses an operator module's AWS-calling fn or type is refused, since its
//! calls would be counted as the operator's.
//! Which queue an SQS call uses comes from configuration, not from the code's text, so
//! [`SQS_QUEUES`] says it per file; a new SQS call site fails until it is listed there.
//! The SQS calls of all three consumers are made in one shared module
//! ([`SHARED`]: `src/aws/consumer.rs`), which runs as whoever builds it: its calls
//! count for every file that builds one, as that file's identity, on that file's queues.
//! Likewise which state machine a `states:StartExecution` starts: [`STARTS`].
//!
//! 3. The two state machines' execution roles, against their definitions: every Task's
//!    action is allowed to its machine's role on what it targets, every grant is used
//!    by a Task, and neither role can write an inline policy on the installation's own
//!    roles.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/aws/aws-jit.yaml");

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const OPERATOR_ROLE: &str = "arn:aws:iam::123456789012:role/aws-jit-operator";
const RELAY_ROLE: &str = "arn:aws:iam::123456789012:role/aws-jit-relay";
const STATE_MACHINE_ROLE: &str = "arn:aws:iam::123456789012:role/aws-jit-state-machine";
const CLEANUP_ROLE: &str = "arn:aws:iam::123456789012:role/aws-jit-session-cleanup";
/// A managed role, under the `ManagedRoleArns` the checks deploy with.
const MANAGED_ROLE: &str = "arn:aws:iam::123456789012:role/jit/admin";
const STATE_MACHINE: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-access";
const CLEANUP_MACHINE: &str =
    "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-session-cleanup";
const EXECUTION: &str = "arn:aws:states:us-east-1:123456789012:execution:aws-jit-access:ar-1";
/// Issue 12: the IdentityCenter and IamGroup parameters the checks deploy with (both
/// methods installed), and what their calls target.
const IC_INSTANCE: &str = "arn:aws:sso:::instance/ssoins-1234567890abcdef";
const IC_STORE_ID: &str = "d-1234567890";
const IC_PERMISSION_SET: &str =
    "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-0123456789abcdef";
const IC_ACCOUNT_ID: &str = "111111111111";
const IC_ACCOUNT: &str = "arn:aws:sso:::account/111111111111";
/// The identity store's ARN names the account that owns it (the organisation's
/// management account), not necessarily this stack's.
const IC_STORE: &str = "arn:aws:identitystore::210987654321:identitystore/d-1234567890";
const IC_USER: &str = "arn:aws:identitystore:::user/906771e2-b0e1-70a3-0f5f-1a2b3c4d5e6f";
const MANAGED_GROUP: &str = "arn:aws:iam::123456789012:group/jit/admins";
const IAM_USER: &str = "arn:aws:iam::123456789012:user/alice";
const HOLDERS_TABLE: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/aws-jit-grant-holders";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Identity {
    Operator,
    Relay,
}

impl Identity {
    /// The managed policy the template gives this identity.
    fn policy(self) -> &'static str {
        match self {
            Identity::Operator => "OperatorPolicy",
            Identity::Relay => "RelayPolicy",
        }
    }
    fn role_arn(self) -> &'static str {
        match self {
            Identity::Operator => OPERATOR_ROLE,
            Identity::Relay => RELAY_ROLE,
        }
    }
    fn of(file: &str) -> Identity {
        if RELAY_MODULES.iter().any(|m| file.starts_with(m)) {
            Identity::Relay
        } else {
            Identity::Operator
        }
    }
}

/// What `aws-jit relay` runs; everything else runs as the operator.
const RELAY_MODULES: &[&str] = &["src/slack/relay/", "src/slack/interactions/"];

/// What people run with their own AWS credentials (the `kubectl-jit` plugin's
/// `sts:AssumeRole` of a granted role): no identity of the template's, so not scanned.
/// tests/layout.rs keeps every other folder from using `plugin`, so no operator or
/// relay call can hide here.
const PEOPLE_MODULES: &[&str] = &["src/plugin/", "src/bin/kubectl-jit.rs"];

/// Granted ahead of the code that calls them, with why: `(identity, action, resource or
/// None for any, why)`. When the caller lands this test fails until its entry is
/// removed, so no entry outlives its reason.
const NOT_YET_CALLED: &[(Identity, &str, Option<&str>, &str)] = &[];

/// The state machines (template logical IDs) the `states:StartExecution` calls of each
/// file start: their ARNs come from configuration, not the code's text.
const STARTS: &[(&str, &[&str])] = &[(
    "src/aws/sfn.rs",
    &["StateMachine", "SessionCleanupStateMachine"],
)];

/// Modules whose AWS calls are made for whoever builds them: `(file, what building one
/// looks like)`. Each of their calls counts as a call of every other file under `src/`
/// that imports from the module and builds one, with that file's identity and on that
/// file's queues ([`SQS_QUEUES`]); a shared module nobody builds is an error (whose
/// calls would they be?), and relay code may use it.
const SHARED: &[(&str, &str, &str)] = &[(
    "src/aws/consumer.rs",
    "crate::aws::consumer::",
    // Every SQS call there is a method of a `Queue`; a `Consumer` is built on one.
    "Queue::new(",
)];

/// The queues (template logical IDs) the SQS calls of each file use (for the three
/// consumers: through [`SHARED`]'s consumer, on the queues they build it for).
const SQS_QUEUES: &[(&str, &str, &[&str])] = &[
    (
        "src/controller/request_queue.rs",
        "sqs:ReceiveMessage",
        // The dead-letter queue too: its tasks are redriven once a minute.
        &["RequestQueue", "RequestDeadLetterQueue"],
    ),
    (
        "src/controller/request_queue.rs",
        "sqs:DeleteMessage",
        // The dead-letter queue too: its tasks are redriven once a minute.
        &["RequestQueue", "RequestDeadLetterQueue"],
    ),
    (
        "src/controller/request_queue.rs",
        "sqs:ChangeMessageVisibility",
        // The dead-letter queue too: its tasks are redriven once a minute.
        &["RequestQueue", "RequestDeadLetterQueue"],
    ),
    (
        "src/controller/request_queue.rs",
        "sqs:SendMessage",
        &["RequestDeadLetterQueue"],
    ),
    ("src/aws/alerts.rs", "sqs:SendMessage", &["AlertQueue"]),
    (
        "src/grant/trust_policy/worker.rs",
        "sqs:ReceiveMessage",
        &["WorkQueue"],
    ),
    (
        "src/grant/trust_policy/worker.rs",
        "sqs:DeleteMessage",
        &["WorkQueue"],
    ),
    (
        "src/grant/trust_policy/worker.rs",
        "sqs:ChangeMessageVisibility",
        &["WorkQueue"],
    ),
    (
        "src/grant/trust_policy/worker.rs",
        "sqs:SendMessage",
        &["WorkDeadLetterQueue"],
    ),
    (
        "src/slack/relay/mod.rs",
        "sqs:ReceiveMessage",
        &["AlertQueue"],
    ),
    (
        "src/slack/relay/mod.rs",
        "sqs:DeleteMessage",
        &["AlertQueue"],
    ),
    (
        "src/slack/relay/mod.rs",
        "sqs:ChangeMessageVisibility",
        &["AlertQueue"],
    ),
    (
        "src/slack/relay/mod.rs",
        "sqs:SendMessage",
        &["AlertDeadLetterQueue"],
    ),
];

/// The resources a call of a Step Functions, IAM or Identity Center action targets (an
/// Identity Center call is authorized on each of them). SQS: [`SQS_QUEUES`].
fn fixed_resource(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "states:ListExecutions" => &[STATE_MACHINE],
        "states:DescribeExecution" | "states:StopExecution" => &[EXECUTION],
        // No resource-level permissions: a task token is the capability.
        "states:SendTaskSuccess" | "states:SendTaskFailure" | "states:SendTaskHeartbeat" => &["*"],
        "iam:GetRole"
        | "iam:UpdateAssumeRolePolicy"
        | "iam:GetRolePolicy"
        | "iam:PutRolePolicy" => &[MANAGED_ROLE],
        // Issue 12, the operator's IdentityCenter and IamGroup calls (the drift sweep,
        // a permission set's name resolved, the revoke in a failed execution's place).
        "iam:GetGroup" | "iam:RemoveUserFromGroup" => &[MANAGED_GROUP],
        "identitystore:GetUserId" => &[IC_STORE, IC_USER],
        "sso:ListPermissionSets" | "sso:DescribeAccountAssignmentDeletionStatus" => &[IC_INSTANCE],
        "sso:DescribePermissionSet" => &[IC_INSTANCE, IC_PERMISSION_SET],
        "sso:ListAccountAssignments" | "sso:DeleteAccountAssignment" => {
            &[IC_INSTANCE, IC_PERMISSION_SET, IC_ACCOUNT]
        }
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------
// The SDK's operations
// ------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Operation {
    /// e.g. `aws_sdk_sqs`
    krate: String,
    /// e.g. `sqs:ReceiveMessage`
    action: String,
}

/// The IAM service prefix of each AWS SDK crate the code may use.
fn iam_prefix(krate: &str) -> &'static str {
    match krate {
        "aws_sdk_sqs" => "sqs",
        "aws_sdk_sfn" => "states",
        "aws_sdk_iam" => "iam",
        "aws_sdk_sts" => "sts",
        "aws_sdk_ssoadmin" => "sso",
        "aws_sdk_identitystore" => "identitystore",
        other => {
            panic!("{other}: a new AWS SDK dependency; teach iam_prefix its IAM service prefix")
        }
    }
}

/// The IAM action of an API operation: the same name, except the batch calls.
fn iam_action(prefix: &str, api: &str) -> String {
    let api = match (prefix, api) {
        ("sqs", "SendMessageBatch") => "SendMessage",
        ("sqs", "DeleteMessageBatch") => "DeleteMessage",
        ("sqs", "ChangeMessageVisibilityBatch") => "ChangeMessageVisibility",
        _ => api,
    };
    format!("{prefix}:{api}")
}

/// `snake_case` method name -> the operations of that name in the AWS SDK crates the
/// package depends on (normal dependencies, not dev-dependencies).
fn sdk_operations() -> BTreeMap<String, Vec<Operation>> {
    let host = String::from_utf8(
        Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("run rustc -vV")
            .stdout,
    )
    .expect("rustc -vV is UTF-8");
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", host])
        .current_dir(ROOT)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Json = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let root_id = meta["resolve"]["root"].as_str().expect("a root package");
    let manifest_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["manifest_path"].as_str().expect("manifest_path"),
            )
        })
        .collect();
    let node = meta["resolve"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == root_id)
        .expect("the root's node");
    let operation_name =
        regex_lite::Regex::new(r#"Metadata::new\(\s*"([A-Za-z0-9]+)"\s*,"#).expect("regex");
    let mut ops: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    let mut crates = 0;
    for dep in node["deps"].as_array().expect("deps") {
        let krate = dep["name"].as_str().expect("dep name");
        let normal = dep["dep_kinds"]
            .as_array()
            .expect("dep_kinds")
            .iter()
            .any(|k| k["kind"].is_null());
        if !krate.starts_with("aws_sdk_") || !normal {
            continue;
        }
        crates += 1;
        let prefix = iam_prefix(krate);
        let manifest = manifest_of[dep["pkg"].as_str().expect("pkg")];
        let dir = Path::new(manifest)
            .parent()
            .expect("crate dir")
            .join("src/operation");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let op = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read operation");
            let api = &operation_name
                .captures(&text)
                .unwrap_or_else(|| panic!("{}: no Metadata::new(\"<Api>\", ..)", path.display()))
                [1];
            ops.entry(op).or_default().push(Operation {
                krate: krate.to_string(),
                action: iam_action(prefix, api),
            });
        }
    }
    assert!(crates >= 3, "found only {crates} AWS SDK crates: {ops:?}");
    ops
}

// ------------------------------------------------------------------------------------
// The scan
// ------------------------------------------------------------------------------------

/// Source with comments, string and char literals blanked (newlines kept, so lines and
/// byte offsets stay put), and `#[cfg(test)]` items blanked too.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let start = i;
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                blank(&mut out, start, i);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                blank(&mut out, start, i);
            }
            b'r' if (i == 0
                || !ident(b[i - 1])
                || (b[i - 1] == b'b' && (i < 2 || !ident(b[i - 2]))))
                && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1; // r#ident
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                blank(&mut out, start, i);
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                blank(&mut out, start, i);
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1F600}', a multi-byte char), or a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                    blank(&mut out, start, i);
                } else if let Some(len) = src[i + 1..].chars().next().map(char::len_utf8)
                    && b.get(i + 1 + len) == Some(&b'\'')
                {
                    i += len + 2;
                    blank(&mut out, start, i);
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    let mut code = String::from_utf8(out).expect("blanking keeps UTF-8 (only ASCII replaced)");
    // Non-ASCII bytes outside literals and comments stay; inside them they were blanked
    // byte by byte, which is still valid UTF-8 (spaces).
    while let Some(at) = code.find("#[cfg(test)]") {
        let rest = &code[at..];
        let end = match (rest.find('{'), rest.find(';')) {
            (Some(brace), semi) if semi.is_none_or(|s| brace < s) => {
                at + brace + matching(&rest.as_bytes()[brace..], b'{', b'}')
            }
            (_, Some(semi)) => at + semi + 1,
            _ => code.len(),
        };
        let blanked: String = code[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        code.replace_range(at..end, &blanked);
    }
    code
}

/// Length up to and including the bracket closing the one at `s[0]`.
fn matching(s: &[u8], open: u8, close: u8) -> usize {
    let mut depth = 0;
    for (i, &c) in s.iter().enumerate() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
    }
    s.len()
}

#[derive(Clone, Debug)]
struct Call {
    file: String,
    line: usize,
    method: String,
    action: String,
    identity: Identity,
    /// For a call of a [`SHARED`] module counted for `file`: where it is made.
    via: Option<String>,
}

/// Every AWS SDK call in one file's source (`file` relative to the package root);
/// `Err` lists what the scan cannot decide.
///
/// `own_fns`: the functions the package defines. A call named like an operation that
/// does not reach `.send()` is a call of the package's own wrapper of that name (whose
/// SDK call is counted where the wrapper makes it) if there is one, an error otherwise.
fn scan_file(
    file: &str,
    src: &str,
    ops: &BTreeMap<String, Vec<Operation>>,
    own_fns: &BTreeSet<String>,
) -> Result<Vec<Call>, Vec<String>> {
    let code = code_only(src);
    let bytes = code.as_bytes();
    let method = regex_lite::Regex::new(r"\.\s*([a-z_][a-z0-9_]*)\s*\(").expect("regex");
    let mentioned: BTreeSet<&str> = ops
        .values()
        .flatten()
        .map(|o| o.krate.as_str())
        .filter(|k| code.contains(k))
        .collect();
    let (mut calls, mut errors) = (Vec::new(), Vec::new());
    for m in method.captures_iter(&code) {
        let name = &m[1];
        let Some(candidates) = ops.get(name) else {
            continue;
        };
        let whole = m.get(0).expect("match");
        let line = code[..whole.start()].matches('\n').count() + 1;
        let at = format!("{file}:{line}: .{name}()");
        let op = match candidates.as_slice() {
            [one] => one,
            many => {
                let here: Vec<&Operation> = many
                    .iter()
                    .filter(|o| mentioned.contains(o.krate.as_str()))
                    .collect();
                match here.as_slice() {
                    [one] => *one,
                    _ => {
                        errors.push(format!(
                            "{at} is an operation of {:?}: name the client's crate in this file so the scan can tell which",
                            many.iter().map(|o| &o.krate).collect::<Vec<_>>()
                        ));
                        continue;
                    }
                }
            }
        };
        let open = whole.end() - 1;
        if !chain_sends(bytes, open) && !bound_then_sent(&code, whole.start()) {
            if !own_fns.contains(name) {
                errors.push(format!(
                    "{at} has the name of {} but its chain never reaches .send() (directly or through a `let`) and src/ defines no fn {name}: the scan cannot tell whether it is an AWS call; end the chain with .send() or rename the method",
                    op.action
                ));
            }
            continue;
        }
        calls.push(Call {
            file: file.to_string(),
            line,
            method: name.to_string(),
            action: op.action.clone(),
            identity: Identity::of(file),
            via: None,
        });
    }
    if errors.is_empty() {
        Ok(calls)
    } else {
        Err(errors)
    }
}

/// Whether the method chain whose first call's `(` is at `open` goes on to `.send()`.
fn chain_sends(code: &[u8], open: usize) -> bool {
    let mut i = open + matching(&code[open..], b'(', b')');
    loop {
        while i < code.len() && (code[i].is_ascii_whitespace() || code[i] == b'?') {
            i += 1;
        }
        if code.get(i) != Some(&b'.') {
            return false;
        }
        i += 1;
        while i < code.len() && code[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < code.len() && (code[i].is_ascii_alphanumeric() || code[i] == b'_') {
            i += 1;
        }
        let name = &code[start..i];
        while i < code.len() && code[i].is_ascii_whitespace() {
            i += 1;
        }
        if code.get(i) == Some(&b'(') {
            if name == b"send" {
                return true;
            }
            i += matching(&code[i..], b'(', b')');
        } else if name != b"await" {
            return false; // a field access: not a builder chain
        }
    }
}

/// `let [mut] NAME = <receiver>.op(...)...;` followed later by `NAME.send()`.
fn bound_then_sent(code: &str, dot: usize) -> bool {
    let before = &code[..dot];
    let stmt_start = before.rfind([';', '{', '}']).map_or(0, |i| i + 1);
    let binding = regex_lite::Regex::new(
        r"^\s*let\s+(?:mut\s+)?([a-z_][a-z0-9_]*)\s*(?::[^=]+)?=\s*[\w.\s()&]*$",
    )
    .expect("regex");
    let Some(name) = binding
        .captures(&before[stmt_start..])
        .map(|c| c[1].to_string())
    else {
        return false;
    };
    regex_lite::Regex::new(&format!(r"\b{name}\s*\.\s*send\s*\("))
        .expect("regex")
        .is_match(&code[dot..])
}

/// The names of the functions these sources define (outside `#[cfg(test)]`).
fn defined_fns<'a>(sources: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let def = regex_lite::Regex::new(r"\bfn\s+([a-z_][a-z0-9_]*)").expect("regex");
    sources
        .flat_map(|s| {
            def.captures_iter(&code_only(s))
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The attribution by path is only right if relay code does not run an operator
/// module's AWS call. Refuses a `crate::<module>::<item>` path in relay code whose item
/// is a fn that makes an AWS call in that module, or a type whose impl does.
fn relay_reaches_operator_calls(sources: &[(String, String)], calls: &[Call]) -> Vec<String> {
    let item = regex_lite::Regex::new(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)").expect("regex");
    let imp = regex_lite::Regex::new(
        r"\bimpl\b(?:\s*<[^>{]*>)?\s+(?:[\w:]+(?:<[^>{]*>)?\s+for\s+)?(\w+)",
    )
    .expect("regex");
    // module path (e.g. `sfn`, `relay::slack`) -> the fns and impl types around its calls
    let mut calling: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, src) in sources
        .iter()
        .filter(|(f, _)| !SHARED.iter().any(|(shared, ..)| f == shared))
    {
        let code = code_only(src);
        let line_start = |line: usize| {
            code.match_indices('\n')
                .nth(line.saturating_sub(2))
                .map_or(0, |(i, _)| i + 1)
        };
        let module = file
            .trim_start_matches("src/")
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        for c in calls.iter().filter(|c| &c.file == file) {
            let before = &code[..line_start(c.line)];
            let names = calling.entry(module.clone()).or_default();
            for re in [&item, &imp] {
                if let Some(m) = re.captures_iter(before).last() {
                    names.insert(m[1].to_string());
                }
            }
        }
    }
    let path = regex_lite::Regex::new(r"\bcrate::((?:\w+::)*)(\{[^}]*\}|\w+)").expect("regex");
    let mut errors = Vec::new();
    for (file, src) in sources
        .iter()
        .filter(|(f, _)| Identity::of(f) == Identity::Relay)
    {
        let code = code_only(src);
        for m in path.captures_iter(&code) {
            let module = m[1].trim_end_matches("::");
            let Some(names) = calling.get(module) else {
                continue;
            };
            let items = m[2].trim_matches(|c| c == '{' || c == '}');
            for name in items
                .split(',')
                .map(|n| n.trim().split(" as ").next().unwrap_or(""))
            {
                if names.contains(name) {
                    let line = code[..m.get(0).expect("match").start()]
                        .matches('\n')
                        .count()
                        + 1;
                    errors.push(format!(
                        "{file}:{line}: the relay uses crate::{module}::{name}, which makes AWS calls in src/{module}: the scan would count them as the operator's; keep AWS calls the relay makes in its own modules"
                    ));
                }
            }
        }
    }
    errors
}

/// Each call of a [`SHARED`] module, as one call of every file that builds one.
fn attribute_shared(
    sources: &[(String, String)],
    calls: Vec<Call>,
    errors: &mut Vec<String>,
) -> Vec<Call> {
    let users = |shared: &str, imports: &str, builds: &str| -> Vec<String> {
        sources
            .iter()
            .filter(|(f, _)| f != shared)
            .filter(|(_, src)| {
                let code = code_only(src);
                code.contains(imports) && code.contains(builds)
            })
            .map(|(f, _)| f.clone())
            .collect()
    };
    let mut out = Vec::new();
    for c in calls {
        let Some((shared, imports, builds)) = SHARED.iter().find(|(f, ..)| *f == c.file) else {
            out.push(c);
            continue;
        };
        let users = users(shared, imports, builds);
        if users.is_empty() {
            errors.push(format!(
                "{}:{} .{}() is in a shared module that no file builds ({builds}): whose call is it?",
                c.file, c.line, c.method
            ));
        }
        for user in users {
            out.push(Call {
                identity: Identity::of(&user),
                via: Some(format!("{}:{}", c.file, c.line)),
                file: user,
                ..c.clone()
            });
        }
    }
    out
}

/// Every AWS SDK call under `src/`.
fn scan_sources(ops: &BTreeMap<String, Vec<Operation>>) -> Vec<Call> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                // Unit-test modules of their own (`#[cfg(test)] mod tests;`).
                && path.file_name().is_none_or(|n| n != "tests.rs")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|path| {
            let rel = path
                .strip_prefix(ROOT)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(path).expect("read source"))
        })
        .filter(|(rel, _)| !PEOPLE_MODULES.iter().any(|m| rel.starts_with(m)))
        .collect();
    let own_fns = defined_fns(sources.iter().map(|(_, s)| s.as_str()));
    let (mut calls, mut errors) = (Vec::new(), Vec::new());
    for (rel, src) in &sources {
        match scan_file(rel, src, ops, &own_fns) {
            Ok(c) => calls.extend(c),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(relay_reaches_operator_calls(&sources, &calls));
    let calls = attribute_shared(&sources, calls, &mut errors);
    assert!(
        errors.is_empty(),
        "the scan of src/ is ambiguous:\n{}",
        errors.join("\n")
    );
    calls
}

// ------------------------------------------------------------------------------------
// The template, evaluated
// ------------------------------------------------------------------------------------

struct Template {
    doc: Yaml,
    params: HashMap<String, Json>,
    conditions: HashMap<String, bool>,
}

impl Template {
    /// The shipped template with its defaults, the stand-in role ARNs, `ManagedRoleArns`
    /// = every role under `/jit/`, then `overrides`.
    fn load(overrides: &[(&str, &str)]) -> Template {
        let text = std::fs::read_to_string(TEMPLATE).expect("read the template");
        Template::from_doc(
            serde_yaml::from_str(&text).expect("the template is YAML"),
            overrides,
        )
    }

    fn from_doc(doc: Yaml, overrides: &[(&str, &str)]) -> Template {
        let mut given: HashMap<&str, &str> = HashMap::from([
            ("NamePrefix", "aws-jit"),
            ("OperatorRoleArn", OPERATOR_ROLE),
            ("RelayRoleArn", RELAY_ROLE),
            ("ManagedRoleArns", "arn:aws:iam::123456789012:role/jit/*"),
            ("IdentityCenterInstanceArn", IC_INSTANCE),
            ("IdentityStoreId", IC_STORE_ID),
            ("ManagedPermissionSetArns", IC_PERMISSION_SET),
            ("ManagedAccountIds", IC_ACCOUNT_ID),
            ("ManagedGroupArns", MANAGED_GROUP),
        ]);
        given.extend(overrides.iter().copied());
        let mut params = HashMap::new();
        for (name, decl) in doc["Parameters"].as_mapping().expect("Parameters") {
            let name = name.as_str().expect("parameter name");
            let value = match given.get(name) {
                Some(v) => v.to_string(),
                None => match &decl["Default"] {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    other => panic!("parameter {name} has no value in this test ({other:?})"),
                },
            };
            let value = if decl["Type"].as_str() == Some("CommaDelimitedList") {
                Json::Array(value.split(',').map(|s| json!(s)).collect())
            } else {
                json!(value)
            };
            params.insert(name.to_string(), value);
        }
        for name in given.keys() {
            assert!(
                params.contains_key(*name),
                "the template has no parameter {name}"
            );
        }
        let mut t = Template {
            doc,
            params,
            conditions: HashMap::new(),
        };
        let conditions = t.doc["Conditions"]
            .as_mapping()
            .cloned()
            .unwrap_or_default();
        for (name, cond) in &conditions {
            let value = t.resolve(cond).and_then(|v| v.as_bool());
            t.conditions.insert(
                name.as_str().expect("condition name").to_string(),
                value.unwrap_or_else(|| panic!("condition {name:?} is not a boolean")),
            );
        }
        t
    }

    fn resource(&self, logical: &str) -> &Yaml {
        let r = &self.doc["Resources"][logical];
        assert!(!r.is_null(), "the template has no resource {logical}");
        r
    }

    fn name_of(&self, logical: &str, property: &str) -> String {
        let name = &self.resource(logical)["Properties"][property];
        self.resolve(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{logical}.{property} is not a string"))
    }

    /// `Ref` of a resource, as CloudFormation returns it for the types used here.
    fn reference(&self, logical: &str) -> String {
        match self.resource(logical)["Type"].as_str().expect("Type") {
            "AWS::SQS::Queue" => format!(
                "https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{}",
                self.name_of(logical, "QueueName")
            ),
            "AWS::StepFunctions::StateMachine" => format!(
                "arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{}",
                self.name_of(logical, "StateMachineName")
            ),
            "AWS::IAM::ManagedPolicy" => format!(
                "arn:aws:iam::{ACCOUNT}:policy/{}",
                self.name_of(logical, "ManagedPolicyName")
            ),
            "AWS::IAM::Role" => self.name_of(logical, "RoleName"),
            "AWS::DynamoDB::Table" => self.name_of(logical, "TableName"),
            other => panic!("Ref of {logical} ({other}): teach Template::reference"),
        }
    }

    fn attribute(&self, logical: &str, attr: &str) -> String {
        match (self.resource(logical)["Type"].as_str().expect("Type"), attr) {
            ("AWS::SQS::Queue", "Arn") => format!(
                "arn:aws:sqs:{REGION}:{ACCOUNT}:{}",
                self.name_of(logical, "QueueName")
            ),
            ("AWS::IAM::Role", "Arn") => {
                let path = match &self.resource(logical)["Properties"]["Path"] {
                    Yaml::Null => "/".to_string(),
                    p => self
                        .resolve(p)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .expect("Path"),
                };
                format!(
                    "arn:aws:iam::{ACCOUNT}:role{path}{}",
                    self.name_of(logical, "RoleName")
                )
            }
            ("AWS::DynamoDB::Table", "Arn") => format!(
                "arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{}",
                self.name_of(logical, "TableName")
            ),
            (other, _) => panic!("GetAtt {logical}.{attr} ({other}): teach Template::attribute"),
        }
    }

    fn lookup(&self, name: &str) -> Option<Json> {
        Some(match name {
            "AWS::Partition" => json!("aws"),
            "AWS::Region" => json!(REGION),
            "AWS::AccountId" => json!(ACCOUNT),
            "AWS::StackName" => json!("aws-jit"),
            "AWS::NoValue" => return None,
            _ => match self.params.get(name) {
                Some(v) => v.clone(),
                None => json!(self.reference(name)),
            },
        })
    }

    /// A template value with its intrinsic functions evaluated; `None` = `AWS::NoValue`.
    fn resolve(&self, v: &Yaml) -> Option<Json> {
        if let Some((f, arg)) = intrinsic(v) {
            return self.call(&f, arg);
        }
        Some(match v {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => json!(b),
            Yaml::Number(n) => serde_json::to_value(n).expect("number"),
            Yaml::String(s) => json!(s),
            Yaml::Sequence(items) => {
                Json::Array(items.iter().filter_map(|i| self.resolve(i)).collect())
            }
            Yaml::Mapping(m) => Json::Object(
                m.iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.as_str().expect("string key").to_string(),
                            self.resolve(v)?,
                        ))
                    })
                    .collect(),
            ),
            Yaml::Tagged(t) => panic!("unknown tag {}", t.tag),
        })
    }

    fn call(&self, f: &str, arg: &Yaml) -> Option<Json> {
        let list = |arg: &Yaml| -> Vec<Yaml> {
            arg.as_sequence()
                .cloned()
                .unwrap_or_else(|| panic!("{f} takes a list"))
        };
        let boolean = |v: &Yaml| {
            self.resolve(v)
                .and_then(|v| v.as_bool())
                .unwrap_or_else(|| panic!("{f}: not a boolean"))
        };
        Some(match f {
            "Ref" => return self.lookup(arg.as_str().expect("Ref of a name")),
            "Fn::GetAtt" => {
                let (logical, attr) = match arg {
                    Yaml::String(s) => s
                        .split_once('.')
                        .map(|(a, b)| (a.to_string(), b.to_string())),
                    Yaml::Sequence(s) => Some((
                        s[0].as_str().expect("name").to_string(),
                        s[1].as_str().expect("attribute").to_string(),
                    )),
                    _ => None,
                }
                .expect("GetAtt X.Attr");
                json!(self.attribute(&logical, &attr))
            }
            "Fn::Sub" => json!(self.sub(arg.as_str().expect("!Sub of a plain string"))),
            "Fn::Join" => {
                let a = list(arg);
                let sep = a[0].as_str().expect("Fn::Join's delimiter is a literal");
                let parts = self.resolve(&a[1]).expect("Fn::Join of a list");
                json!(
                    parts
                        .as_array()
                        .expect("Fn::Join of a list")
                        .iter()
                        .map(|p| p.as_str().expect("Fn::Join of strings"))
                        .collect::<Vec<_>>()
                        .join(sep)
                )
            }
            "Fn::Split" => {
                let a = list(arg);
                let sep = a[0].as_str().expect("Fn::Split's delimiter is a literal");
                let whole = self.resolve(&a[1]).expect("Fn::Split of a string");
                json!(
                    whole
                        .as_str()
                        .expect("Fn::Split of a string")
                        .split(sep)
                        .collect::<Vec<_>>()
                )
            }
            "Fn::If" => {
                let a = list(arg);
                let cond = a[0].as_str().expect("condition name");
                let holds = *self
                    .conditions
                    .get(cond)
                    .unwrap_or_else(|| panic!("no condition {cond}"));
                return self.resolve(if holds { &a[1] } else { &a[2] });
            }
            "Condition" => json!(self.conditions[arg.as_str().expect("condition name")]),
            "Fn::Equals" => {
                let a = list(arg);
                json!(self.resolve(&a[0]) == self.resolve(&a[1]))
            }
            "Fn::Not" => json!(!boolean(&list(arg)[0])),
            "Fn::And" => json!(list(arg).iter().all(boolean)),
            "Fn::Or" => json!(list(arg).iter().any(boolean)),
            "Fn::Contains" => {
                let a = list(arg);
                let haystack = self.resolve(&a[0]).expect("a list");
                let needle = self.resolve(&a[1]).expect("a value");
                json!(
                    haystack
                        .as_array()
                        .expect("Fn::Contains of a list")
                        .contains(&needle)
                )
            }
            other => panic!("{other}: teach Template::call"),
        })
    }

    fn sub(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').expect("unterminated ${") + at;
            let name = &rest[at + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
            } else if let Some((logical, attr)) = name.split_once('.') {
                out.push_str(&self.attribute(logical, attr));
            } else {
                match self.lookup(name) {
                    Some(Json::String(v)) => out.push_str(&v),
                    other => panic!("${{{name}}} is {other:?}, not a string"),
                }
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The statements of a resource's `PolicyDocument`.
    fn policy(&self, logical: &str) -> Vec<Statement> {
        let doc = self
            .resolve(&self.resource(logical)["Properties"]["PolicyDocument"])
            .expect("PolicyDocument");
        doc["Statement"]
            .as_array()
            .expect("Statement list")
            .iter()
            .map(|s| Statement::from(logical, s))
            .collect()
    }

    fn resources_of_type(&self, ty: &str) -> Vec<String> {
        self.doc["Resources"]
            .as_mapping()
            .expect("Resources")
            .iter()
            .filter(|(_, r)| r["Type"].as_str() == Some(ty))
            .map(|(k, _)| k.as_str().expect("logical id").to_string())
            .collect()
    }

    /// The queue policy statements that apply to each queue (by logical id).
    fn queue_policies(&self) -> HashMap<String, Vec<Statement>> {
        let by_url: HashMap<String, String> = self
            .resources_of_type("AWS::SQS::Queue")
            .into_iter()
            .map(|q| (self.reference(&q), q))
            .collect();
        let mut out: HashMap<String, Vec<Statement>> = HashMap::new();
        for policy in self.resources_of_type("AWS::SQS::QueuePolicy") {
            let queues = self
                .resolve(&self.resource(&policy)["Properties"]["Queues"])
                .expect("Queues");
            for url in queues.as_array().expect("Queues list") {
                let queue = &by_url[url.as_str().expect("queue URL")];
                let previous = out.insert(queue.clone(), self.policy(&policy));
                assert!(
                    previous.is_none(),
                    "{queue} is in two queue policies: SQS keeps one"
                );
            }
        }
        out
    }

    /// Whether every assertion of every Rule holds; `Err` names the first that fails.
    fn rules(&self) -> Result<(), String> {
        for (name, rule) in self.doc["Rules"].as_mapping().expect("Rules") {
            assert!(
                rule["RuleCondition"].is_null(),
                "RuleCondition: teach Template::rules"
            );
            for a in rule["Assertions"].as_sequence().expect("Assertions") {
                if self.resolve(&a["Assert"]).and_then(|v| v.as_bool()) != Some(true) {
                    return Err(format!("{name:?}: {:?}", a["AssertDescription"]));
                }
            }
        }
        Ok(())
    }

    fn allowed_pattern(&self, param: &str) -> regex_lite::Regex {
        let p = self.doc["Parameters"][param]["AllowedPattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{param} has no AllowedPattern"));
        regex_lite::Regex::new(p).expect("AllowedPattern is a regex")
    }
}

/// `!Ref x` / `{Ref: x}` / `!Sub ..` / `{"Fn::Sub": ..}`: (function, argument).
fn intrinsic(v: &Yaml) -> Option<(String, &Yaml)> {
    match v {
        Yaml::Tagged(t) => {
            let f = t.tag.to_string();
            let f = f.trim_start_matches('!');
            Some((
                if f == "Ref" || f == "Condition" {
                    f.to_string()
                } else {
                    format!("Fn::{f}")
                },
                &t.value,
            ))
        }
        Yaml::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            (k == "Ref" || k == "Condition" || k.starts_with("Fn::")).then(|| (k.to_string(), arg))
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------
// Policies, evaluated (only what the template uses; anything else panics)
// ------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Statement {
    sid: String,
    allow: bool,
    principal: Option<Json>,
    actions: Vec<String>,
    resources: Vec<String>,
    condition: Option<Json>,
}

impl Statement {
    fn from(policy: &str, s: &Json) -> Statement {
        for forbidden in ["NotAction", "NotResource", "NotPrincipal"] {
            assert!(
                s.get(forbidden).is_none(),
                "{policy}: {forbidden} is not used by design"
            );
        }
        let strings = |v: &Json| -> Vec<String> {
            match v {
                Json::String(s) => vec![s.clone()],
                Json::Array(a) => a
                    .iter()
                    .map(|s| s.as_str().expect("a string").to_string())
                    .collect(),
                other => panic!("{policy}: {other} is not a string or a list"),
            }
        };
        Statement {
            sid: s["Sid"]
                .as_str()
                .unwrap_or_else(|| panic!("{policy}: every statement has a Sid"))
                .to_string(),
            allow: match s["Effect"].as_str() {
                Some("Allow") => true,
                Some("Deny") => false,
                other => panic!("{policy}: Effect {other:?}"),
            },
            principal: s.get("Principal").cloned(),
            actions: strings(&s["Action"]),
            resources: strings(&s["Resource"]),
            condition: s.get("Condition").cloned(),
        }
    }
}

struct Request<'a> {
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    tags: &'a [(&'a str, &'a str)],
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Allow,
    ExplicitDeny,
    ImplicitDeny,
}

fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn condition_holds(cond: &Json, r: &Request) -> bool {
    cond.as_object()
        .expect("Condition object")
        .iter()
        .all(|(op, keys)| {
            keys.as_object()
                .expect("condition keys")
                .iter()
                .all(|(key, want)| {
                    let want: Vec<&str> = match want {
                        Json::String(s) => vec![s.as_str()],
                        Json::Array(a) => a.iter().map(|v| v.as_str().expect("a string")).collect(),
                        other => panic!("condition value {other}"),
                    };
                    let have: Option<&str> = if key == "aws:PrincipalArn" {
                        Some(r.principal)
                    } else if let Some(tag) = key.strip_prefix("iam:ResourceTag/") {
                        r.tags.iter().find(|(k, _)| *k == tag).map(|(_, v)| *v)
                    } else {
                        panic!("condition key {key}: teach condition_holds");
                    };
                    let equal = have.is_some_and(|h| want.contains(&h));
                    match op.as_str() {
                        // "Null": "false" = the key is present; "true" = absent.
                        "Null" => want.iter().all(|w| (*w == "true") == have.is_none()),
                        "StringEquals" | "ArnEquals" => equal,
                        // A missing key makes a negated operator true, as IAM does.
                        "StringNotEquals" | "ArnNotEquals" => !equal,
                        other => panic!("condition operator {other}: teach condition_holds"),
                    }
                })
        })
}

fn applies(s: &Statement, r: &Request) -> bool {
    let principal_matches = match &s.principal {
        None => true,
        Some(Json::String(p)) if p == "*" => true,
        Some(other) => panic!("{}: Principal {other}: teach applies", s.sid),
    };
    principal_matches
        && s.actions
            .iter()
            .any(|a| glob(&a.to_lowercase(), &r.action.to_lowercase()))
        && s.resources.iter().any(|p| glob(p, r.resource))
        && s.condition.as_ref().is_none_or(|c| condition_holds(c, r))
}

fn decide(statements: &[Statement], r: &Request) -> Decision {
    if statements.iter().any(|s| !s.allow && applies(s, r)) {
        Decision::ExplicitDeny
    } else if statements.iter().any(|s| s.allow && applies(s, r)) {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

fn queue_arn(t: &Template, queue: &str) -> String {
    t.attribute(queue, "Arn")
}

// ------------------------------------------------------------------------------------
// The check
// ------------------------------------------------------------------------------------

/// One right a call needs: `(identity, action, resource, call site)`.
type Need = (Identity, String, String, String);

/// What each call needs, on which resources.
fn needs(calls: &[Call], t: &Template) -> Result<Vec<Need>, Vec<String>> {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for c in calls {
        let site = match &c.via {
            None => format!("{}:{} .{}()", c.file, c.line, c.method),
            Some(via) => format!("{}: through {via} .{}()", c.file, c.method),
        };
        if c.action.starts_with("sqs:") {
            match SQS_QUEUES
                .iter()
                .find(|(f, a, _)| *f == c.file && *a == c.action)
            {
                Some((_, _, queues)) => {
                    for q in *queues {
                        out.push((c.identity, c.action.clone(), queue_arn(t, q), site.clone()));
                    }
                }
                None => errors.push(format!(
                    "{site} calls {}: say in SQS_QUEUES which queue it uses",
                    c.action
                )),
            }
        } else if c.action == "states:StartExecution" {
            match STARTS.iter().find(|(f, _)| *f == c.file) {
                Some((_, machines)) => {
                    for m in *machines {
                        out.push((c.identity, c.action.clone(), t.reference(m), site.clone()));
                    }
                }
                None => errors.push(format!(
                    "{site} calls {}: say in STARTS which state machine it starts",
                    c.action
                )),
            }
        } else if let Some(resources) = fixed_resource(&c.action) {
            for resource in resources {
                out.push((
                    c.identity,
                    c.action.clone(),
                    resource.to_string(),
                    site.clone(),
                ));
            }
        } else {
            errors.push(format!(
                "{site} calls {}: say in fixed_resource what it targets",
                c.action
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every call allowed to its identity (and not blocked by a queue policy); every grant
/// used. `Err` lists every problem.
fn check(calls: &[Call], t: &Template) -> Result<(), Vec<String>> {
    let needed = needs(calls, t)?;
    let queue_policies = t.queue_policies();
    let mut errors = Vec::new();
    for (identity, action, resource, site) in &needed {
        let policy = t.policy(identity.policy());
        let r = Request {
            principal: identity.role_arn(),
            action,
            resource,
            tags: &[("aws-jit-managed", "true")],
        };
        let d = decide(&policy, &r);
        if d != Decision::Allow {
            errors.push(format!(
                "{site}: {identity:?} calls {action} on {resource}, which {} does not allow ({d:?})",
                identity.policy()
            ));
        }
        if let Some((queue, statements)) = queue_policies
            .iter()
            .find(|(q, _)| queue_arn(t, q) == *resource)
            && decide(statements, &r) == Decision::ExplicitDeny
        {
            errors.push(format!(
                "{site}: the queue policy of {queue} denies {identity:?} {action}"
            ));
        }
    }
    let pending = |identity: Identity, action: &str, resource: &str| {
        NOT_YET_CALLED
            .iter()
            .any(|(i, a, r, _)| *i == identity && *a == action && r.is_none_or(|r| r == resource))
    };
    for identity in [Identity::Operator, Identity::Relay] {
        for s in t.policy(identity.policy()).iter().filter(|s| s.allow) {
            for action in &s.actions {
                if action.contains('*') || action.contains('?') {
                    errors.push(format!(
                        "{}: {}: wildcard action {action}",
                        identity.policy(),
                        s.sid
                    ));
                    continue;
                }
                for resource in &s.resources {
                    let used = needed.iter().any(|(i, a, r, _)| {
                        *i == identity && a == action && (glob(resource, r) || r == resource)
                    });
                    let called = needed
                        .iter()
                        .any(|(i, a, _, _)| *i == identity && a == action);
                    if !used && !pending(identity, action, resource) {
                        errors.push(format!(
                            "{} {} allows {action} on {resource}, which no {identity:?} code calls{}: remove the grant (or list it in NOT_YET_CALLED with why)",
                            identity.policy(),
                            s.sid,
                            if called { " on that resource" } else { "" },
                        ));
                    }
                }
            }
        }
        for (i, action, resource, why) in NOT_YET_CALLED.iter().filter(|(i, ..)| *i == identity) {
            if let Some((_, _, _, site)) = needed
                .iter()
                .find(|(n, a, r, _)| n == i && a == action && resource.is_none_or(|want| r == want))
            {
                errors.push(format!(
                    "{action} is called now ({site}): remove it from NOT_YET_CALLED ({why})"
                ));
            }
            if !t.policy(identity.policy()).iter().any(|s| {
                s.allow
                    && s.actions.contains(&action.to_string())
                    && resource.is_none_or(|want| s.resources.iter().any(|p| glob(p, want)))
            }) {
                errors.push(format!(
                    "NOT_YET_CALLED lists {action} on {}, which {} does not allow",
                    resource.unwrap_or("*"),
                    identity.policy()
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The SDK's operations, read once per test process.
fn operations() -> &'static BTreeMap<String, Vec<Operation>> {
    static OPS: std::sync::OnceLock<BTreeMap<String, Vec<Operation>>> = std::sync::OnceLock::new();
    OPS.get_or_init(sdk_operations)
}

fn shipped_calls() -> Vec<Call> {
    scan_sources(operations())
}

// ------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------

#[test]
fn every_aws_call_is_granted_to_its_caller_and_every_grant_is_called() {
    let calls = shipped_calls();
    // The scan sees the calls it must (a scan that finds nothing proves nothing).
    for (file, action) in [
        ("src/controller/request_queue.rs", "sqs:SendMessage"),
        ("src/grant/trust_policy/worker.rs", "sqs:SendMessage"),
        (
            "src/grant/trust_policy/worker.rs",
            "iam:UpdateAssumeRolePolicy",
        ),
        ("src/aws/sfn.rs", "states:StartExecution"),
        ("src/slack/relay/mod.rs", "sqs:ReceiveMessage"),
    ] {
        assert!(
            calls.iter().any(|c| c.file == file && c.action == action),
            "the scan missed {action} in {file}: {calls:#?}"
        );
    }
    for tagged in ["false", "true"] {
        let t = Template::load(&[("RequireManagedRoleTag", tagged)]);
        if let Err(errors) = check(&calls, &t) {
            panic!("RequireManagedRoleTag={tagged}:\n{}", errors.join("\n"));
        }
    }
}

/// The check itself fails on the mistakes it exists for: a grant the code needs taken
/// away (the request DLQ's SendMessage, missing before), an unused grant added back.
#[test]
fn the_check_fails_on_a_missing_or_an_unused_grant() {
    let calls = shipped_calls();
    let text = std::fs::read_to_string(TEMPLATE).expect("read the template");
    let edit = |f: &dyn Fn(&mut Vec<Yaml>)| {
        let mut doc: Yaml = serde_yaml::from_str(&text).expect("YAML");
        let statements =
            doc["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                .as_sequence_mut()
                .expect("statements");
        f(statements);
        Template::from_doc(doc, &[])
    };
    let sid_is = |s: &Yaml, sid: &str| s["Sid"].as_str() == Some(sid);

    // Only the work DLQ, as before the fix: request_queue.rs's dead_letter is denied.
    let t = edit(&|s| {
        let dlq = s
            .iter_mut()
            .find(|s| sid_is(s, "DeadLetterPoisonMessages"))
            .expect("statement");
        dlq["Resource"] = serde_yaml::from_str("!GetAtt WorkDeadLetterQueue.Arn").expect("yaml");
    });
    let errors = check(&calls, &t).expect_err("a missing grant must fail the check");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("src/controller/request_queue.rs:")
                && e.contains(
                    "sqs:SendMessage on arn:aws:sqs:us-east-1:123456789012:aws-jit-requests-dlq"
                )),
        "{errors:#?}"
    );

    // A grant nothing calls (GetExecutionHistory reads task tokens).
    let t = edit(&|s| {
        let read = s
            .iter_mut()
            .find(|s| sid_is(s, "ReadExecutions"))
            .expect("statement");
        read["Action"] =
            serde_yaml::from_str("[states:DescribeExecution, states:GetExecutionHistory]")
                .expect("yaml");
    });
    let errors = check(&calls, &t).expect_err("an unused grant must fail the check");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("states:GetExecutionHistory")),
        "{errors:#?}"
    );

    // A whole statement removed.
    let t = edit(&|s| s.retain(|s| !sid_is(s, "EditTrustPolicyOfManagedRoles")));
    let errors = check(&calls, &t).expect_err("a missing grant must fail the check");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("src/grant/trust_policy/worker.rs:")
                && e.contains("iam:UpdateAssumeRolePolicy")),
        "{errors:#?}"
    );
}

/// The shared consumer's SQS calls count for each consumer that builds one, as its own
/// identity on its own queues: the relay's role missing a right its consumer uses
/// fails, and so does a right only the operator's consumers use given to the relay.
#[test]
fn the_shared_consumer_counts_for_each_identity_that_builds_it() {
    let calls = shipped_calls();
    for (file, identity) in [
        ("src/controller/request_queue.rs", Identity::Operator),
        ("src/grant/trust_policy/worker.rs", Identity::Operator),
        ("src/slack/relay/mod.rs", Identity::Relay),
    ] {
        for action in [
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:SendMessage",
        ] {
            assert!(
                calls.iter().any(|c| c.file == file
                    && c.action == action
                    && c.identity == identity
                    && c.via
                        .as_deref()
                        .is_some_and(|v| v.starts_with("src/aws/consumer.rs:"))),
                "{file} {action} through the consumer: {calls:#?}"
            );
        }
    }
    assert!(
        !calls.iter().any(|c| c.file == "src/aws/consumer.rs"),
        "the consumer's calls count for its builders only"
    );

    let text = std::fs::read_to_string(TEMPLATE).expect("read the template");
    let edit = |f: &dyn Fn(&mut Vec<Yaml>)| {
        let mut doc: Yaml = serde_yaml::from_str(&text).expect("YAML");
        let statements =
            doc["Resources"]["RelayPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                .as_sequence_mut()
                .expect("statements");
        f(statements);
        Template::from_doc(doc, &[])
    };
    // The relay without ChangeMessageVisibility (its consumer's lease extensions).
    let t = edit(&|s| {
        let consume = s
            .iter_mut()
            .find(|s| s["Sid"].as_str() == Some("ConsumeAlertQueue"))
            .expect("statement");
        consume["Action"] =
            serde_yaml::from_str("[sqs:ReceiveMessage, sqs:DeleteMessage]").expect("yaml");
    });
    let errors = check(&calls, &t).expect_err("a missing grant must fail the check");
    assert!(
        errors.iter().any(|e| e
            .starts_with("src/slack/relay/mod.rs: through src/aws/consumer.rs:")
            && e.contains("Relay calls sqs:ChangeMessageVisibility")),
        "{errors:#?}"
    );
    // The relay may receive from the request queue: only the operator's consumer does.
    let t = edit(&|s| {
        s.push(
            serde_yaml::from_str(
                "{Sid: Extra, Effect: Allow, Action: sqs:ReceiveMessage, \
                 Resource: !GetAtt RequestQueue.Arn}",
            )
            .expect("yaml"),
        )
    });
    let errors = check(&calls, &t).expect_err("an unused grant must fail the check");
    assert!(
        errors.iter().any(
            |e| e.starts_with("RelayPolicy Extra allows sqs:ReceiveMessage")
                && e.contains("no Relay code calls")
        ),
        "{errors:#?}"
    );
    // A shared module's call that no file builds is nobody's: an error.
    let orphan = Call {
        file: "src/aws/consumer.rs".into(),
        line: 1,
        method: "receive_message".into(),
        action: "sqs:ReceiveMessage".into(),
        identity: Identity::Operator,
        via: None,
    };
    let sources = [(
        "src/controller/request_queue.rs".to_string(),
        "fn f() {}".to_string(),
    )];
    let mut errors = Vec::new();
    assert!(attribute_shared(&sources, vec![orphan], &mut errors).is_empty());
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn the_scan_follows_chains_and_skips_what_is_not_code() {
    let ops = operations();
    let src = r##"
use aws_sdk_sqs::Client;
// self.sqs.purge_queue().send() in a comment
/* and /* nested */ .delete_queue().send() */
const S: &str = ".create_queue().send()";
const R: &str = r#".tag_queue().send()"#;
const C: char = '"';
fn f<'a>(x: &'a str) {}
async fn g(&self) {
    let out = self
        .sqs
        .receive_message()
        .queue_url(&self.url)
        .set_attribute_names(Some(vec![x(1)]))
        .send()
        .await?;
    let mut send = self.sqs.send_message().queue_url(dlq);
    if y { send = send.message_body("b"); }
    send.send().await;
}
#[cfg(test)]
mod tests {
    fn h() { c.delete_message().send(); }
}
"##;
    let none = BTreeSet::new();
    let calls = scan_file("src/x.rs", src, ops, &none).expect("no ambiguity");
    let found: Vec<(usize, &str)> = calls.iter().map(|c| (c.line, c.action.as_str())).collect();
    assert_eq!(found, [(12, "sqs:ReceiveMessage"), (17, "sqs:SendMessage")]);
    assert!(calls.iter().all(|c| c.identity == Identity::Operator));
    let relay = scan_file(
        "src/slack/relay/x.rs",
        "fn f() { q.receive_message().send(); }",
        ops,
        &none,
    )
    .expect("ok");
    assert_eq!(relay[0].identity, Identity::Relay);

    // A call named like an operation that never reaches .send() is refused, not guessed.
    let call = "fn f() { slack.send_message(&m).await; }";
    let errors = scan_file("src/y.rs", call, ops, &none).expect_err("undecidable");
    assert!(errors[0].contains("never reaches .send()"), "{errors:?}");
    // Relay code running an operator module's AWS call would be mis-attributed: refused.
    let sources = [
        (
            "src/aws/sfn.rs".to_string(),
            "pub fn plain() {}\nimpl Client {\n    async fn start(&self) {\n        self.c.start_execution().send().await;\n    }\n}\n"
                .to_string(),
        ),
        (
            "src/slack/relay/x.rs".to_string(),
            "use crate::aws::sfn::{plain, Client as C};\nfn f() { crate::aws::sfn::plain(); }\n".to_string(),
        ),
    ];
    let sfn_calls = scan_file(&sources[0].0, &sources[0].1, ops, &none).expect("ok");
    let errors = relay_reaches_operator_calls(&sources, &sfn_calls);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("src/slack/relay/x.rs:1: the relay uses crate::aws::sfn::Client"),
        "{errors:?}"
    );

    // Unless the package defines a fn of that name: then it is that wrapper.
    let own = defined_fns(["async fn send_message(&self) {}"].into_iter());
    assert_eq!(
        scan_file("src/y.rs", call, ops, &own).map(|c| c.len()),
        Ok(0)
    );
}

/// Only the state machine's role puts messages on the queues the operator and the relay
/// consume; only the operator takes them off the request and work queues (task tokens),
/// only the relay off the alert queue. Evaluated for an attacker with full IAM rights in
/// the account (`role/Admin`) and the root user: the queue policies' explicit denies
/// win over their allows. moto neither creates nor enforces queue policies.
#[test]
fn queue_policies_let_only_the_right_identities_send_and_consume() {
    let t = Template::load(&[]);
    let policies = t.queue_policies();
    let queues = t.resources_of_type("AWS::SQS::Queue");
    assert_eq!(queues.len(), 6, "{queues:?}");
    for q in &queues {
        let p = policies
            .get(q)
            .unwrap_or_else(|| panic!("{q} has no queue policy"));
        assert!(
            p.iter().all(|s| !s.allow),
            "{q}: queue policies only deny (identities get their rights from their own policies)"
        );
    }
    let admin = "arn:aws:iam::123456789012:role/Admin";
    let root = "arn:aws:iam::123456789012:root";
    let everyone = [STATE_MACHINE_ROLE, OPERATOR_ROLE, RELAY_ROLE, admin, root];
    // (queue, who may send, who may receive/delete/change visibility; None: IAM decides)
    type Rule<'a> = (&'a str, &'a [&'a str], Option<&'a [&'a str]>);
    let expected: [Rule; 6] = [
        (
            "RequestQueue",
            &[STATE_MACHINE_ROLE],
            Some(&[OPERATOR_ROLE]),
        ),
        ("WorkQueue", &[STATE_MACHINE_ROLE], Some(&[OPERATOR_ROLE])),
        // The operator sends its security findings (tampering, forged tasks, drift).
        (
            "AlertQueue",
            &[STATE_MACHINE_ROLE, OPERATOR_ROLE],
            Some(&[RELAY_ROLE]),
        ),
        (
            "RequestDeadLetterQueue",
            &[OPERATOR_ROLE],
            Some(&[OPERATOR_ROLE]),
        ),
        (
            "WorkDeadLetterQueue",
            &[OPERATOR_ROLE],
            Some(&[OPERATOR_ROLE]),
        ),
        // No task token in an alert: reading the alert DLQ is left to IAM.
        ("AlertDeadLetterQueue", &[RELAY_ROLE], None),
    ];
    for (queue, senders, consumers) in expected {
        let arn = queue_arn(&t, queue);
        for principal in everyone {
            let denied = |action: &str| {
                decide(
                    &policies[queue],
                    &Request {
                        principal,
                        action,
                        resource: &arn,
                        tags: &[],
                    },
                ) == Decision::ExplicitDeny
            };
            assert_eq!(
                denied("sqs:SendMessage"),
                !senders.contains(&principal),
                "{queue}: {principal} sqs:SendMessage"
            );
            for action in [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
            ] {
                let may = consumers.is_none_or(|c| c.contains(&principal));
                assert_eq!(denied(action), !may, "{queue}: {principal} {action}");
            }
        }
    }
    // And the state machine's own sends are allowed by its role and not denied.
    let sm = t.policy_inline("StateMachineRole");
    for q in ["RequestQueue", "WorkQueue", "AlertQueue"] {
        let r = Request {
            principal: STATE_MACHINE_ROLE,
            action: "sqs:SendMessage",
            resource: &queue_arn(&t, q),
            tags: &[],
        };
        assert_eq!(decide(&sm, &r), Decision::Allow, "{q}");
        assert_ne!(decide(&policies[q], &r), Decision::ExplicitDeny, "{q}");
    }
}

impl Template {
    fn policy_inline(&self, role: &str) -> Vec<Statement> {
        let policies = self
            .resolve(&self.resource(role)["Properties"]["Policies"])
            .expect("Policies");
        policies
            .as_array()
            .expect("a list")
            .iter()
            .flat_map(|p| {
                p["PolicyDocument"]["Statement"]
                    .as_array()
                    .expect("statements")
                    .clone()
            })
            .map(|s| Statement::from(role, &s))
            .collect()
    }
}

/// `ManagedRoleArns` is checked element by element (CloudFormation applies a
/// `CommaDelimitedList`'s `AllowedPattern` to each value): one role, or one path's roles.
#[test]
fn managed_role_arns_refuses_wildcards_beyond_a_path() {
    let t = Template::load(&[]);
    let managed = t.allowed_pattern("ManagedRoleArns");
    for ok in [
        "arn:aws:iam::123456789012:role/admin",
        "arn:aws:iam::123456789012:role/jit/admin",
        "arn:aws:iam::123456789012:role/jit/*",
        "arn:aws:iam::123456789012:role/jit/team-a/*",
        "arn:aws-us-gov:iam::123456789012:role/jit/*",
        "arn:aws-cn:iam::123456789012:role/a.b+c=d,e@f_g-h",
    ] {
        assert!(managed.is_match(ok), "{ok} must be accepted");
    }
    for bad in [
        "*",
        "",
        "arn:aws:iam::123456789012:role/*",
        "arn:aws:iam::123456789012:*",
        "arn:aws:iam::*:role/jit/*",
        "arn:*:iam::123456789012:role/jit/*",
        "arn:aws:iam::123456789012:role/jit*",
        "arn:aws:iam::123456789012:role/ad?in",
        "arn:aws:iam::123456789012:role/jit/*/x",
        "arn:aws:iam::123456789012:role/jit//*",
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::12345678901:role/admin",
        " arn:aws:iam::123456789012:role/admin",
    ] {
        assert!(!managed.is_match(bad), "{bad:?} must be refused");
    }
    for param in ["OperatorRoleArn", "RelayRoleArn"] {
        let p = t.allowed_pattern(param);
        assert!(
            p.is_match(OPERATOR_ROLE) && p.is_match("arn:aws:iam::123456789012:role/eks/aws-jit")
        );
        for bad in [
            "*",
            "arn:aws:iam::123456789012:role/*",
            "arn:aws:iam::123456789012:role/aws-jit-?",
        ] {
            assert!(!p.is_match(bad), "{param}: {bad:?} must be refused");
        }
    }
}

/// The Rules refuse a stack whose `ManagedRoleArns` names the operator's or the relay's
/// role, or where the relay shares the operator's role.
#[test]
fn rules_refuse_own_roles_as_managed_roles() {
    assert_eq!(Template::load(&[]).rules(), Ok(()));
    let both = format!("arn:aws:iam::123456789012:role/jit/*,{OPERATOR_ROLE}");
    for (what, overrides) in [
        ("operator managed", vec![("ManagedRoleArns", both.as_str())]),
        ("relay managed", vec![("ManagedRoleArns", RELAY_ROLE)]),
        ("relay = operator", vec![("RelayRoleArn", OPERATOR_ROLE)]),
    ] {
        assert!(
            Template::load(&overrides).rules().is_err(),
            "{what} must be refused"
        );
    }
}

/// Whatever `ManagedRoleArns` covers, the operator cannot edit the trust policy of its
/// own role, the relay's or the state machine's (a path wildcard can cover them, which
/// no Rule can see); and with `RequireManagedRoleTag` only tagged roles are editable.
#[test]
fn the_operator_never_edits_its_own_roles_and_honours_the_tag() {
    let jit_operator = "arn:aws:iam::123456789012:role/jit/aws-jit-operator";
    let jit_relay = "arn:aws:iam::123456789012:role/jit/aws-jit-relay";
    let managed = format!("arn:aws:iam::123456789012:role/jit/*,{STATE_MACHINE_ROLE}");
    let t = Template::load(&[
        ("ManagedRoleArns", managed.as_str()),
        ("OperatorRoleArn", jit_operator),
        ("RelayRoleArn", jit_relay),
    ]);
    let p = t.policy("OperatorPolicy");
    for action in ["iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy"] {
        let edit = |resource: &str, tags: &[(&str, &str)]| {
            decide(
                &p,
                &Request {
                    principal: jit_operator,
                    action,
                    resource,
                    tags,
                },
            )
        };
        for own in [jit_operator, jit_relay, STATE_MACHINE_ROLE, CLEANUP_ROLE] {
            assert_eq!(edit(own, &[]), Decision::ExplicitDeny, "{action} {own}");
        }
        assert_eq!(edit(MANAGED_ROLE, &[]), Decision::Allow, "{action}");
        assert_eq!(
            edit("arn:aws:iam::123456789012:role/other", &[]),
            Decision::ImplicitDeny,
            "{action}"
        );
    }

    let t = Template::load(&[("RequireManagedRoleTag", "true")]);
    let p = t.policy("OperatorPolicy");
    let r = |action, tags| Request {
        principal: OPERATOR_ROLE,
        action,
        resource: MANAGED_ROLE,
        tags,
    };
    assert_eq!(
        decide(&p, &r("iam:UpdateAssumeRolePolicy", &[])),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(
            &p,
            &r(
                "iam:UpdateAssumeRolePolicy",
                &[("aws-jit-managed", "false")]
            )
        ),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(
            &p,
            &r("iam:UpdateAssumeRolePolicy", &[("aws-jit-managed", "true")])
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, &r("iam:PutRolePolicy", &[])),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, &r("iam:PutRolePolicy", &[("aws-jit-managed", "true")])),
        Decision::Allow
    );
    assert_eq!(decide(&p, &r("iam:GetRole", &[])), Decision::Allow);
    assert_eq!(decide(&p, &r("iam:GetRolePolicy", &[])), Decision::Allow);
}

/// The Step Functions rights name this state machine and its executions, nothing wider.
#[test]
fn step_functions_rights_are_scoped_to_this_state_machine() {
    let t = Template::load(&[]);
    let p = t.policy("OperatorPolicy");
    let r = |action, resource| Request {
        principal: OPERATOR_ROLE,
        action,
        resource,
        tags: &[],
    };
    let other_machine = "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-access-2";
    let other_execution = "arn:aws:states:us-east-1:123456789012:execution:aws-jit-access-2:ar-1";
    assert_eq!(
        decide(&p, &r("states:StartExecution", STATE_MACHINE)),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, &r("states:StartExecution", other_machine)),
        Decision::ImplicitDeny
    );
    // The session cleanup (started when the operator revokes in an execution's place).
    assert_eq!(
        decide(&p, &r("states:StartExecution", CLEANUP_MACHINE)),
        Decision::Allow
    );
    for action in ["states:DescribeExecution", "states:StopExecution"] {
        assert_eq!(
            decide(&p, &r(action, EXECUTION)),
            Decision::Allow,
            "{action}"
        );
        assert_eq!(
            decide(&p, &r(action, other_execution)),
            Decision::ImplicitDeny,
            "{action}"
        );
    }
    for never in ["states:GetExecutionHistory", "sqs:GetQueueAttributes"] {
        assert_eq!(
            decide(&p, &r(never, "*")),
            Decision::ImplicitDeny,
            "{never}"
        );
    }
    let relay = t.policy("RelayPolicy");
    assert!(
        relay
            .iter()
            .all(|s| s.actions.iter().all(|a| a.starts_with("sqs:"))
                && s.resources.iter().all(|r| r.contains(":aws-jit-alerts"))),
        "the relay touches the alert queues only: {relay:#?}"
    );
}

/// One right a state machine's Task needs: `(action, resource, state)`.
type TaskNeed = (String, String, String);

/// What the Tasks of the state machine `logical` call, on which resources: SQS sends on
/// the queue their `QueueUrl` names, aws-sdk:iam calls on a managed role (the role
/// comes from the execution input), and starts of the state machine they name.
fn task_needs(t: &Template, logical: &str) -> Vec<TaskNeed> {
    let body = match &t.resource(logical)["Properties"]["DefinitionString"] {
        Yaml::Tagged(sub) if sub.tag == "!Sub" => sub.value.as_str().expect("a string"),
        other => panic!("{logical}.DefinitionString is not !Sub: {other:?}"),
    };
    let definition: Json = serde_json::from_str(&t.sub(body)).expect("the definition is JSON");
    let by_url: HashMap<String, String> = t
        .resources_of_type("AWS::SQS::Queue")
        .into_iter()
        .map(|q| (t.reference(&q), q))
        .collect();
    let mut out = Vec::new();
    // The top-level states and those of every Map and Parallel inside.
    let mut scopes = vec![definition["States"].clone()];
    let mut tasks = Vec::new();
    while let Some(states) = scopes.pop() {
        for (state, s) in states.as_object().expect("States") {
            if let Some(inner) = s["ItemProcessor"].get("States") {
                scopes.push(inner.clone());
            }
            for branch in s["Branches"].as_array().into_iter().flatten() {
                scopes.push(branch["States"].clone());
            }
            if s["Type"] == "Task" {
                tasks.push((state.clone(), s.clone()));
            }
        }
    }
    for (state, s) in &tasks {
        let resource = s["Resource"].as_str().expect("Resource");
        let integration = resource
            .strip_prefix("arn:aws:states:::")
            .unwrap_or_else(|| panic!("{state}: {resource}: teach task_needs"));
        let needs: Vec<(String, &str)> = match integration
            .trim_end_matches(".waitForTaskToken")
            .split(':')
            .collect::<Vec<_>>()[..]
        {
            ["sqs", "sendMessage"] => {
                let url = s["Parameters"]["QueueUrl"].as_str().expect("QueueUrl");
                let queue = by_url
                    .get(url)
                    .unwrap_or_else(|| panic!("{state}: {url} is none of the template's queues"));
                out.push((
                    "sqs:SendMessage".to_string(),
                    queue_arn(t, queue),
                    state.clone(),
                ));
                continue;
            }
            // IamGroup: the managed group's members, the users' group count; the trust
            // policy's calls are on a managed role (the role comes from the input).
            ["aws-sdk", "iam", api] => match api {
                "addUserToGroup" | "removeUserFromGroup" => {
                    vec![(sdk_action("iam", api), MANAGED_GROUP)]
                }
                "listGroupsForUser" => vec![(sdk_action("iam", api), IAM_USER)],
                _ => vec![(sdk_action("iam", api), MANAGED_ROLE)],
            },
            // IdentityCenter (the service prefix of the aws-sdk:ssoadmin integration is
            // sso): an assignment needs the instance, the permission set and the account.
            ["aws-sdk", "ssoadmin", api] => {
                let action = sdk_action("sso", api);
                match api {
                    "createAccountAssignment" | "deleteAccountAssignment" => vec![
                        (action.clone(), IC_INSTANCE),
                        (action.clone(), IC_PERMISSION_SET),
                        (action, IC_ACCOUNT),
                    ],
                    "describePermissionSet" => {
                        vec![(action.clone(), IC_INSTANCE), (action, IC_PERMISSION_SET)]
                    }
                    "describeAccountAssignmentCreationStatus"
                    | "describeAccountAssignmentDeletionStatus" => vec![(action, IC_INSTANCE)],
                    _ => panic!("{state}: {resource}: teach task_needs"),
                }
            }
            ["aws-sdk", "identitystore", "getUserId"] => {
                let action = sdk_action("identitystore", "getUserId");
                vec![(action.clone(), IC_STORE), (action, IC_USER)]
            }
            ["aws-sdk", "dynamodb", api] => vec![(sdk_action("dynamodb", api), HOLDERS_TABLE)],
            ["states", "startExecution"] => {
                out.push((
                    "states:StartExecution".to_string(),
                    s["Parameters"]["StateMachineArn"]
                        .as_str()
                        .expect("StateMachineArn")
                        .to_string(),
                    state.clone(),
                ));
                continue;
            }
            _ => panic!("{state}: {resource}: teach task_needs"),
        };
        for (action, target) in needs {
            out.push((action, target.to_string(), state.clone()));
        }
    }
    out
}

/// `iam:AddUserToGroup` from (`iam`, `addUserToGroup`).
fn sdk_action(prefix: &str, api: &str) -> String {
    let mut action = api.to_string();
    action[..1].make_ascii_uppercase();
    format!("{prefix}:{action}")
}

/// Like [`check`], for the two state machines' execution roles and their Tasks.
fn check_state_machines(t: &Template) -> Result<(), Vec<String>> {
    let queue_policies = t.queue_policies();
    let mut errors = Vec::new();
    for (machine, role) in [
        ("StateMachine", "StateMachineRole"),
        ("SessionCleanupStateMachine", "SessionCleanupRole"),
    ] {
        let policy = t.policy_inline(role);
        let principal = t.attribute(role, "Arn");
        let needs = task_needs(t, machine);
        for (action, resource, state) in &needs {
            let r = Request {
                principal: &principal,
                action,
                resource,
                tags: &[("aws-jit-managed", "true")],
            };
            let d = decide(&policy, &r);
            if d != Decision::Allow {
                errors.push(format!(
                    "{machine}.{state} calls {action} on {resource}, which {role} does not allow ({d:?})"
                ));
            }
            if let Some((queue, statements)) = queue_policies
                .iter()
                .find(|(q, _)| queue_arn(t, q) == *resource)
                && decide(statements, &r) == Decision::ExplicitDeny
            {
                errors.push(format!(
                    "{machine}.{state}: the queue policy of {queue} denies {role} {action}"
                ));
            }
        }
        for s in policy.iter().filter(|s| s.allow) {
            for action in &s.actions {
                for resource in &s.resources {
                    let used = needs
                        .iter()
                        .any(|(a, r, _)| a == action && (glob(resource, r) || r == resource));
                    if !used {
                        errors.push(format!(
                            "{role} {} allows {action} on {resource}, which no Task of {machine} calls: remove the grant",
                            s.sid
                        ));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Issue 11: the flow writes the session deny and starts the cleanup, the cleanup reads
/// the role and deletes the deny; their roles allow exactly that (with and without the
/// tag requirement), and the check fails on a grant taken away or one added.
#[test]
fn the_state_machines_roles_allow_exactly_what_their_tasks_call() {
    for tagged in ["false", "true"] {
        let t = Template::load(&[("RequireManagedRoleTag", tagged)]);
        if let Err(errors) = check_state_machines(&t) {
            panic!("RequireManagedRoleTag={tagged}:\n{}", errors.join("\n"));
        }
    }
    let text = std::fs::read_to_string(TEMPLATE).expect("read the template");
    let edit = |role: &str, f: &dyn Fn(&mut Vec<Yaml>)| {
        let mut doc: Yaml = serde_yaml::from_str(&text).expect("YAML");
        let statements =
            doc["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                .as_sequence_mut()
                .expect("statements");
        f(statements);
        Template::from_doc(doc, &[])
    };
    let t = edit("StateMachineRole", &|s| {
        s.retain(|s| s["Sid"].as_str() != Some("StartSessionCleanup"))
    });
    let errors = check_state_machines(&t).expect_err("a missing grant must fail");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("StateMachine.StartSessionCleanup calls states:StartExecution")),
        "{errors:#?}"
    );
    // The flow never deletes a session deny: that grant would be unused.
    let t = edit("StateMachineRole", &|s| {
        let write = s
            .iter_mut()
            .find(|s| s["Sid"].as_str() == Some("WriteSessionDenyOnManagedRoles"))
            .expect("statement");
        write["Action"] =
            serde_yaml::from_str("[iam:PutRolePolicy, iam:DeleteRolePolicy]").expect("yaml");
    });
    let errors = check_state_machines(&t).expect_err("an unused grant must fail");
    assert!(
        errors.iter().any(|e| e.contains("iam:DeleteRolePolicy")),
        "{errors:#?}"
    );
}

/// Whatever `ManagedRoleArns` covers, neither state machine can write or delete an
/// inline policy (an Allow there is a privilege escalation) of the operator's, the
/// relay's or their own roles; with `RequireManagedRoleTag` only tagged roles; reading
/// a role stays allowed. The own-role ARNs the denies spell out (a GetAtt would be a
/// circular dependency) are the roles' real ARNs.
#[test]
fn the_state_machines_never_edit_own_roles_and_honour_the_tag() {
    let jit_operator = "arn:aws:iam::123456789012:role/jit/aws-jit-operator";
    let jit_relay = "arn:aws:iam::123456789012:role/jit/aws-jit-relay";
    let managed =
        format!("arn:aws:iam::123456789012:role/jit/*,{STATE_MACHINE_ROLE},{CLEANUP_ROLE}");
    let t = Template::load(&[
        ("ManagedRoleArns", managed.as_str()),
        ("OperatorRoleArn", jit_operator),
        ("RelayRoleArn", jit_relay),
    ]);
    assert_eq!(t.attribute("StateMachineRole", "Arn"), STATE_MACHINE_ROLE);
    assert_eq!(t.attribute("SessionCleanupRole", "Arn"), CLEANUP_ROLE);
    for (role, action) in [
        ("StateMachineRole", "iam:PutRolePolicy"),
        ("SessionCleanupRole", "iam:DeleteRolePolicy"),
    ] {
        let p = t.policy_inline(role);
        let principal = t.attribute(role, "Arn");
        let r = |resource, tags| Request {
            principal: &principal,
            action,
            resource,
            tags,
        };
        for own in [jit_operator, jit_relay, STATE_MACHINE_ROLE, CLEANUP_ROLE] {
            assert_eq!(
                decide(&p, &r(own, &[])),
                Decision::ExplicitDeny,
                "{role} {own}"
            );
        }
        assert_eq!(decide(&p, &r(MANAGED_ROLE, &[])), Decision::Allow, "{role}");
        assert_eq!(
            decide(&p, &r("arn:aws:iam::123456789012:role/other", &[])),
            Decision::ImplicitDeny,
            "{role}"
        );
    }
    let t = Template::load(&[("RequireManagedRoleTag", "true")]);
    for (role, action) in [
        ("StateMachineRole", "iam:PutRolePolicy"),
        ("SessionCleanupRole", "iam:DeleteRolePolicy"),
    ] {
        let p = t.policy_inline(role);
        let principal = t.attribute(role, "Arn");
        let r = |action, tags| Request {
            principal: &principal,
            action,
            resource: MANAGED_ROLE,
            tags,
        };
        assert_eq!(
            decide(&p, &r(action, &[])),
            Decision::ImplicitDeny,
            "{role}"
        );
        assert_eq!(
            decide(&p, &r(action, &[("aws-jit-managed", "false")])),
            Decision::ImplicitDeny,
            "{role}"
        );
        assert_eq!(
            decide(&p, &r(action, &[("aws-jit-managed", "true")])),
            Decision::Allow,
            "{role}"
        );
        assert_eq!(
            decide(&p, &r("iam:GetRole", &[])),
            Decision::Allow,
            "{role}"
        );
    }
}

// ------------------------------------------------------------------------------------
// Issue 12: IdentityCenter and IamGroup
// ------------------------------------------------------------------------------------

/// The IdentityCenter and IamGroup parameters, all empty: neither method installed.
const NOT_INSTALLED: &[(&str, &str)] = &[
    ("IdentityCenterInstanceArn", ""),
    ("IdentityStoreId", ""),
    ("ManagedPermissionSetArns", ""),
    ("ManagedAccountIds", ""),
    ("ManagedGroupArns", ""),
];

/// The statement `sid` of a policy's statement list, also when it is granted only under
/// a condition (`!If [Condition, statement, !Ref AWS::NoValue]`).
fn statement_mut<'a>(statements: &'a mut [Yaml], sid: &str) -> &'a mut Yaml {
    statements
        .iter_mut()
        .map(|s| {
            if matches!(s, Yaml::Tagged(t) if t.tag == "!If") {
                let Yaml::Tagged(t) = s else { unreachable!() };
                &mut t.value[1]
            } else {
                s
            }
        })
        .find(|s| s["Sid"].as_str() == Some(sid))
        .unwrap_or_else(|| panic!("no statement {sid}"))
}

/// The methods' rights are exactly their Tasks' (with the methods installed; the check
/// above runs on that), scoped to the installer's permission sets, accounts and groups,
/// and absent when the methods are not installed. The check fails when one is taken
/// away or one the role should not have is added.
#[test]
fn grant_method_rights_are_scoped_and_absent_when_not_installed() {
    let t = Template::load(&[]);
    let sm = t.policy_inline("StateMachineRole");
    let cleanup = t.policy_inline("SessionCleanupRole");
    let operator = t.policy("OperatorPolicy");
    let ask = |p: &[Statement], principal: &str, action: &str, resource: &str| {
        decide(
            p,
            &Request {
                principal,
                action,
                resource,
                tags: &[],
            },
        )
    };
    let other_ps = "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-ffffffffffffffff";
    let other_account = "arn:aws:sso:::account/999999999999";
    let other_group = "arn:aws:iam::123456789012:group/admins-forever";
    for (p, principal) in [(&sm, STATE_MACHINE_ROLE), (&cleanup, CLEANUP_ROLE)] {
        for action in ["sso:CreateAccountAssignment", "sso:DeleteAccountAssignment"] {
            for ok in [IC_INSTANCE, IC_PERMISSION_SET, IC_ACCOUNT] {
                assert_eq!(
                    ask(p, principal, action, ok),
                    Decision::Allow,
                    "{principal} {action} {ok}"
                );
            }
            for never in [other_ps, other_account] {
                assert_eq!(
                    ask(p, principal, action, never),
                    Decision::ImplicitDeny,
                    "{principal} {action} {never}"
                );
            }
        }
        for action in ["iam:AddUserToGroup", "iam:RemoveUserFromGroup"] {
            assert_eq!(ask(p, principal, action, MANAGED_GROUP), Decision::Allow);
            assert_eq!(
                ask(p, principal, action, other_group),
                Decision::ImplicitDeny
            );
        }
    }
    // Only the flow puts a holder (a holder keeps an assignment from being revoked).
    assert_eq!(
        ask(&sm, STATE_MACHINE_ROLE, "dynamodb:PutItem", HOLDERS_TABLE),
        Decision::Allow
    );
    assert_eq!(
        ask(&cleanup, CLEANUP_ROLE, "dynamodb:PutItem", HOLDERS_TABLE),
        Decision::ImplicitDeny
    );
    // The operator never creates an assignment or a membership, nor writes a holder.
    for (action, resource) in [
        ("sso:CreateAccountAssignment", IC_PERMISSION_SET),
        ("iam:AddUserToGroup", MANAGED_GROUP),
        ("dynamodb:PutItem", HOLDERS_TABLE),
        ("dynamodb:DeleteItem", HOLDERS_TABLE),
    ] {
        assert_eq!(
            ask(&operator, OPERATOR_ROLE, action, resource),
            Decision::ImplicitDeny,
            "{action}"
        );
    }
    assert_eq!(
        ask(
            &operator,
            OPERATOR_ROLE,
            "sso:DeleteAccountAssignment",
            IC_ACCOUNT
        ),
        Decision::Allow
    );
    assert_eq!(
        ask(
            &operator,
            OPERATOR_ROLE,
            "sso:DeleteAccountAssignment",
            other_account
        ),
        Decision::ImplicitDeny
    );

    // Not installed: not one right of either method, anywhere.
    let t = Template::load(NOT_INSTALLED);
    assert_eq!(t.rules(), Ok(()));
    for (name, p) in [
        ("StateMachineRole", t.policy_inline("StateMachineRole")),
        ("SessionCleanupRole", t.policy_inline("SessionCleanupRole")),
        ("OperatorPolicy", t.policy("OperatorPolicy")),
    ] {
        for s in &p {
            for a in &s.actions {
                assert!(
                    !(a.starts_with("sso:")
                        || a.starts_with("identitystore:")
                        || a.starts_with("dynamodb:")
                        || a.contains("Group")),
                    "{name} {} grants {a} with no grant method installed",
                    s.sid
                );
            }
        }
    }
    if let Err(errors) = check_state_machines(&t) {
        // Every Task of a method not installed is refused by IAM (and never reached:
        // the flow refuses the grant first); nothing else may be missing.
        for e in &errors {
            assert!(
                [
                    "sso:",
                    "identitystore:",
                    "dynamodb:",
                    "iam:AddUserToGroup",
                    "iam:RemoveUserFromGroup",
                    "iam:ListGroupsForUser"
                ]
                .iter()
                .any(|a| e.contains(a)),
                "{e}"
            );
        }
    }

    // The check sees a method's grant taken away, and one added that no Task uses.
    let text = std::fs::read_to_string(TEMPLATE).expect("read the template");
    let edit = |role: &str, f: &dyn Fn(&mut Vec<Yaml>)| {
        let mut doc: Yaml = serde_yaml::from_str(&text).expect("YAML");
        let statements =
            doc["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                .as_sequence_mut()
                .expect("statements");
        f(statements);
        Template::from_doc(doc, &[])
    };
    let t = edit("StateMachineRole", &|s| {
        statement_mut(s, "AssignManagedPermissionSets")["Action"] =
            serde_yaml::from_str("sso:DeleteAccountAssignment").expect("yaml");
    });
    let errors = check_state_machines(&t).expect_err("a missing grant must fail");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("IcCreate calls sso:CreateAccountAssignment")),
        "{errors:#?}"
    );
    let t = edit("SessionCleanupRole", &|s| {
        statement_mut(s, "ReleaseGrants")["Action"] =
            serde_yaml::from_str("[dynamodb:DeleteItem, dynamodb:Query, dynamodb:PutItem]")
                .expect("yaml");
    });
    let errors = check_state_machines(&t).expect_err("an unused grant must fail");
    assert!(
        errors.iter().any(|e| e.contains("dynamodb:PutItem")),
        "{errors:#?}"
    );
}

/// The holders table's resource policy: whatever identity policies say (an admin's
/// included), only the flow puts or updates a holder, only the two state machines
/// delete one.
#[test]
fn only_the_state_machines_write_the_holders_table() {
    let t = Template::load(&[]);
    let policy: Vec<Statement> = t
        .resolve(&t.resource("GrantHoldersTable")["Properties"]["ResourcePolicy"]["PolicyDocument"])
        .expect("a resource policy")["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| Statement::from("GrantHoldersTable", s))
        .collect();
    let admin = "arn:aws:iam::123456789012:role/Admin";
    let denied = |principal: &str, action: &str| {
        decide(
            &policy,
            &Request {
                principal,
                action,
                resource: HOLDERS_TABLE,
                tags: &[],
            },
        ) == Decision::ExplicitDeny
    };
    for write in [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:PartiQLInsert",
        "dynamodb:PartiQLUpdate",
    ] {
        assert!(!denied(STATE_MACHINE_ROLE, write), "{write}");
        for other in [CLEANUP_ROLE, OPERATOR_ROLE, RELAY_ROLE, admin] {
            assert!(denied(other, write), "{other} {write}");
        }
    }
    for delete in ["dynamodb:DeleteItem", "dynamodb:PartiQLDelete"] {
        assert!(!denied(STATE_MACHINE_ROLE, delete));
        assert!(!denied(CLEANUP_ROLE, delete));
        for other in [OPERATOR_ROLE, RELAY_ROLE, admin] {
            assert!(denied(other, delete), "{other} {delete}");
        }
    }
    // The spelled-out role ARNs are the roles'.
    assert_eq!(t.attribute("StateMachineRole", "Arn"), STATE_MACHINE_ROLE);
    assert_eq!(t.attribute("SessionCleanupRole", "Arn"), CLEANUP_ROLE);
    assert_eq!(t.attribute("GrantHoldersTable", "Arn"), HOLDERS_TABLE);
}

/// What the installer may name: single permission sets, accounts and groups, never a
/// wildcard; Identity Center all or nothing.
#[test]
fn grant_method_parameters_refuse_wildcards_and_half_an_installation() {
    let t = Template::load(&[]);
    for (param, ok, bad) in [
        (
            "ManagedPermissionSetArns",
            vec![IC_PERMISSION_SET, ""],
            vec![
                "*",
                "arn:aws:sso:::permissionSet/*",
                "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/*",
                "arn:aws:sso:::instance/ssoins-1234567890abcdef/ps-0123456789abcdef",
            ],
        ),
        (
            "ManagedAccountIds",
            vec!["111111111111", ""],
            vec!["*", "11111111111", "1111111111111"],
        ),
        (
            "ManagedGroupArns",
            vec![MANAGED_GROUP, "arn:aws:iam::123456789012:group/admins", ""],
            vec![
                "*",
                "arn:aws:iam::123456789012:group/*",
                "arn:aws:iam::*:group/admins",
            ],
        ),
        (
            "IdentityCenterInstanceArn",
            vec![IC_INSTANCE, ""],
            vec!["*", "arn:aws:sso:::instance/*"],
        ),
        ("IdentityStoreId", vec![IC_STORE_ID, ""], vec!["*", "d-*"]),
    ] {
        let re = t.allowed_pattern(param);
        for v in ok {
            assert!(re.is_match(v), "{param} refuses {v}");
        }
        for v in bad {
            assert!(!re.is_match(v), "{param} accepts {v}");
        }
    }
    assert_eq!(Template::load(&[]).rules(), Ok(()));
    assert_eq!(Template::load(NOT_INSTALLED).rules(), Ok(()));
    for half in [
        vec![("IdentityStoreId", "")],
        vec![("ManagedAccountIds", "")],
        vec![("ManagedPermissionSetArns", "")],
        vec![("IdentityCenterInstanceArn", "")],
    ] {
        assert!(
            Template::load(&half).rules().is_err(),
            "{half:?} must be refused"
        );
    }
}
