//! RBAC and the admission policies, exercised as the real users of the stack.
use std::time::Duration;

use crate::support::kube::{KubeStack, User};
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const WAIT: Duration = Duration::from_secs(30);

fn create_request(
    kube: &KubeStack,
    creator: User,
    ns: &str,
    name: &str,
    requester: &str,
) -> std::process::Output {
    let yaml = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  role: prod-admin\n  requester: {requester}\n  reason: admission test\n"
    );
    kube.kubectl_stdin(creator, &["create", "-f", "-"], &yaml)
}

/// What the controller does when it takes up a request: a server-side apply of status
/// with its field manager. `approvals: []` makes the list exist so approvers can append.
fn operator_applies_status(kube: &KubeStack, ns: &str, name: &str, phase: &str) {
    let yaml = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         status:\n  phase: {phase}\n  message: operator wrote this\n  approvals: []\n  revocations: []\n"
    );
    succeeded(&kube.kubectl_stdin(
        User::Operator,
        &[
            "apply",
            "--server-side",
            "--field-manager=aws-jit",
            "--subresource=status",
            "-f",
            "-",
        ],
        &yaml,
    ));
}

fn vote(
    kube: &KubeStack,
    as_user: User,
    ns: &str,
    name: &str,
    value: &str,
) -> std::process::Output {
    kube.append_approval(as_user, ns, name, value)
}

/// `as_user` approves, in their own name.
fn approves(kube: &KubeStack, as_user: User, ns: &str, name: &str) {
    let approval = format!(
        r#"{{"approver":"{}","decision":"Approve"}}"#,
        as_user.name()
    );
    succeeded(&vote(kube, as_user, ns, name, &approval));
}

/// A merge patch of status, `{"status": <status>}`.
fn merge_status(
    kube: &KubeStack,
    as_user: User,
    ns: &str,
    name: &str,
    status: &str,
) -> std::process::Output {
    let patch = format!(r#"{{"status":{status}}}"#);
    kube.patch_status(as_user, ns, name, "merge", &patch)
}

/// Asks for an early revoke: appends `value` to `status.revocations` (the README's
/// command).
fn revoke(
    kube: &KubeStack,
    as_user: User,
    ns: &str,
    name: &str,
    value: &str,
) -> std::process::Output {
    let patch = format!(r#"[{{"op":"add","path":"/status/revocations/-","value":{value}}}]"#);
    kube.patch_status(as_user, ns, name, "json", &patch)
}

/// `status.revocations` as stored (empty when absent).
fn revocations(kube: &KubeStack, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let out = succeeded(&kube.kubectl(
        User::Admin,
        &["get", "accessrequest", name, "-n", ns, "-o", "json"],
    ));
    let obj: serde_json::Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    obj["status"]["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A request of `requester`'s that the operator has granted (phase `Active`).
async fn active(kube: &KubeStack, prefix: &str, requester: User) -> (String, String) {
    let (ns, name) = awaiting(kube, prefix, requester).await;
    operator_applies_status(kube, &ns, &name, "Active");
    (ns, name)
}

fn approvals(kube: &KubeStack, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let out = succeeded(&kube.kubectl(
        User::Admin,
        &["get", "accessrequest", name, "-n", ns, "-o", "json"],
    ));
    let obj: serde_json::Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    obj["status"]["approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn awaiting(kube: &KubeStack, prefix: &str, requester: User) -> (String, String) {
    let ns = kube.create_namespace(prefix).await;
    let creator = if matches!(requester, User::Alice | User::Bob) {
        requester
    } else {
        User::GitOps
    };
    succeeded(&create_request(kube, creator, &ns, "req", requester.name()));
    operator_applies_status(kube, &ns, "req", "AwaitingApproval");
    (ns, "req".to_string())
}

#[tokio::test]
async fn requester_must_be_the_creator_unless_trusted() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("adm-create").await;
    refused(
        &create_request(kube, User::Alice, &ns, "for-bob", "bob"),
        "spec.requester must be you (alice)",
    );
    succeeded(&create_request(
        kube,
        User::Alice,
        &ns,
        "for-alice",
        "alice",
    ));
    // The GitOps controller's service account is a trusted submitter, by name (the
    // admission parameter), which no RBAC wildcard confers.
    succeeded(&create_request(
        kube,
        User::GitOps,
        &ns,
        "gitops-for-bob",
        "bob",
    ));
    // An approver holds no create right at all.
    refused(
        &create_request(kube, User::Carol, &ns, "carol", "carol"),
        "Forbidden",
    );
}

#[tokio::test]
async fn approver_appends_an_approval_in_their_own_name() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-own", User::Alice).await;
    succeeded(&vote(
        kube,
        User::Carol,
        &ns,
        &name,
        r#"{"approver":"carol","decision":"Approve","comment":"ok"}"#,
    ));
    let got = approvals(kube, &ns, &name);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["approver"], "carol");
    assert_eq!(got[0]["decision"], "Approve");
    assert_eq!(got[0]["via"], "kubectl", "the apiserver defaults via");
}

#[tokio::test]
async fn forged_approver_is_refused() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-forged", User::Alice).await;
    refused(
        &vote(
            kube,
            User::Carol,
            &ns,
            &name,
            r#"{"approver":"dave","decision":"Approve"}"#,
        ),
        r#"approver must be "carol""#,
    );
    assert!(approvals(kube, &ns, &name).is_empty());
}

#[tokio::test]
async fn self_approval_is_refused() {
    let kube = &stack().kube;
    // carol is an approver; GitOps submits a request for her.
    let (ns, name) = awaiting(kube, "adm-self", User::Carol).await;
    for decision in ["Approve", "Deny"] {
        refused(
            &vote(
                kube,
                User::Carol,
                &ns,
                &name,
                &format!(r#"{{"approver":"carol","decision":"{decision}"}}"#),
            ),
            "you may not approve or deny your own AccessRequest",
        );
    }
    // Someone else may.
    approves(kube, User::Dave, &ns, &name);
}

/// Requesters reach the status subresource (to ask for revocation), so the status
/// rules are what keep them from voting for themselves or writing the operator's fields.
/// (A requester's vote on someone else's request, in their own name, passes admission;
/// the controller counts only listed approvers.)
#[tokio::test]
async fn requester_cannot_approve_or_write_operator_status() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-requester", User::Alice).await;
    refused(
        &vote(
            kube,
            User::Alice,
            &ns,
            &name,
            r#"{"approver":"alice","decision":"Approve"}"#,
        ),
        "you may not approve or deny your own AccessRequest",
    );
    refused(
        &vote(
            kube,
            User::Bob,
            &ns,
            &name,
            r#"{"approver":"carol","decision":"Approve"}"#,
        ),
        r#"approver must be "bob""#,
    );
    refused(
        &merge_status(kube, User::Alice, &ns, &name, r#"{"phase":"Active"}"#),
        "only the aws-jit operator may change status fields other than approvals",
    );
    assert!(approvals(kube, &ns, &name).is_empty());
}

#[tokio::test]
async fn approvals_are_append_only_and_one_per_person() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-append", User::Alice).await;
    approves(kube, User::Carol, &ns, &name);
    // Another approver may not change or remove carol's vote.
    let change = r#"[{"op":"replace","path":"/status/approvals/0/decision","value":"Deny"}]"#;
    refused(
        &kube.patch_status(User::Dave, &ns, &name, "json", change),
        "status.approvals is append-only",
    );
    let remove = r#"[{"op":"remove","path":"/status/approvals/0"}]"#;
    refused(
        &kube.patch_status(User::Dave, &ns, &name, "json", remove),
        "status.approvals is append-only",
    );
    // Nor may carol change her own mind after the fact.
    refused(
        &kube.patch_status(User::Carol, &ns, &name, "json", change),
        "status.approvals is append-only",
    );
    // A second vote by the same person is a duplicate key of the list-map.
    refused(
        &vote(
            kube,
            User::Carol,
            &ns,
            &name,
            r#"{"approver":"carol","decision":"Deny"}"#,
        ),
        "Duplicate value",
    );
    let got = approvals(kube, &ns, &name);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["decision"], "Approve");
}

