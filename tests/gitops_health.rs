//! GitOps health of AccessRequests, on synthetic objects whose conditions are what the
//! operator writes (`decide::conditions_for`, along the paths the controller takes):
//! kstatus itself (`sigs.k8s.io/cli-utils` v0.37.2, as Flux uses it) and the shipped
//! Argo CD Lua check, both run by `hack/tools/kstatus` (`AWS_JIT_KSTATUS`). The same
//! on the real stack, every phase reached by the operator: tests/e2e/gitops.rs.
use aws_jit::crd::Phase;
use aws_jit::policy::decide;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

#[allow(dead_code)] // shared with tests/e2e, which reads every field
#[path = "support/gitops.rs"]
mod gitops;
use gitops::{expected, judge, judge_one};

fn at(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(second).expect("timestamp"))
}

/// The phases the controller writes on the way to `phase`.
fn path_to(phase: Phase) -> Vec<Phase> {
    use Phase::*;
    match phase {
        Pending | Rejected => vec![],
        AwaitingApproval => vec![Pending],
        Scheduled | Approved | Denied => vec![Pending, AwaitingApproval],
        Active => vec![Pending, AwaitingApproval, Approved],
        Expired | Revoked | Failed => vec![Pending, AwaitingApproval, Approved, Active],
    }
}

fn conditions(phase: Phase) -> Vec<Condition> {
    let mut c = Vec::new();
    for (i, p) in path_to(phase).into_iter().chain([phase]).enumerate() {
        c = decide::conditions_for(
            &c,
            p,
            &format!("{p:?} here"),
            Some(1),
            &at(1_000 + i as i64),
        );
    }
    c
}

fn request(name: &str, status: Option<Value>) -> Value {
    let mut r = json!({
        "apiVersion": "aws-jit.io/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": name, "namespace": "team", "generation": 1, "uid": "u-1"},
        "spec": {"role": "admin", "requester": "alice", "reason": "gitops"},
    });
    if let Some(status) = status {
        r["status"] = status;
    }
    r
}

fn in_phase(phase: Phase, conditions: &[Condition]) -> Value {
    request(
        &format!("{phase:?}").to_lowercase(),
        Some(json!({
            "phase": phase,
            "message": format!("{phase:?} here"),
            "observedGeneration": 1,
            "conditions": conditions,
        })),
    )
}

const ALL: [Phase; 10] = [
    Phase::Pending,
    Phase::AwaitingApproval,
    Phase::Scheduled,
    Phase::Approved,
    Phase::Active,
    Phase::Expired,
    Phase::Denied,
    Phase::Rejected,
    Phase::Revoked,
    Phase::Failed,
];

#[test]
fn every_phase_reads_as_decided() {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": ALL.iter().map(|p| in_phase(*p, &conditions(*p))).collect::<Vec<_>>(),
    });
    let verdicts = judge(&list.to_string());
    assert_eq!(verdicts.len(), ALL.len());
    for (phase, v) in ALL.iter().zip(&verdicts) {
        let name = format!("{phase:?}");
        assert_eq!(v.name, name.to_lowercase());
        let (kstatus, argocd) = expected(Some(&name));
        assert_eq!(
            (v.kstatus.status.as_str(), v.argocd.status.as_str()),
            (kstatus, argocd),
            "{phase:?}: {v:?}"
        );
        // The Lua check says what the phase is about, with the operator's message.
        assert!(
            v.argocd.message.contains(&format!("{phase:?} here")),
            "{v:?}"
        );
    }
    for v in verdicts
        .iter()
        .filter(|v| ["expired", "revoked", "denied"].contains(&v.name.as_str()))
    {
        assert!(
            v.argocd.message.contains("nothing is granted")
                && v.argocd.message.contains("new name"),
            "{v:?}"
        );
    }
}

#[test]
fn the_conditions_before_this_fix_read_in_progress_forever() {
    // What conditions_for wrote before: Ready=False on an ended request, neither
    // Reconciling nor Stalled. kstatus's verdict on it, so the tool is seen to tell.
    let old = |phase: Phase| {
        let t = at(1_000);
        let mut c = Vec::new();
        for (type_, status) in [
            ("Ready", false),
            ("Approved", true),
            ("Granted", false),
            ("Reconciling", false),
            ("Stalled", false),
        ] {
            decide::set_condition(
                &mut c,
                type_,
                status,
                &format!("{phase:?}"),
                "",
                Some(1),
                &t,
            );
        }
        in_phase(phase, &c)
    };
    for phase in [Phase::Expired, Phase::Revoked, Phase::Denied] {
        let v = judge_one(&old(phase));
        assert_eq!(v.kstatus.status, "InProgress", "{v:?}");
        let v = judge_one(&in_phase(phase, &conditions(phase)));
        assert_eq!(v.kstatus.status, "Current", "{v:?}");
    }
}

#[test]
fn no_status_yet_is_progressing_for_argo_cd() {
    let v = judge_one(&request("fresh", None));
    assert_eq!(
        (v.kstatus.status.as_str(), v.argocd.status.as_str()),
        expected(None)
    );
    assert!(v.argocd.message.contains("operator"), "{v:?}");
    // A status without a phase (nothing the operator wrote yet) likewise.
    let v = judge_one(&request("lists-only", Some(json!({"approvals": []}))));
    assert_eq!(v.argocd.status, "Progressing", "{v:?}");
}

