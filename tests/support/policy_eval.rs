//! A real IAM policy evaluator for tests: moto evaluates no policy, so what aws-jit's
//! trust statements and session denies *mean* is proven here, by
//! `@cloud-copilot/iam-simulate` (hack/policy-eval/README.md says why that one, its
//! version and its gaps).
//!
//! The evaluator is a CLI, `AWS_JIT_POLICY_EVAL` (set by `hack/ensure-tools.sh`): it reads
//! a JSON array of cases on stdin and prints one verdict per line. [`evaluate`] runs a
//! batch; [`assume_role`] and [`session_call`] build the request the way AWS does for the
//! two calls that matter:
//!
//! - `sts:AssumeRole` on the role, judged by its trust policy. With a source identity, AWS
//!   also authorizes `sts:SetSourceIdentity` in the same call; both must be allowed.
//! - any call made with a role session, judged by the role's identity policies, in a
//!   request context AWS fills in for role sessions: `aws:userid` =
//!   `<role id>:<session name>`, `aws:PrincipalArn` = the role's ARN (not the session's),
//!   `aws:SourceIdentity`, `aws:TokenIssueTime`, `aws:CurrentTime`.
//!
//! The evaluator does not derive these keys from the principal: the mapping above is this
//! module's, taken from AWS's documentation of the global condition keys.
//!
//! Every verdict is checked: an evaluator error (a document it cannot read, an operator
//! it does not know, a value it cannot parse) panics with its message, and so does a
//! context key the evaluator dropped, since a dropped key would silently turn a condition
//! into "key missing".
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The evaluator's verdict on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Decision {
    Allowed,
    /// No statement allowed it.
    ImplicitlyDenied,
    /// A Deny matched: it wins over every Allow.
    ExplicitlyDenied,
}

impl Decision {
    /// The verdict of one AWS call that needs every one of `parts` allowed: an explicit
    /// deny anywhere wins, then any implicit deny.
    pub fn all(parts: impl IntoIterator<Item = Decision>) -> Decision {
        parts
            .into_iter()
            .fold(Decision::Allowed, |acc, d| match (acc, d) {
                (Decision::ExplicitlyDenied, _) | (_, Decision::ExplicitlyDenied) => {
                    Decision::ExplicitlyDenied
                }
                (Decision::ImplicitlyDenied, _) | (_, Decision::ImplicitlyDenied) => {
                    Decision::ImplicitlyDenied
                }
                _ => Decision::Allowed,
            })
    }
}

/// One request to judge (the CLI's input shape; see hack/policy-eval/evaluate.mjs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Case {
    pub name: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_account: Option<String>,
    /// The principal's identity policies (documents).
    pub policies: Vec<Value>,
    /// The resource's policy: a role's trust policy for `sts:AssumeRole`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_policy: Option<Value>,
    pub context: BTreeMap<String, Value>,
    /// Keys to keep where AWS's per-action key list omits them (see the CLI).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_context_keys: Vec<String>,
}

/// What the strict run said, when keys were kept (see [`Verdict::strict`]).
#[derive(Clone, Debug, Deserialize)]
pub struct StrictVerdict {
    pub decision: Decision,
    #[serde(default)]
    pub allow_sids: Vec<String>,
    #[serde(default)]
    pub deny_sids: Vec<String>,
    #[serde(default)]
    pub missing_context_keys: Vec<String>,
}

/// The evaluator's answer to one [`Case`].
#[derive(Clone, Debug, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub decision: Decision,
    /// Sids of the Allow statements that matched ("" for a statement without one).
    #[serde(default)]
    pub allow_sids: Vec<String>,
    /// Sids of the Deny statements that matched.
    #[serde(default)]
    pub deny_sids: Vec<String>,
    /// Context keys the evaluator dropped (not in AWS's list for the action).
    #[serde(default)]
    pub ignored_context_keys: Vec<String>,
    /// Keys a condition asked for that the context lacks.
    #[serde(default)]
    pub missing_context_keys: Vec<String>,
    /// Keys kept although AWS's list for the action omits them.
    #[serde(default)]
    pub kept_context_keys: Vec<String>,
    /// With kept keys: the verdict and explanation without them (the evaluator explains
    /// only that run; `allow_sids` / `deny_sids` are then empty).
    #[serde(default)]
    pub strict: Option<StrictVerdict>,
}