#[tokio::test]
async fn only_the_operator_records_slack_votes() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-slack", User::Alice).await;
    refused(
        &vote(
            kube,
            User::Carol,
            &ns,
            &name,
            r#"{"approver":"carol","decision":"Approve","via":"slack"}"#,
        ),
        "approvals via Slack are recorded only by the aws-jit operator",
    );
    // The relay, for the person Slack identified.
    succeeded(&vote(
        kube,
        User::Relay,
        &ns,
        &name,
        r#"{"approver":"dave","decision":"Approve","via":"slack"}"#,
    ));
    // The controller is the operator too.
    succeeded(&vote(
        kube,
        User::Operator,
        &ns,
        &name,
        r#"{"approver":"erin","decision":"Approve","via":"slack"}"#,
    ));
    let got = approvals(kube, &ns, &name);
    assert_eq!(got[0]["via"], "slack");
    assert_eq!(got[1]["via"], "slack");
}

/// The relay speaks for whoever Slack identified, but only as Slack, never for the
/// requester, and append-only like everyone else.
#[tokio::test]
async fn the_relay_records_slack_votes_only() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-relay", User::Alice).await;
    refused(
        &vote(
            kube,
            User::Relay,
            &ns,
            &name,
            r#"{"approver":"alice","decision":"Approve","via":"slack"}"#,
        ),
        "you may not approve or deny your own AccessRequest",
    );
    refused(
        &vote(
            kube,
            User::Relay,
            &ns,
            &name,
            r#"{"approver":"carol","decision":"Approve","via":"kubectl"}"#,
        ),
        "the Slack relay records only votes via slack",
    );
    succeeded(&vote(
        kube,
        User::Relay,
        &ns,
        &name,
        r#"{"approver":"carol","decision":"Approve","via":"slack"}"#,
    ));
    let change = r#"[{"op":"replace","path":"/status/approvals/0/decision","value":"Deny"}]"#;
    refused(
        &kube.patch_status(User::Relay, &ns, &name, "json", change),
        "status.approvals is append-only",
    );
    // RBAC: no finalizer (main resource) writes, no deletes, no Secrets.
    refused(
        &kube.kubectl(
            User::Relay,
            &[
                "patch",
                "ar",
                &name,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        ),
        "Forbidden",
    );
    refused(
        &kube.kubectl(User::Relay, &["delete", "ar", &name, "-n", &ns]),
        "Forbidden",
    );
    refused(
        &kube.kubectl(User::Relay, &["get", "secrets", "-n", "aws-jit-system"]),
        "Forbidden",
    );
    let got = approvals(kube, &ns, &name);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["approver"], "carol");
}

