//! Break glass, on the real stack: access at once without approvals for those the
//! AccessRole lets break it, short and with a reason, loudly, and reviewed after the
//! fact by an approver; refused, with the reason, for everyone else.
use aws_jit::crd::{AccessRequest, Phase};
use serde_json::json;

use crate::controller::{Env, condition};
use crate::support::kube::User;
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const POLICY: &str = "  breakGlass: {requesters: [{user: alice}], maxDuration: 15m}\n";

impl Env {
    fn review(
        &self,
        as_user: User,
        reviewer: &str,
        name: &str,
        verdict: &str,
    ) -> std::process::Output {
        let patch = json!([{"op": "add", "path": "/status/reviews/-",
            "value": {"reviewer": reviewer, "verdict": verdict, "comment": "looked"}}]);
        stack()
            .kube
            .patch_status(as_user, &self.ns, name, "json", &patch.to_string())
    }

    async fn wait_review(&self, name: &str, reason: &str) -> AccessRequest {
        let api = self.requests();
        eventually(
            &format!("{name}'s ReviewPending to say {reason}"),
            std::time::Duration::from_secs(60),
            || {
                let api = api.clone();
                async move {
                    let r = api.get(name).await.map_err(|e| e.to_string())?;
                    match condition(&r, "ReviewPending") {
                        Some((_, got)) if got == reason => Ok(r),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await
    }
}

/// Creates `name` as `user` with `extra` spec lines (no default reason).
fn create(env: &Env, user: User, name: &str, extra: &str) {
    let yaml = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  role: {}\n  requester: {}\n{extra}",
        env.ns,
        env.access_role,
        user.name()
    );
    succeeded(
        &stack()
            .kube
            .kubectl_stdin(user, &["create", "-f", "-"], &yaml),
    );
}

fn message(r: &AccessRequest) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_listed_requester_breaks_the_glass_at_once_and_an_approver_reviews_it() {
    let env = Env::new("bg-use", POLICY).await;
    create(
        &env,
        User::Alice,
        "glass",
        "  duration: 10m\n  breakGlass: true\n  reason: 'INC-9: prod is down'\n",
    );
    // No vote: Active at once, with the approval recorded as the break glass.
    env.wait_phase("glass", Phase::Active).await;
    assert_eq!(
        aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).len(),
        1
    );
    let exec = env.execution("glass").await;
    let input: serde_json::Value =
        serde_json::from_str(exec.input().expect("input")).expect("JSON");
    assert_eq!(input["break_glass"], true);
    let loud = crate::attacks::wait_warning(&env, "glass", "BreakGlass").await;
    assert!(
        loud.contains("broke the glass") && loud.contains("INC-9"),
        "{loud}"
    );
    let r = env.wait_review("glass", "AwaitingReview").await;
    assert_eq!(
        condition(&r, "ReviewPending").map(|c| c.0),
        Some("True".to_string())
    );
    // The record stays until it is reviewed: alice cannot delete it (she can revoke).
    refused(
        &stack().kube.kubectl(
            User::Alice,
            &["delete", "ar", "glass", "-n", &env.ns, "--wait=false"],
        ),
        "waits for an approver's review",
    );
    // No extension of a break-glass grant, whatever the role allows.
    let patch = json!([{"op": "add", "path": "/status/extensions/-",
        "value": {"id": "1", "requestedBy": "alice", "by": "5m", "reason": "INC-9"}}]);
    succeeded(&stack().kube.patch_status(
        User::Alice,
        &env.ns,
        "glass",
        "json",
        &patch.to_string(),
    ));
    crate::attacks::wait_warning(&env, "glass", "ExtensionNotAllowed").await;
    // Reviews follow the rules of votes: not the requester, not in another's name, and
    // only an approver's counts.
    refused(
        &env.review(User::Alice, "alice", "glass", "Reviewed"),
        "your own break-glass request",
    );
    refused(
        &env.review(User::Bob, "carol", "glass", "Reviewed"),
        "reviewer must be \"bob\"",
    );
    succeeded(&env.review(User::Bob, "bob", "glass", "Reviewed"));
    crate::attacks::wait_warning(&env, "glass", "ReviewIgnored").await;
    let r = env.requests().get("glass").await.expect("request");
    assert_eq!(
        condition(&r, "ReviewPending").map(|c| c.1),
        Some("AwaitingReview".to_string())
    );
    // carol flags it: loud, and the condition says so.
    succeeded(&env.review(User::Carol, "carol", "glass", "Flagged"));
    let r = env.wait_review("glass", "Flagged").await;
    assert_eq!(
        condition(&r, "ReviewPending").map(|c| c.0),
        Some("False".to_string())
    );
    crate::attacks::wait_warning(&env, "glass", "BreakGlassFlagged").await;
    // A review is kept after the request ends too; an existing one never changes.
    let patch =
        json!([{"op": "replace", "path": "/status/reviews/1/verdict", "value": "Reviewed"}]);
    refused(
        &stack()
            .kube
            .patch_status(User::Carol, &env.ns, "glass", "json", &patch.to_string()),
        "status.reviews is append-only",
    );
    // Reviewed: alice may delete it now (access is revoked first).
    succeeded(&stack().kube.kubectl(
        User::Alice,
        &["delete", "ar", "glass", "-n", &env.ns, "--wait=false"],
    ));
    env.wait_gone("glass").await;
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}

#[tokio::test]
async fn breaking_the_glass_is_refused_with_the_reason_for_everyone_else() {
    let env = Env::new("bg-refuse", POLICY).await;
    let cases = [
        // bob may ask (through developers), not break the glass.
        (
            User::Bob,
            "bob-glass",
            "  requesterGroup: developers\n  breakGlass: true\n  reason: 'INC-9'\n",
            "not listed in its breakGlass.requesters",
        ),
        (
            User::Alice,
            "too-long",
            "  duration: 1h\n  breakGlass: true\n  reason: 'INC-9'\n",
            "lasts at most 15m",
        ),
        (
            User::Alice,
            "no-reason",
            "  duration: 10m\n  breakGlass: true\n  reason: ''\n",
            "needs a reason",
        ),
    ];
    for (user, name, extra, why) in cases {
        create(&env, user, name, extra);
        let r = env.wait_phase(name, Phase::Rejected).await;
        assert!(message(&r).contains(why), "{name}: {}", message(&r));
        assert!(r.status.and_then(|s| s.execution_arn).is_none(), "{name}");
    }
    // Nobody breaks the glass for someone else: not the GitOps controller (a trusted
    // submitter), not an admin.
    for (user, name) in [(User::GitOps, "by-gitops"), (User::Admin, "by-admin")] {
        let yaml = format!(
            "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  role: {}\n  requester: alice\n  duration: 10m\n  breakGlass: true\n  reason: 'INC-9'\n",
            env.ns, env.access_role
        );
        refused(
            &stack()
                .kube
                .kubectl_stdin(user, &["create", "-f", "-"], &yaml),
            "never asked on someone else's behalf",
        );
    }
    // A role without a breakGlass block: nobody breaks it.
    let plain = Env::new("bg-none", "").await;
    plain.request(User::Alice, "nope", "  breakGlass: true\n  duration: 10m\n");
    let r = plain.wait_phase("nope", Phase::Rejected).await;
    assert!(
        message(&r).contains("allows no break glass"),
        "{}",
        message(&r)
    );
    // Reviews are for break-glass requests only.
    plain.request(User::Alice, "ordinary", "");
    plain.wait_phase("ordinary", Phase::AwaitingApproval).await;
    refused(
        &plain.review(User::Carol, "carol", "ordinary", "Reviewed"),
        "only a break-glass request is reviewed",
    );
    assert!(aws_jit::grant::trust_policy::document::grants(&env.trust_policy().await).is_empty());
}