#[test]
fn a_failing_revoke_is_in_progress_for_kstatus_and_degraded_for_argo_cd() {
    // What the controller writes while it cannot end a grant its execution left:
    // the phase stays, Ready=False and Revoked=False, both RevokeFailing.
    for phase in [Phase::Active, Phase::Approved] {
        let mut c = conditions(phase);
        let t = at(5_000);
        let why = "the execution ended without revoking and the operator cannot end access yet";
        decide::set_condition(
            &mut c,
            decide::REVOKED_CONDITION,
            false,
            "RevokeFailing",
            why,
            Some(1),
            &t,
        );
        decide::set_condition(&mut c, "Ready", false, "RevokeFailing", why, Some(1), &t);
        let v = judge_one(&in_phase(phase, &c));
        // Approved still says Reconciling=True; Active says only Ready=False.
        assert_eq!(v.kstatus.status, "InProgress", "{phase:?}: {v:?}");
        assert_eq!(v.argocd.status, "Degraded", "{phase:?}: {v:?}");
        assert!(v.argocd.message.contains("cannot end"), "{v:?}");
    }
    // Revoked=False RevokeFailing alone (Ready rewritten by someone, say) is enough.
    let mut c = conditions(Phase::Active);
    decide::set_condition(
        &mut c,
        decide::REVOKED_CONDITION,
        false,
        "RevokeFailing",
        "x",
        Some(1),
        &at(5_000),
    );
    assert_eq!(
        judge_one(&in_phase(Phase::Active, &c)).argocd.status,
        "Degraded"
    );
    // Once done (Revoked=True RevokedByOperator, the phase final): healthy again.
    let mut c = conditions(Phase::Revoked);
    decide::set_condition(
        &mut c,
        decide::REVOKED_CONDITION,
        true,
        "RevokedByOperator",
        "x",
        Some(1),
        &at(6_000),
    );
    let v = judge_one(&in_phase(Phase::Revoked, &c));
    assert_eq!(
        (v.kstatus.status.as_str(), v.argocd.status.as_str()),
        ("Current", "Healthy")
    );
}

#[test]
fn a_tampered_request_is_degraded() {
    // What `tampered` writes: Failed, plus Tampered=True ForeignExecution.
    let mut c = decide::conditions_for(&[], Phase::Failed, "squatted", Some(1), &at(1_000));
    decide::set_condition(
        &mut c,
        "Tampered",
        true,
        "ForeignExecution",
        "arn:x was not started by aws-jit",
        Some(1),
        &at(1_000),
    );
    let v = judge_one(&in_phase(Phase::Failed, &c));
    assert_eq!(
        (v.kstatus.status.as_str(), v.argocd.status.as_str()),
        ("Failed", "Degraded")
    );
    assert!(
        v.argocd.message.contains("tampered") && v.argocd.message.contains("arn:x"),
        "{v:?}"
    );
    // Tampered outranks any phase.
    let mut c = conditions(Phase::Active);
    decide::set_condition(
        &mut c,
        "Tampered",
        true,
        "ForeignExecution",
        "arn:y",
        Some(1),
        &at(2_000),
    );
    assert_eq!(
        judge_one(&in_phase(Phase::Active, &c)).argocd.status,
        "Degraded"
    );
    // Tampered=False is nothing.
    let mut c = conditions(Phase::Active);
    decide::set_condition(&mut c, "Tampered", false, "None", "", Some(1), &at(2_000));
    assert_eq!(
        judge_one(&in_phase(Phase::Active, &c)).argocd.status,
        "Healthy"
    );
}

#[test]
fn an_unknown_phase_is_unknown_to_argo_cd() {
    let v = judge_one(&request(
        "odd",
        Some(json!({"phase": "Sideways", "conditions": []})),
    ));
    assert_eq!(v.argocd.status, "Unknown", "{v:?}");
    assert!(v.argocd.message.contains("Sideways"), "{v:?}");
}

#[test]
fn the_tool_reads_yaml_lists_and_several_documents() {
    let yaml = format!(
        "{}\n---\n{}",
        serde_yaml::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": [
            in_phase(Phase::Active, &conditions(Phase::Active)),
            in_phase(Phase::Denied, &conditions(Phase::Denied)),
        ]}))
        .expect("yaml"),
        serde_yaml::to_string(&in_phase(Phase::Failed, &conditions(Phase::Failed))).expect("yaml"),
    );
    let v = judge(&yaml);
    let got: Vec<(&str, &str, &str)> = v
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.kstatus.status.as_str(),
                h.argocd.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("active", "Current", "Healthy"),
            ("denied", "Current", "Healthy"),
            ("failed", "Failed", "Degraded")
        ]
    );
    assert!(
        v.iter()
            .all(|h| h.kind == "AccessRequest" && h.namespace == "team")
    );
}

/// The Argo CD snippet carries the shipped script, byte for byte.
#[test]
fn the_argocd_cm_snippet_holds_the_same_script() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gitops/argocd");
    let script = std::fs::read_to_string(root.join("health.lua")).expect("health.lua");
    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("argocd-cm.yaml")).expect("argocd-cm.yaml"),
    )
    .expect("argocd-cm.yaml is YAML");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("data");
    assert_eq!(data.len(), 1, "only the health check: {data:?}");
    assert_eq!(
        data["resource.customizations.health.aws-jit.io_AccessRequest"].as_str(),
        Some(script.as_str()),
        "argocd-cm.yaml and health.lua differ"
    );
}