/// Values an attacker might try for status fields other than approvals and revocation.
/// A field of the CRD not listed here is attacked with a value made from its schema.
const OPERATOR_FIELDS: [(&str, &str); 8] = [
    ("phase", r#""Active""#),
    (
        "conditions",
        r#"[{"type":"Ready","status":"True","reason":"Granted","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]"#,
    ),
    ("observedGeneration", "7"),
    (
        "executionArn",
        r#""arn:aws:states:us-east-1:123456789012:execution:sm:x""#,
    ),
    ("grantedAt", r#""2026-01-01T00:00:00Z""#),
    ("expiresAt", r#""2030-01-01T00:00:00Z""#),
    ("revokedAt", r#""2026-01-01T00:00:00Z""#),
    ("message", r#""approved by carol""#),
];

/// Status fields that people other than the operator write, each with its own rules.
const NOT_OPERATOR_ONLY: [&str; 5] = [
    "approvals",
    "revocations",
    "extensions",
    "extensionApprovals",
    "reviews",
];

/// The relay's own state: written by operator identities (controller and relay) only.
const RELAY_STATE: &str = "slack";

/// Every status field of the CRD that only the operator may write, each with a value
/// to try (from [`OPERATOR_FIELDS`], or made from the field's schema).
fn operator_fields() -> Vec<(String, String)> {
    let crd = aws_jit::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "AccessRequest")
        .expect("AccessRequest CRD");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
    let props = schema["openAPIV3Schema"]["properties"]["status"]["properties"]
        .as_object()
        .expect("status properties")
        .clone();
    props
        .iter()
        .filter(|(k, _)| !NOT_OPERATOR_ONLY.contains(&k.as_str()))
        .map(|(field, prop)| {
            let value = match OPERATOR_FIELDS.iter().find(|(f, _)| f == field) {
                Some((_, v)) => v.to_string(),
                None => match prop["type"].as_str() {
                    Some("string") => r#""forged""#.to_string(),
                    Some("integer") | Some("number") => "7".to_string(),
                    Some("boolean") => "true".to_string(),
                    Some("array") => "[]".to_string(),
                    // An object with its required fields, so the schema lets it through
                    // to admission.
                    _ => {
                        let required: serde_json::Map<String, serde_json::Value> = prop["required"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r.as_str())
                            .map(|r| (r.to_string(), serde_json::json!("forged")))
                            .collect();
                        serde_json::Value::Object(required).to_string()
                    }
                },
            };
            (field.clone(), value)
        })
        .collect()
}

#[tokio::test]
async fn approvers_cannot_touch_any_other_status_field() {
    let fields = operator_fields();
    assert!(fields.len() >= OPERATOR_FIELDS.len(), "{fields:?}");
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-fields", User::Alice).await;
    for (field, value) in &fields {
        let patch = format!(r#"{{"status":{{"{field}":{value}}}}}"#);
        for who in [User::Carol, User::Alice] {
            let out = kube.patch_status(who, &ns, &name, "merge", &patch);
            refused(
                &out,
                &format!(
                    "only the aws-jit operator may change status fields other than approvals, revocations, extensions, extensionApprovals and reviews (changed: {field})"
                ),
            );
        }
        // The relay keeps its own state, and nothing else of the operator's.
        let out = kube.patch_status(User::Relay, &ns, &name, "merge", &patch);
        if field == RELAY_STATE {
            succeeded(&out);
        } else {
            refused(
                &out,
                "only the aws-jit operator may change status fields other than approvals",
            );
        }
    }
    // Removing a field the operator wrote is a change too.
    refused(
        &merge_status(kube, User::Carol, &ns, &name, r#"{"message":null}"#),
        "(changed: message)",
    );
    // Sneaking a field change in beside a legitimate vote is refused as a whole.
    let sneaky = r#"[{"op":"add","path":"/status/approvals/-","value":{"approver":"carol","decision":"Approve"}},
                     {"op":"replace","path":"/status/phase","value":"Active"}]"#;
    refused(
        &kube.patch_status(User::Carol, &ns, &name, "json", sneaky),
        "only the aws-jit operator may change status fields other than approvals",
    );
    assert!(approvals(kube, &ns, &name).is_empty());
}

#[tokio::test]
async fn operator_status_apply_keeps_concurrent_approvals() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-ssa", User::Alice).await;
    approves(kube, User::Carol, &ns, &name);
    // The operator applies its view again, still listing approvals as [] (it never owns
    // an approver's entry), and moves the phase on.
    operator_applies_status(kube, &ns, &name, "Approved");
    approves(kube, User::Dave, &ns, &name);
    operator_applies_status(kube, &ns, &name, "Active");
    let got: Vec<String> = approvals(kube, &ns, &name)
        .iter()
        .map(|a| a["approver"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, ["carol", "dave"]);
    let phase = succeeded(&kube.kubectl(
        User::Alice,
        &[
            "get",
            "ar",
            &name,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}",
        ],
    ));
    assert_eq!(phase, "Active");
}

#[tokio::test]
async fn only_the_operator_removes_the_revoke_finalizer() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("adm-finalizer").await;
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: erin-edits\n  namespace: {ns}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'test:request-editor'}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: erin}}]\n"
        ),
    ));
    succeeded(&create_request(kube, User::Alice, &ns, "held", "alice"));
    let add = r#"{"metadata":{"finalizers":["aws-jit.io/revoke"]}}"#;
    succeeded(&kube.kubectl(
        User::Operator,
        &["patch", "ar", "held", "-n", &ns, "--type=merge", "-p", add],
    ));
    let drop = r#"{"metadata":{"finalizers":null}}"#;
    refused(
        &kube.kubectl(
            User::Erin,
            &["patch", "ar", "held", "-n", &ns, "--type=merge", "-p", drop],
        ),
        "only the aws-jit operator may remove the aws-jit.io/revoke finalizer",
    );
    // Other metadata edits stay possible for someone with update rights.
    succeeded(&kube.kubectl(
        User::Erin,
        &["label", "ar", "held", "-n", &ns, "team=payments"],
    ));
    succeeded(&kube.kubectl(
        User::Operator,
        &["patch", "ar", "held", "-n", &ns, "--type=merge", "-p", drop],
    ));
}

