//! Approvals from Slack on the real stack: the operator running in-process (the
//! controller's `Env`), the interactivity endpoint (`aws_jit::slack::interactions`) served on
//! a local port with the operator's identity, and Slack's clicks simulated by
//! correctly (or wrongly) signed `block_actions` posts.
use std::time::Duration;

use aws_jit::crd::{AccessRequest, ApprovalChannel, Decision, Phase};
use aws_jit::slack::interactions::{self, SigningSecret};

use crate::controller::Env;
use crate::support::kube::User;
use crate::support::slack_interactions::{
    Signing, Slack, TRIGGER_ID, ViewsApi, block_actions, map_slack_users, slack_identity_yaml,
    view_submission,
};
use crate::support::wait::eventually;
use crate::support::{refused, stack, succeeded};

const SECRET: &str = "e2e0signing0secret0000000000000a";
pub(crate) const BOT_TOKEN: &str = "xoxb-e2e-bot-token";
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Slack user IDs of the test's people (as `support::slack_interactions::SLACK_IDENTITIES`
/// maps them: carol, dave and erin approve; alice requests and is in group sre too).
pub(crate) const CAROL: &str = "UCAROL01";
pub(crate) const DAVE: &str = "UDAVE001";
pub(crate) const ALICE: &str = "UALICE01";
pub(crate) const ERIN: &str = "UERIN001";
/// A Slack user no SlackIdentity maps.
pub(crate) const STRANGER: &str = "USTRANGE1";

pub(crate) const ROLE: &str = "  approvers: [{user: carol}, {user: dave}]";

/// Approvers by group only, each entry with the `slackUserId` older releases mapped
/// clicks by (they recorded such a vote as `slack:<ID>`, which never matched the
/// requester nor the person's kubectl vote). It must grant nothing by itself.
pub(crate) const SRE_GROUP_ROLE: &str = "  approvers: [{group: sre, slackUserId: UALICE01}, {group: sre, slackUserId: UDAVE001}, {group: sre, slackUserId: UCAROL01}]";

/// The operator (Env) plus the interactions endpoint serving with the operator's client.
struct World {
    env: Env,
    slack: Slack,
    /// The `views.open` stand-in, when the endpoint has a bot token (Deny modal).
    views: Option<ViewsApi>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl World {
    /// Without a Slack Web API client: a Deny click is recorded at once.
    async fn new(prefix: &str, role_spec: &str) -> World {
        World::start(prefix, role_spec, false).await
    }

    /// With the bot's Web API (a `views.open` stand-in): a Deny click opens the modal.
    async fn with_modal(prefix: &str, role_spec: &str) -> World {
        World::start(prefix, role_spec, true).await
    }

    async fn start(prefix: &str, role_spec: &str, modal: bool) -> World {
        map_slack_users();
        let env = Env::new(prefix, role_spec).await;
        let kube = stack().kube.client(User::Relay).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the interactions endpoint");
        let addr = listener.local_addr().expect("local addr");
        let mut state = interactions::State::new(kube, SigningSecret::new(SECRET));
        let views = if modal {
            let views = ViewsApi::start(BOT_TOKEN).await;
            state = state.with_slack(
                interactions::SlackWeb::new(&views.api_url, BOT_TOKEN)
                    .expect("Slack client")
                    .with_response_url_prefix(&views.hooks_prefix),
            );
            Some(views)
        } else {
            None
        };
        let server = tokio::spawn(async move {
            interactions::serve(listener, state)
                .await
                .expect("serve interactions");
        });
        let mut slack = Slack::new(format!("http://{addr}{}", interactions::PATH), SECRET);
        if let Some(views) = &views {
            slack = slack.with_response_url(&views.response_url);
        }
        World {
            env,
            slack,
            views,
            server,
        }
    }

    async fn click(&self, slack_user: &str, approve: bool, name: &str, uid: &str) -> String {
        self.slack
            .click(slack_user, approve, &self.env.ns, name, uid)
            .await
            .ephemeral_text()
    }
}

/// Helpers both Slack transports' tests use.
impl Env {
    /// alice asks, and the request waits for approvers; returns its uid.
    pub(crate) async fn awaiting(&self, name: &str) -> String {
        self.request(User::Alice, name, "");
        let r = self.wait_phase(name, Phase::AwaitingApproval).await;
        r.metadata.uid.expect("uid")
    }