/// The CLI's raw answer: its exit status and one JSON value per case. For tests of the
/// evaluator itself (an `"Error"` verdict is not a panic here).
pub fn evaluate_raw(cases: &[Case]) -> (std::process::ExitStatus, Vec<Value>, String) {
    let cli = std::env::var_os("AWS_JIT_POLICY_EVAL").unwrap_or_else(|| {
        panic!(
            "AWS_JIT_POLICY_EVAL is not set: run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)"
        )
    });
    let input = serde_json::to_vec(cases).expect("cases serialize");
    let mut child = Command::new(&cli)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the policy evaluator {}: {e}", cli.to_string_lossy()));
    // Written from a thread: a large batch must not dead-lock against a full stdout pipe.
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .expect("wait for the policy evaluator");
    writer
        .join()
        .expect("writer thread")
        .expect("write cases to the policy evaluator");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("policy evaluator printed {l:?} ({e}); stderr: {stderr}")
            })
        })
        .collect();
    (out.status, lines, stderr)
}

/// Judges a batch (one evaluator process). Panics on any error, on a verdict count that
/// is not the case count, and on a context key the evaluator dropped that the case did
/// not ask to keep.
pub fn evaluate(cases: &[Case]) -> Vec<Verdict> {
    let (status, lines, stderr) = evaluate_raw(cases);
    let errors: Vec<&Value> = lines.iter().filter(|l| l["decision"] == "Error").collect();
    assert!(
        errors.is_empty() && status.success(),
        "the policy evaluator refused ({status}): {errors:?}; stderr: {stderr}"
    );
    assert_eq!(
        lines.len(),
        cases.len(),
        "one verdict per case; stderr: {stderr}"
    );
    lines
        .into_iter()
        .zip(cases)
        .map(|(line, case)| {
            let verdict: Verdict = serde_json::from_value(line.clone())
                .unwrap_or_else(|e| panic!("verdict {line}: {e}"));
            assert!(
                verdict.ignored_context_keys.is_empty(),
                "{}: the evaluator dropped context keys {:?} for {} (not in AWS's list for the \
                 action): a condition on them would read 'missing'",
                case.name,
                verdict.ignored_context_keys,
                case.action
            );
            verdict
        })
        .collect()
}

/// `2026-12-01T13:00:00Z`: the form IAM's date conditions and aws-jit's documents use.
pub fn iso(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn str_value(s: &str) -> Value {
    Value::String(s.to_string())
}

/// The account of an ARN (`arn:aws:iam::<account>:…`).
fn account_of(arn: &str) -> &str {
    arn.split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("no account in {arn}"))
}

/// The cases of one `sts:AssumeRole` call on `role_arn` by `caller_arn`: the call itself
/// and, with a source identity, the `sts:SetSourceIdentity` AWS authorizes in the same
/// call (same request context; see [`assume_role`]).
pub fn assume_role_cases(
    trust_doc: &Value,
    role_arn: &str,
    caller_arn: &str,
    session_name: &str,
    source_identity: Option<&str>,
    at: Timestamp,
) -> Vec<Case> {
    let mut context = BTreeMap::from([
        ("aws:CurrentTime".to_string(), str_value(&iso(at))),
        (
            "aws:EpochTime".to_string(),
            str_value(&at.as_second().to_string()),
        ),
        ("aws:PrincipalArn".to_string(), str_value(caller_arn)),
        (
            "aws:PrincipalAccount".to_string(),
            str_value(account_of(caller_arn)),
        ),
        ("sts:RoleSessionName".to_string(), str_value(session_name)),
    ]);
    if let Some(si) = source_identity {
        context.insert("sts:SourceIdentity".to_string(), str_value(si));
    }
    let base = Case {
        name: format!(
            "{caller_arn} AssumeRole {role_arn} as {session_name} ({source_identity:?}) at {}",
            iso(at)
        ),
        principal: caller_arn.to_string(),
        action: "sts:AssumeRole".to_string(),
        resource: role_arn.to_string(),
        resource_policy: Some(trust_doc.clone()),
        context,
        ..Case::default()
    };
    let mut cases = vec![base.clone()];
    if source_identity.is_some() {
        cases.push(Case {
            name: format!("{} (sts:SetSourceIdentity)", base.name),
            action: "sts:SetSourceIdentity".to_string(),
            // AWS's Service Authorization Reference lists sts:RoleSessionName for
            // sts:AssumeRole only, so the evaluator would drop it here; but both actions
            // are authorized for one AssumeRole request, whose session name is a
            // parameter of that request (see hack/policy-eval/README.md).
            keep_context_keys: vec!["sts:RoleSessionName".to_string()],
            ..base
        });
    }
    cases
}

/// Both verdicts of one `sts:AssumeRole` call: the call's, and with a source identity the
/// `sts:SetSourceIdentity` one.
#[derive(Clone, Debug)]
pub struct AssumeRoleVerdict {
    pub assume_role: Verdict,
    pub set_source_identity: Option<Verdict>,
}

impl AssumeRoleVerdict {
    /// The call's outcome: every authorized action must be allowed.
    pub fn decision(&self) -> Decision {
        Decision::all(
            std::iter::once(self.assume_role.decision)
                .chain(self.set_source_identity.as_ref().map(|v| v.decision)),
        )
    }
}