#[tokio::test]
async fn claimed_groups_must_be_the_users_own() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("adm-groups").await;
    let with_group = |name: &str, group: &str| {
        format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  role: prod-admin\n  requester: alice\n  requesterGroup: {group}\n  reason: groups\n"
        )
    };
    refused(
        &kube.kubectl_stdin(
            User::Alice,
            &["create", "-f", "-"],
            &with_group("as-sre", "sre"),
        ),
        "spec.requesterGroup must be one of your own groups (developers",
    );
    succeeded(&kube.kubectl_stdin(
        User::Alice,
        &["create", "-f", "-"],
        &with_group("as-dev", "developers"),
    ));
    operator_applies_status(kube, &ns, "as-dev", "AwaitingApproval");
    refused(
        &vote(
            kube,
            User::Dave,
            &ns,
            "as-dev",
            r#"{"approver":"dave","decision":"Approve","group":"admins"}"#,
        ),
        "you may only vote as a member of one of your own groups",
    );
    succeeded(&vote(
        kube,
        User::Carol,
        &ns,
        "as-dev",
        r#"{"approver":"carol","decision":"Approve","group":"sre"}"#,
    ));
    assert_eq!(approvals(kube, &ns, "as-dev")[0]["group"], "sre");
}

#[tokio::test]
async fn requester_requests_revocation_in_their_own_name() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-own", User::Alice).await;
    succeeded(&revoke(
        kube,
        User::Alice,
        &ns,
        &name,
        r#"{"requestedBy":"alice","reason":"done","time":"2026-01-01T00:00:00Z"}"#,
    ));
    let got = revocations(kube, &ns, &name);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["requestedBy"], "alice");
    assert_eq!(got[0]["reason"], "done");
    // The operator's next status apply does not own the entries, so it keeps them.
    operator_applies_status(kube, &ns, &name, "Revoked");
    assert_eq!(revocations(kube, &ns, &name), got);
}