    pub(crate) async fn get(&self, name: &str) -> AccessRequest {
        self.requests().get(name).await.expect("get request")
    }

    /// The approvals on the request now (the endpoints answer after their write, so a
    /// refused click can be checked at once).
    pub(crate) async fn approvals(&self, name: &str) -> Vec<aws_jit::crd::Approval> {
        self.get(name)
            .await
            .status
            .and_then(|s| s.approvals)
            .unwrap_or_default()
    }

    /// Waits for `phase`, then returns the request's one vote, which must be `decision`
    /// by `approver`, from Slack.
    pub(crate) async fn only_slack_vote(
        &self,
        name: &str,
        phase: Phase,
        approver: &str,
        decision: Decision,
    ) -> aws_jit::crd::Approval {
        let r = self.wait_phase(name, phase).await;
        let approvals = r.status.and_then(|s| s.approvals).unwrap_or_default();
        let [vote] = approvals.as_slice() else {
            panic!("one vote expected: {approvals:?}");
        };
        assert_eq!(
            (vote.approver.as_str(), vote.decision, vote.via),
            (approver, decision, ApprovalChannel::Slack),
            "{vote:?}"
        );
        vote.clone()
    }
}

#[tokio::test]
async fn an_approve_click_by_a_mapped_approver_activates_the_request() {
    let w = World::new("slack-approve", ROLE).await;
    let uid = w.env.awaiting("via-slack").await;
    let text = w.click(CAROL, true, "via-slack", &uid).await;
    assert!(text.contains("Recorded your approval"), "{text}");
    assert!(text.contains("carol"), "{text}");
    let vote = w
        .env
        .only_slack_vote("via-slack", Phase::Active, "carol", Decision::Approve)
        .await;
    assert_eq!(vote.group, None);
    assert!(vote.time.is_some(), "{vote:?}");
    // Too late for a vote now: the request is decided.
    let text = w.click(DAVE, true, "via-slack", &uid).await;
    assert!(text.contains("not waiting for approval"), "{text}");
    assert_eq!(w.env.approvals("via-slack").await.len(), 1);
}

#[tokio::test]
async fn one_vote_per_approver_from_slack_and_two_of_two_needs_both() {
    let w = World::new("slack-2of2", &format!("{ROLE}\n  approvalsRequired: 2")).await;
    let uid = w.env.awaiting("twice").await;
    let text = w.click(CAROL, true, "twice", &uid).await;
    assert!(text.contains("Recorded"), "{text}");
    let text = w.click(CAROL, true, "twice", &uid).await;
    assert!(text.contains("already voted"), "{text}");
    // A Deny after an Approve is a second vote too, and is refused.
    let text = w.click(CAROL, false, "twice", &uid).await;
    assert!(text.contains("already voted"), "{text}");
    assert_eq!(w.env.approvals("twice").await.len(), 1);
    w.env.wait_message("twice", "1 of 2 approvals").await;
    let text = w.click(DAVE, true, "twice", &uid).await;
    assert!(text.contains("Recorded"), "{text}");
    let r = w.env.wait_phase("twice", Phase::Active).await;
    let approvers: Vec<_> = r
        .status
        .and_then(|s| s.approvals)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.approver, a.via))
        .collect();
    assert_eq!(
        approvers,
        [
            ("carol".to_string(), ApprovalChannel::Slack),
            ("dave".to_string(), ApprovalChannel::Slack)
        ]
    );
}