/// Judges `sts:AssumeRole` of `role_arn` by `caller_arn` with the given session name and
/// (optional) source identity at `at`, against the role's trust policy `trust_doc` alone
/// (the caller's own policies are not consulted: a same-account principal named in the
/// trust policy needs none).
pub fn assume_role_detail(
    trust_doc: &Value,
    role_arn: &str,
    caller_arn: &str,
    session_name: &str,
    source_identity: Option<&str>,
    at: Timestamp,
) -> AssumeRoleVerdict {
    let cases = assume_role_cases(
        trust_doc,
        role_arn,
        caller_arn,
        session_name,
        source_identity,
        at,
    );
    let mut verdicts = evaluate(&cases).into_iter();
    let assume_role = verdicts.next().expect("AssumeRole verdict");
    AssumeRoleVerdict {
        assume_role,
        set_source_identity: verdicts.next(),
    }
}

/// [`assume_role_detail`]'s outcome.
pub fn assume_role(
    trust_doc: &Value,
    role_arn: &str,
    caller_arn: &str,
    session_name: &str,
    source_identity: Option<&str>,
    at: Timestamp,
) -> Decision {
    assume_role_detail(
        trust_doc,
        role_arn,
        caller_arn,
        session_name,
        source_identity,
        at,
    )
    .decision()
}

/// A role session: what `sts:AssumeRole` returned and when.
#[derive(Clone, Debug)]
pub struct RoleSession {
    /// `arn:aws:iam::<account>:role/<path/>name`
    pub role_arn: String,
    /// The role's unique id (`AROA…`), the first half of `aws:userid`.
    pub role_id: String,
    pub session_name: String,
    pub source_identity: Option<String>,
    /// `aws:TokenIssueTime`.
    pub issued_at: Timestamp,
}

impl RoleSession {
    /// The session's principal: `arn:aws:sts::<account>:assumed-role/<role name>/<session>`
    /// (the role's path is not part of it).
    pub fn arn(&self) -> String {
        let name = self
            .role_arn
            .rsplit('/')
            .next()
            .expect("role ARN has a name");
        format!(
            "arn:aws:sts::{}:assumed-role/{name}/{}",
            account_of(&self.role_arn),
            self.session_name
        )
    }

    /// `aws:userid` of a role session: `<role id>:<session name>`.
    pub fn userid(&self) -> String {
        format!("{}:{}", self.role_id, self.session_name)
    }

    /// The request context AWS builds for a call made with this session at `at`.
    pub fn context(&self, at: Timestamp) -> BTreeMap<String, Value> {
        let mut context = BTreeMap::from([
            ("aws:userid".to_string(), str_value(&self.userid())),
            ("aws:PrincipalArn".to_string(), str_value(&self.role_arn)),
            (
                "aws:PrincipalAccount".to_string(),
                str_value(account_of(&self.role_arn)),
            ),
            ("aws:PrincipalType".to_string(), str_value("AssumedRole")),
            (
                "aws:TokenIssueTime".to_string(),
                str_value(&iso(self.issued_at)),
            ),
            ("aws:CurrentTime".to_string(), str_value(&iso(at))),
            (
                "aws:EpochTime".to_string(),
                str_value(&at.as_second().to_string()),
            ),
        ]);
        if let Some(si) = &self.source_identity {
            context.insert("aws:SourceIdentity".to_string(), str_value(si));
        }
        context
    }
}

/// The case of one call (`action` on `resource`) made with `session` at `at`, judged by
/// the role's identity policies (documents: managed and inline alike).
pub fn session_case(
    identity_policies: &[Value],
    session: &RoleSession,
    at: Timestamp,
    action: &str,
    resource: &str,
) -> Case {
    assert!(
        at >= session.issued_at,
        "a session cannot call before it was issued"
    );
    Case {
        name: format!("{} {action} {resource} at {}", session.arn(), iso(at)),
        principal: session.arn(),
        action: action.to_string(),
        resource: resource.to_string(),
        // The role's account: S3 ARNs and "*" carry none.
        resource_account: Some(account_of(&session.role_arn).to_string()),
        policies: identity_policies.to_vec(),
        context: session.context(at),
        ..Case::default()
    }
}

/// Judges one call made with `session` at `at`.
pub fn session_call_detail(
    identity_policies: &[Value],
    session: &RoleSession,
    at: Timestamp,
    action: &str,
    resource: &str,
) -> Verdict {
    evaluate(&[session_case(
        identity_policies,
        session,
        at,
        action,
        resource,
    )])
    .pop()
    .expect("one verdict")
}

/// [`session_call_detail`]'s decision.
pub fn session_call(
    identity_policies: &[Value],
    session: &RoleSession,
    at: Timestamp,
    action: &str,
    resource: &str,
) -> Decision {
    session_call_detail(identity_policies, session, at, action, resource).decision
}