#[tokio::test]
async fn forged_revocation_is_refused() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-forged", User::Alice).await;
    refused(
        &revoke(kube, User::Alice, &ns, &name, r#"{"requestedBy":"carol"}"#),
        r#"requestedBy must be "alice""#,
    );
    refused(
        &revoke(kube, User::Carol, &ns, &name, r#"{"requestedBy":"alice"}"#),
        r#"requestedBy must be "carol""#,
    );
    // Another requester (not a listed approver, which admission cannot know) can reach
    // status too, but never write anyone else's name.
    refused(
        &revoke(kube, User::Bob, &ns, &name, r#"{"requestedBy":"alice"}"#),
        r#"requestedBy must be "bob""#,
    );
    assert!(revocations(kube, &ns, &name).is_empty());
}

/// Entries are append-only and one per person: nobody changes or removes one (their
/// own included), and anyone's entry leaves room for everyone else's.
#[tokio::test]
async fn revocations_are_append_only_and_never_in_each_others_way() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-list", User::Alice).await;
    // bob (no say on this role, which admission cannot know) is first...
    succeeded(&revoke(
        kube,
        User::Bob,
        &ns,
        &name,
        r#"{"requestedBy":"bob"}"#,
    ));
    // ... and carol's and alice's still go in.
    succeeded(&revoke(
        kube,
        User::Carol,
        &ns,
        &name,
        r#"{"requestedBy":"carol","reason":"incident over"}"#,
    ));
    succeeded(&revoke(
        kube,
        User::Alice,
        &ns,
        &name,
        r#"{"requestedBy":"alice","reason":"done"}"#,
    ));
    let append_only = "status.revocations is append-only";
    let json_patch = |user: User, patch: &str| kube.patch_status(user, &ns, &name, "json", patch);
    // Not again (the list is keyed by person), not changed, not removed.
    refused(
        &revoke(
            kube,
            User::Alice,
            &ns,
            &name,
            r#"{"requestedBy":"alice","reason":"again"}"#,
        ),
        "Duplicate value",
    );
    refused(
        &json_patch(
            User::Alice,
            r#"[{"op":"replace","path":"/status/revocations/2/reason","value":"changed"}]"#,
        ),
        append_only,
    );
    refused(
        &json_patch(
            User::Bob,
            r#"[{"op":"remove","path":"/status/revocations/1"}]"#,
        ),
        append_only,
    );
    refused(
        &json_patch(
            User::Carol,
            r#"[{"op":"replace","path":"/status/revocations","value":[]}]"#,
        ),
        append_only,
    );
    refused(
        &merge_status(kube, User::Bob, &ns, &name, r#"{"revocations":null}"#),
        append_only,
    );
    let who: Vec<serde_json::Value> = revocations(kube, &ns, &name)
        .into_iter()
        .map(|r| r["requestedBy"].clone())
        .collect();
    assert_eq!(
        who,
        [
            serde_json::json!("bob"),
            serde_json::json!("carol"),
            serde_json::json!("alice")
        ]
    );
}

#[tokio::test]
async fn revocation_group_must_be_the_callers_own() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-group", User::Alice).await;
    refused(
        &revoke(
            kube,
            User::Dave,
            &ns,
            &name,
            r#"{"requestedBy":"dave","group":"admins"}"#,
        ),
        "you may only request revocation as a member of one of your own groups (sre",
    );
    assert!(revocations(kube, &ns, &name).is_empty());
    succeeded(&revoke(
        kube,
        User::Carol,
        &ns,
        &name,
        r#"{"requestedBy":"carol","group":"sre"}"#,
    ));
    assert_eq!(revocations(kube, &ns, &name)[0]["group"], "sre");
}

#[tokio::test]
async fn revocation_cannot_carry_an_operator_field() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-sneaky", User::Alice).await;
    refused(
        &merge_status(
            kube,
            User::Alice,
            &ns,
            &name,
            r#"{"revocations":[{"requestedBy":"alice"}],"revokedAt":"2026-01-01T00:00:00Z"}"#,
        ),
        "only the aws-jit operator may change status fields other than approvals",
    );
    assert!(revocations(kube, &ns, &name).is_empty());
}

/// The README's revoke command, run as written (only the request's name and namespace
/// swapped for this test's), by the requester.
#[tokio::test]
async fn readme_revoke_command_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md readable");
    let command = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("/status/revocations/-"))
        .expect("README.md documents the revoke command in a ```sh block");
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-readme", User::Alice).await;
    let command = command
        .replace("fix-billing-outage", &name)
        .replace("team-billing", &ns);
    let path = format!(
        "{}:{}",
        kube.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-ec", &command])
        .env("PATH", path)
        .env("KUBECONFIG", kube.kubeconfig(User::Alice))
        .output()
        .expect("run sh");
    succeeded(&out);
    let got = revocations(kube, &ns, &name);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["requestedBy"], "alice");
    assert_eq!(got[0]["reason"], "done");
}

/// `olivia` owns namespace `ns` the way "namespace admin" bindings often look: a Role of
/// every verb on every resource of every group. RBAC lets her reach everything about
/// AccessRequests there, custom verbs included; admission must still not take her for
/// the operator, a trusted submitter or an admin.
fn namespace_owner(kube: &KubeStack, ns: &str) {
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: owner\n  namespace: {ns}\n\
             rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: olivia-owns\n  namespace: {ns}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: owner}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: olivia}}]\n"
        ),
    ));
    // The old mark of the operator, and what a wildcard gives away.
    for verb in [
        "manage",
        "submit-for-others",
        "delete",
        "deletecollection",
        "update",
    ] {
        let out = kube.kubectl(
            User::Olivia,
            &[
                "auth",
                "can-i",
                verb,
                "accessrequests.aws-jit.io",
                "--subresource=status",
                "-n",
                ns,
            ],
        );
        assert_eq!(succeeded(&out).trim(), "yes", "olivia can {verb}");
    }
}

/// The request as stored, for comparing before and after an attack.
fn stored(kube: &KubeStack, ns: &str, name: &str) -> serde_json::Value {
    let out = succeeded(&kube.kubectl(
        User::Admin,
        &["get", "accessrequest", name, "-n", ns, "-o", "json"],
    ));
    let mut obj: serde_json::Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    // Only the object, not its bookkeeping (a refused write changes neither anyway).
    obj["metadata"]
        .as_object_mut()
        .map(|m| m.remove("managedFields"));
    obj
}