#[tokio::test]
async fn a_deny_click_asks_for_a_comment_and_the_submitted_modal_ends_in_denied() {
    let w = World::with_modal("slack-modal", ROLE).await;
    let views = w.views.as_ref().expect("views stand-in");
    let uid = w.env.awaiting("deny-why").await;
    // The click opens the modal and records nothing yet.
    let answer = w
        .slack
        .post(
            &block_actions(DAVE, interactions::DENY_ACTION, &w.env.ns, "deny-why", &uid),
            Signing::Correct,
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, ""),
        "{answer:?}"
    );
    let opened = views.opened();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["trigger_id"], TRIGGER_ID);
    let view = &opened[0]["view"];
    assert_eq!(view["type"], "modal");
    assert_eq!(view["callback_id"], interactions::modal::DENY_CALLBACK);
    assert!(w.env.approvals("deny-why").await.is_empty());
    // An unmapped user (or a forged submission) cannot use the modal.
    let answer = w
        .slack
        .post(&view_submission(STRANGER, view, "sneaky"), Signing::Correct)
        .await;
    assert_eq!(answer.json()["response_action"], "errors", "{answer:?}");
    let answer = w
        .slack
        .post(&view_submission(DAVE, view, "forged"), Signing::WrongSecret)
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    // A blank comment is asked again.
    let answer = w
        .slack
        .post(&view_submission(DAVE, view, "   "), Signing::Correct)
        .await;
    assert_eq!(answer.json()["response_action"], "errors", "{answer:?}");
    assert!(w.env.approvals("deny-why").await.is_empty());
    // The refused clicks are told at once, without a modal.
    let text = w.click(STRANGER, false, "deny-why", &uid).await;
    assert!(text.contains("not mapped to a Kubernetes user"), "{text}");
    assert_eq!(views.opened().len(), 1);
    // ... also through the click's response_url, which is what Slack shows for a
    // block_actions click.
    let posted = eventually("the refusal at the response_url", WAIT, || async {
        match views.responses().as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(posted["response_type"], "ephemeral");
    assert_eq!(posted["replace_original"], false);
    assert_eq!(posted["text"].as_str(), Some(text.as_str()));
    // dave submits his reason: the modal closes (empty 200) and the Deny is recorded.
    let answer = w
        .slack
        .post(
            &view_submission(DAVE, view, "change freeze until Monday"),
            Signing::Correct,
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, ""),
        "{answer:?}"
    );
    let vote = w
        .env
        .only_slack_vote("deny-why", Phase::Denied, "dave", Decision::Deny)
        .await;
    assert_eq!(vote.comment.as_deref(), Some("change freeze until Monday"));
}

#[tokio::test]
async fn without_a_bot_token_a_deny_click_is_recorded_at_once() {
    let w = World::new("slack-deny", ROLE).await;
    let uid = w.env.awaiting("deny-me").await;
    let text = w.click(DAVE, false, "deny-me", &uid).await;
    assert!(text.contains("Recorded your denial"), "{text}");
    let r = w.env.wait_phase("deny-me", Phase::Denied).await;
    let status = r.status.expect("status");
    assert!(
        status
            .message
            .clone()
            .unwrap_or_default()
            .contains("denied by dave"),
        "{status:?}"
    );
    let approvals = status.approvals.unwrap_or_default();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0].approver, "dave");
    assert_eq!(approvals[0].decision, Decision::Deny);
    assert_eq!(approvals[0].via, ApprovalChannel::Slack);
    assert_eq!(
        approvals[0].comment.as_deref(),
        Some(interactions::DENY_COMMENT)
    );
}