/// Records an attack that was not refused as it should be.
fn attack(got_through: &mut Vec<String>, what: &str, out: &std::process::Output, needle: &str) {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() || !said.contains(needle) {
        got_through.push(format!("{what}: {}", said.trim()));
    }
}

/// Every attack is tried, and every one that is not refused is reported at once.
#[tokio::test]
async fn wildcard_namespace_admin_is_not_the_operator() {
    let kube = &stack().kube;
    let (ns, name) = awaiting(kube, "adm-wildcard", User::Alice).await;
    namespace_owner(kube, &ns);
    let add = r#"{"metadata":{"finalizers":["aws-jit.io/revoke"]}}"#;
    succeeded(&kube.kubectl(
        User::Operator,
        &["patch", "ar", &name, "-n", &ns, "--type=merge", "-p", add],
    ));
    let before = stored(kube, &ns, &name);
    let mut got_through = Vec::new();
    let olivia_votes = |approval: &str| vote(kube, User::Olivia, &ns, &name, approval);

    // An approval in someone else's name, or one via Slack.
    attack(
        &mut got_through,
        "an approval in carol's name",
        &olivia_votes(r#"{"approver":"carol","decision":"Approve"}"#),
        r#"approver must be "olivia""#,
    );
    attack(
        &mut got_through,
        "a vote via slack",
        &olivia_votes(r#"{"approver":"olivia","decision":"Approve","via":"slack"}"#),
        "approvals via Slack are recorded only by the aws-jit operator",
    );
    // Any operator field, by merge patch and by update.
    for (field, value) in operator_fields() {
        let patch = format!(r#"{{"status":{{"{field}":{value}}}}}"#);
        attack(
            &mut got_through,
            &format!("status.{field}"),
            &kube.patch_status(User::Olivia, &ns, &name, "merge", &patch),
            "only the aws-jit operator may change status fields other than approvals",
        );
    }
    let mut replaced = before.clone();
    replaced["status"]["phase"] = "Active".into();
    attack(
        &mut got_through,
        "status.phase by update",
        &kube.kubectl_stdin(
            User::Olivia,
            &["replace", "--subresource=status", "-f", "-"],
            &replaced.to_string(),
        ),
        "only the aws-jit operator may change status fields other than approvals",
    );
    // Someone else's revocation.
    attack(
        &mut got_through,
        "a revocation in alice's name",
        &revoke(kube, User::Olivia, &ns, &name, r#"{"requestedBy":"alice"}"#),
        r#"requestedBy must be "olivia""#,
    );
    // The revoke finalizer, by patch and by update.
    let mut unfinalized = stored(kube, &ns, &name);
    unfinalized["metadata"]["finalizers"] = serde_json::json!([]);
    attack(
        &mut got_through,
        "the finalizer, by patch",
        &kube.kubectl(
            User::Olivia,
            &[
                "patch",
                "ar",
                &name,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        ),
        "only the aws-jit operator may remove the aws-jit.io/revoke finalizer",
    );
    attack(
        &mut got_through,
        "the finalizer, by update",
        &kube.kubectl_stdin(
            User::Olivia,
            &["replace", "-f", "-"],
            &unfinalized.to_string(),
        ),
        "only the aws-jit operator may remove the aws-jit.io/revoke finalizer",
    );
    // A request for someone else, or in a group that is not hers.
    attack(
        &mut got_through,
        "a request for bob",
        &create_request(kube, User::Olivia, &ns, "for-bob", "bob"),
        "spec.requester must be you (olivia)",
    );
    let as_sre = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: as-sre\n  namespace: {ns}\n\
         spec:\n  role: prod-admin\n  requester: olivia\n  requesterGroup: sre\n  reason: wildcard\n"
    );
    attack(
        &mut got_through,
        "a request as group sre",
        &kube.kubectl_stdin(User::Olivia, &["create", "-f", "-"], &as_sre),
        "spec.requesterGroup must be one of your own groups",
    );
    // Nor may she rewrite who the operator is: the parameter lives in the operator's
    // namespace, where her Role does not reach.
    attack(
        &mut got_through,
        "reading the admission parameter",
        &kube.kubectl(
            User::Olivia,
            &[
                "get",
                "configmap",
                "aws-jit-admission",
                "-n",
                "aws-jit-system",
            ],
        ),
        "Forbidden",
    );
    // Her own request, which she may make, she may not approve.
    succeeded(&create_request(kube, User::Olivia, &ns, "own", "olivia"));
    operator_applies_status(kube, &ns, "own", "AwaitingApproval");
    attack(
        &mut got_through,
        "approving her own request",
        &vote(
            kube,
            User::Olivia,
            &ns,
            "own",
            r#"{"approver":"olivia","decision":"Approve"}"#,
        ),
        "you may not approve or deny your own AccessRequest",
    );
    assert!(
        got_through.is_empty(),
        "attacks by a wildcard namespace admin that got through:\n{}",
        got_through.join("\n")
    );
    assert_eq!(stored(kube, &ns, &name), before, "the request is unchanged");
    assert!(approvals(kube, &ns, "own").is_empty());
}

/// `user` deletes `name` (kubectl, waiting for nothing: a finalizer may hold it).
fn delete(kube: &KubeStack, user: User, ns: &str, name: &str) -> std::process::Output {
    kube.kubectl(user, &["delete", "ar", name, "-n", ns, "--wait=false"])
}

fn exists(kube: &KubeStack, ns: &str, name: &str) -> bool {
    let out = kube.kubectl(User::Admin, &["get", "ar", name, "-n", ns, "-o", "name"]);
    out.status.success()
}

const DELETE_REFUSED: &str = "only the requester (alice), the aws-jit operator, a trusted submitter or an admin may delete this AccessRequest";

#[tokio::test]
async fn only_the_requester_deletes_their_request() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-delete", User::Alice).await;
    namespace_owner(kube, &ns);
    let before = stored(kube, &ns, &name);
    // Another requester, whose role grants `delete`.
    refused(&delete(kube, User::Bob, &ns, &name), DELETE_REFUSED);
    // An approver has no delete at all.
    refused(&delete(kube, User::Carol, &ns, &name), "Forbidden");
    // The namespace's wildcard admin: not an admin of AWS access.
    refused(&delete(kube, User::Olivia, &ns, &name), DELETE_REFUSED);
    // The relay: RBAC gives it no delete.
    refused(&delete(kube, User::Relay, &ns, &name), "Forbidden");
    assert_eq!(
        stored(kube, &ns, &name),
        before,
        "alice's request is untouched"
    );
    // alice may.
    succeeded(&delete(kube, User::Alice, &ns, &name));
    assert!(!exists(kube, &ns, &name));
}

/// A collection delete is admitted object by object: the refusal holds, and nothing is
/// deleted that the caller could not delete one by one.
#[tokio::test]
async fn deletecollection_is_refused_like_delete() {
    use aws_jit::crd::AccessRequest;
    use kube::api::{Api, DeleteParams, ListParams};
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-delete-all", User::Alice).await;
    namespace_owner(kube, &ns);
    let before = stored(kube, &ns, &name);
    let api: Api<AccessRequest> = Api::namespaced(kube.client(User::Olivia).await, &ns);
    let err = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect_err("olivia's collection delete must be refused");
    assert!(err.to_string().contains(DELETE_REFUSED), "{err}");
    refused(
        &kube.kubectl(User::Olivia, &["delete", "ar", "--all", "-n", &ns]),
        DELETE_REFUSED,
    );
    assert_eq!(
        stored(kube, &ns, &name),
        before,
        "alice's request is untouched"
    );
    // Requesters hold no deletecollection.
    let api: Api<AccessRequest> = Api::namespaced(kube.client(User::Bob).await, &ns);
    let err = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect_err("bob holds no deletecollection");
    assert!(err.to_string().contains("forbidden"), "{err}");
    assert!(exists(kube, &ns, &name));
}

/// A GitOps controller prunes what it applied (for other people); an admin may delete
/// anything (break glass); the operator too.
#[tokio::test]
async fn trusted_submitters_admins_and_the_operator_may_delete() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("adm-delete-trusted").await;
    for name in ["pruned", "broken-glass"] {
        succeeded(&create_request(kube, User::GitOps, &ns, name, "alice"));
    }
    succeeded(&delete(kube, User::GitOps, &ns, "pruned"));
    succeeded(&delete(kube, User::Admin, &ns, "broken-glass"));
    // The operator's RBAC has no delete; the policy would let it (asked as the admin,
    // impersonating: admission sees the operator's name).
    succeeded(&create_request(
        kube,
        User::Alice,
        &ns,
        "by-operator",
        "alice",
    ));
    let out = kube.kubectl(
        User::Admin,
        &[
            "delete",
            "ar",
            "by-operator",
            "-n",
            &ns,
            "--dry-run=server",
            &format!("--as={}", User::Operator.name()),
            "--as-group=developers",
        ],
    );
    succeeded(&out);
    for name in ["pruned", "broken-glass"] {
        assert!(!exists(kube, &ns, name), "{name} is deleted");
    }
}

/// Deleting a namespace deletes its requests (the namespace controller, once the
/// namespace is terminating); the revoke finalizer still holds each until the operator
/// has revoked.
#[tokio::test]
async fn a_deleted_namespace_takes_its_requests_along() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-delete-ns", User::Alice).await;
    let namespace_controller = "--as=system:serviceaccount:kube-system:namespace-controller";
    refused(
        &kube.kubectl(
            User::Admin,
            &[
                "delete",
                "ar",
                &name,
                "-n",
                &ns,
                "--dry-run=server",
                namespace_controller,
            ],
        ),
        DELETE_REFUSED,
    );
    succeeded(&kube.kubectl(User::Admin, &["delete", "namespace", &ns, "--wait=false"]));
    // No kube-controller-manager runs here: play the namespace controller.
    succeeded(&kube.kubectl(
        User::Admin,
        &[
            "delete",
            "ar",
            &name,
            "-n",
            &ns,
            "--wait=false",
            namespace_controller,
        ],
    ));
    assert!(!exists(kube, &ns, &name));
}

/// Without its parameter (the ConfigMap naming who is who) a policy refuses: nobody is
/// the operator or a trusted submitter by default. A binding of the create policy to a
/// ConfigMap that does not exist, in one namespace of this test's.
#[tokio::test]
async fn a_missing_parameter_refuses_everything() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("adm-no-params").await;
    let binding = format!("{ns}-no-params");
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\n\
             metadata: {{name: {binding}}}\n\
             spec:\n  policyName: aws-jit-accessrequest-create\n  validationActions: [Deny]\n\
             \x20 paramRef: {{name: not-there, namespace: aws-jit-system, parameterNotFoundAction: Deny}}\n\
             \x20 matchResources:\n    namespaceSelector:\n      matchExpressions:\n\
             \x20       - {{key: kubernetes.io/metadata.name, operator: In, values: [{ns}]}}\n"
        ),
    ));
    // The binding loads asynchronously: a request in alice's own name, which only this
    // binding can refuse, is refused once it is in force; a trusted submitter's is too.
    eventually("the binding without a parameter to refuse", WAIT, || {
        let out = create_request(kube, User::Alice, &ns, "own", "alice");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let result = match out.status.success() {
            false if said.contains("no params found") => Ok(()),
            false => panic!("refused for another reason: {said}"),
            // Admitted before the binding was in force: try again.
            true => {
                succeeded(&kube.kubectl(User::Admin, &["delete", "ar", "own", "-n", &ns]));
                Err("admitted".to_string())
            }
        };
        std::future::ready(result)
    })
    .await;
    refused(
        &create_request(kube, User::GitOps, &ns, "for-bob", "bob"),
        "no params found",
    );
    succeeded(&kube.kubectl(
        User::Admin,
        &["delete", "validatingadmissionpolicybinding", &binding],
    ));
}

/// The revocations list cannot be crowded out, emptied away, reordered, or written by
/// the relay. A namespace admin can mint ServiceAccounts at will and give them status
/// rights: their entries would fill the list (64 at most) and leave no room for an
/// approver's; so ServiceAccounts may not add one. The README's append needs the list:
/// nobody but the operator removes it, even empty. Which entry is first decides who
/// ended the access: no reordering. The relay records no revocation at all.
#[tokio::test]
async fn revocations_cannot_be_crowded_out_removed_reordered_or_relayed() {
    let kube = &stack().kube;
    let (ns, name) = active(kube, "adm-revoke-crowd", User::Alice).await;
    // A ServiceAccount minted in the namespace, with the approver role there.
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: minted\n  namespace: {ns}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: minted-approver\n  namespace: {ns}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'aws-jit:approver'}}\n\
             subjects: [{{kind: ServiceAccount, name: minted, namespace: {ns}}}]\n"
        ),
    ));
    let token = succeeded(&kube.kubectl(User::Admin, &["create", "token", "minted", "-n", &ns]));
    let sa = format!("system:serviceaccount:{ns}:minted");
    let patch = format!(
        r#"[{{"op":"add","path":"/status/revocations/-","value":{{"requestedBy":"{sa}"}}}}]"#
    );
    let out = std::process::Command::new(kube.bin_dir().join("kubectl"))
        .args(["--server", kube.server(), "--token", token.trim()])
        .arg(format!(
            "--certificate-authority={}",
            kube.ca_file().display()
        ))
        .args([
            "patch",
            "accessrequest",
            &name,
            "-n",
            &ns,
            "--subresource=status",
        ])
        .args(["--type=json", "-p", &patch])
        .output()
        .expect("run kubectl");
    refused(
        &out,
        "revocations are requested by people: a ServiceAccount may not add one",
    );
    // The relay: no revocation, in anyone's name.
    refused(
        &revoke(
            kube,
            User::Relay,
            &ns,
            &name,
            r#"{"requestedBy":"carol","group":"system:masters"}"#,
        ),
        "(changed: revocations)",
    );
    // Not removed while empty.
    refused(
        &merge_status(kube, User::Bob, &ns, &name, r#"{"revocations":null}"#),
        "status.revocations is append-only",
    );
    // Not reordered.
    succeeded(&revoke(
        kube,
        User::Bob,
        &ns,
        &name,
        r#"{"requestedBy":"bob"}"#,
    ));
    succeeded(&revoke(
        kube,
        User::Carol,
        &ns,
        &name,
        r#"{"requestedBy":"carol"}"#,
    ));
    let swapped = r#"[{"op":"replace","path":"/status/revocations","value":[{"requestedBy":"carol"},{"requestedBy":"bob"}]}]"#;
    refused(
        &kube.patch_status(User::Carol, &ns, &name, "json", swapped),
        "status.revocations is append-only",
    );
    // One entry per person: the list is keyed by requestedBy.
    refused(
        &revoke(
            kube,
            User::Bob,
            &ns,
            &name,
            r#"{"requestedBy":"bob","reason":"again"}"#,
        ),
        "Duplicate value",
    );
    let who: Vec<serde_json::Value> = revocations(kube, &ns, &name)
        .into_iter()
        .map(|r| r["requestedBy"].clone())
        .collect();
    assert_eq!(who, [serde_json::json!("bob"), serde_json::json!("carol")]);
}