#[tokio::test]
async fn a_click_by_an_unmapped_slack_user_is_refused_and_nothing_is_written() {
    let w = World::new("slack-unmapped", ROLE).await;
    let uid = w.env.awaiting("strangers").await;
    for approve in [true, false] {
        let text = w.click(STRANGER, approve, "strangers", &uid).await;
        assert!(text.contains("not mapped to a Kubernetes user"), "{text}");
        assert!(w.env.approvals("strangers").await.is_empty());
        // erin is mapped, but the role does not list her (nor a group of hers).
        let text = w.click(ERIN, approve, "strangers", &uid).await;
        assert!(
            text.contains("(erin) are not listed as an approver"),
            "{text}"
        );
        assert!(w.env.approvals("strangers").await.is_empty());
    }
    // A button from an older request of the same name (another uid) is refused too.
    let text = w
        .click(
            CAROL,
            true,
            "strangers",
            "00000000-0000-0000-0000-000000000000",
        )
        .await;
    assert!(text.contains("no longer exists"), "{text}");
    assert!(w.env.approvals("strangers").await.is_empty());
    assert_eq!(
        w.env.get("strangers").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // The same endpoint does record a mapped approver's click.
    let text = w.click(CAROL, true, "strangers", &uid).await;
    assert!(text.contains("Recorded"), "{text}");
    assert_eq!(w.env.approvals("strangers").await.len(), 1);
}

#[tokio::test]
async fn the_requester_cannot_approve_their_own_request_from_slack() {
    let w = World::new("slack-self", "  approvers: [{user: alice}, {user: carol}]").await;
    let uid = w.env.awaiting("mine").await;
    for approve in [true, false] {
        let text = w.click(ALICE, approve, "mine", &uid).await;
        assert!(text.contains("your own request"), "{text}");
        assert!(w.env.approvals("mine").await.is_empty());
    }
    assert_eq!(
        w.env.get("mine").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // The role's other approver can.
    let text = w.click(CAROL, true, "mine", &uid).await;
    assert!(text.contains("Recorded"), "{text}");
    w.env.wait_phase("mine", Phase::Active).await;
}

#[tokio::test]
async fn forged_and_replayed_clicks_get_401_and_nothing_is_written() {
    let w = World::new("slack-forged", ROLE).await;
    let uid = w.env.awaiting("forged").await;
    let payload = block_actions(
        CAROL,
        interactions::APPROVE_ACTION,
        &w.env.ns,
        "forged",
        &uid,
    );
    for signing in [
        Signing::WrongSecret,
        Signing::TamperedBody,
        Signing::Unsigned,
        Signing::Stale(301),
        Signing::Stale(3600),
        Signing::Future(3600),
    ] {
        let answer = w.slack.post(&payload, signing).await;
        assert_eq!(answer.status, 401, "{signing:?}: {answer:?}");
        assert!(
            w.env.approvals("forged").await.is_empty(),
            "{signing:?} wrote a vote"
        );
    }
    assert_eq!(
        w.env.get("forged").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // The very same payload, correctly signed, is recorded.
    let answer = w.slack.post(&payload, Signing::Correct).await;
    assert!(answer.ephemeral_text().contains("Recorded"), "{answer:?}");
    w.env.wait_phase("forged", Phase::Active).await;
}

#[tokio::test]
async fn a_mapped_group_member_votes_as_their_username_in_that_group() {
    // erin's SlackIdentity lists group sre-leads: her click counts through the role's
    // group entry, recorded under her Kubernetes username.
    let w = World::new("slack-group", "  approvers: [{group: sre-leads}]").await;
    let uid = w.env.awaiting("by-group").await;
    let text = w.click(ERIN, true, "by-group", &uid).await;
    assert!(text.contains("Recorded your approval"), "{text}");
    assert!(text.contains("as erin"), "{text}");
    let vote = w
        .env
        .only_slack_vote("by-group", Phase::Active, "erin", Decision::Approve)
        .await;
    assert_eq!(vote.group.as_deref(), Some("sre-leads"));
}

/// Attack: alice asks, and, being in the approver group too, approves her own request
/// with one click in Slack. Refused: her click is alice, whatever the entry says.
#[tokio::test]
async fn the_requester_in_an_approver_group_cannot_approve_their_own_request_from_slack() {
    let w = World::new("slack-self-group", SRE_GROUP_ROLE).await;
    let uid = w.env.awaiting("own").await;
    for approve in [true, false] {
        let text = w.click(ALICE, approve, "own", &uid).await;
        assert!(text.contains("your own request"), "{text}");
        assert!(
            w.env.approvals("own").await.is_empty(),
            "nothing may be recorded"
        );
    }
    assert_eq!(
        w.env.get("own").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // Another member of the group approves, as who they are.
    let text = w.click(CAROL, true, "own", &uid).await;
    assert!(text.contains("Recorded your approval"), "{text}");
    let vote = w
        .env
        .only_slack_vote("own", Phase::Active, "carol", Decision::Approve)
        .await;
    assert_eq!(vote.group.as_deref(), Some("sre"));
}

/// Attack: dave approves by kubectl, then clicks Approve in Slack, to make two of two
/// approvals alone. Refused: both are dave, and dave has voted.
#[tokio::test]
async fn one_person_votes_once_across_kubectl_and_slack() {
    let w = World::new(
        "slack-twice",
        &format!("{SRE_GROUP_ROLE}\n  approvalsRequired: 2"),
    )
    .await;
    let uid = w.env.awaiting("once").await;
    succeeded(&stack().kube.append_approval(
        User::Dave,
        &w.env.ns,
        "once",
        r#"{"approver":"dave","decision":"Approve","group":"sre","comment":"by kubectl"}"#,
    ));
    w.env.wait_message("once", "1 of 2 approvals").await;
    for approve in [true, false] {
        let text = w.click(DAVE, approve, "once", &uid).await;
        assert!(text.contains("already voted"), "{text}");
        assert!(text.contains("as dave"), "{text}");
    }
    let approvals = w.env.approvals("once").await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(
        w.env.get("once").await.status.and_then(|s| s.phase),
        Some(Phase::AwaitingApproval)
    );
    // A second person makes it two.
    let text = w.click(CAROL, true, "once", &uid).await;
    assert!(text.contains("Recorded"), "{text}");
    let r = w.env.wait_phase("once", Phase::Active).await;
    let votes: Vec<_> = r
        .status
        .and_then(|s| s.approvals)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.approver, a.via))
        .collect();
    assert_eq!(
        votes,
        [
            ("dave".to_string(), ApprovalChannel::Kubectl),
            ("carol".to_string(), ApprovalChannel::Slack)
        ]
    );
}

/// Attack: a requester (or an approver) maps a Slack account to someone else, to vote
/// as them. Only admins may write SlackIdentities.
#[tokio::test]
async fn only_admins_may_map_slack_users_to_people() {
    map_slack_users();
    let kube = &stack().kube;
    let forged = slack_identity_yaml("uforged01", "UFORGED01", "carol", &["sre"]);
    for user in [User::Alice, User::Carol] {
        refused(
            &kube.kubectl_stdin(user, &["create", "-f", "-"], &forged),
            "forbidden",
        );
        // Nor may they re-point an existing mapping (alice's own included).
        refused(
            &kube.kubectl(
                user,
                &[
                    "patch",
                    "slackidentity",
                    "ualice01",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"username":"carol"}}"#,
                ],
            ),
            "forbidden",
        );
        refused(
            &kube.kubectl(user, &["delete", "slackidentity", "ucarol01"]),
            "forbidden",
        );
    }
    // A namespace admin with every verb on every resource of their namespace is no
    // admin of SlackIdentities: they are cluster-scoped, beyond any RoleBinding.
    let ns = kube.create_namespace("slack-ns-admin").await;
    succeeded(&kube.kubectl_stdin(
        User::Admin,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: owner\n  namespace: {ns}\n\
             rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: owner\n  namespace: {ns}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: owner}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]\n"
        ),
    ));
    refused(
        &kube.kubectl_stdin(User::Alice, &["create", "-n", &ns, "-f", "-"], &forged),
        "forbidden",
    );
    let got = succeeded(&kube.kubectl(
        User::Admin,
        &[
            "get",
            "slackidentity",
            "ualice01",
            "-o",
            "jsonpath={.spec.username}",
        ],
    ));
    assert_eq!(got, "alice");
    refused(
        &kube.kubectl(User::Admin, &["get", "slackidentity", "uforged01"]),
        "NotFound",
    );
}
