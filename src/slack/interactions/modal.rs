//! The Deny comment modal: a Deny click opens a modal (`views.open` with the click's
//! `trigger_id`) that asks why; its `view_submission` carries the comment and records
//! the Deny. The modal's `private_metadata` is the request's identity
//! (`{"namespace","name","uid"}`), as on the button.
use std::fmt;

use serde_json::{Value, json};
use slack_morphism::prelude::*;

use crate::crd::RequestRef;

/// The modal's `callback_id`.
pub const DENY_CALLBACK: &str = "aws-jit-deny";
/// The comment input's block_id and action_id.
pub const COMMENT_BLOCK: &str = "comment";
pub const COMMENT_ACTION: &str = "comment";
/// The longest comment an Approval holds.
pub const MAX_COMMENT: usize = 1024;

/// The Slack Web API as the bot (only `views.open` is used here). Its `Debug` never
/// shows the token.
pub struct SlackWeb {
    client: SlackHyperClient,
    token: SlackApiToken,
    /// Only `response_url`s starting with this are posted to.
    response_url_prefix: String,
}

/// Where Slack's `response_url`s point.
pub const SLACK_RESPONSE_URL_PREFIX: &str = "https://hooks.slack.com/";

impl fmt::Debug for SlackWeb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlackWeb(<token redacted>)")
    }
}

impl SlackWeb {
    /// `api_url` is the Web API's base, `https://slack.com/api/` (`http://` works too,
    /// for a local stand-in); `bot_token` the app's bot token (`xoxb-…`).
    pub fn new(api_url: &str, bot_token: &str) -> Result<SlackWeb, String> {
        Ok(SlackWeb {
            client: crate::slack::relay::slack::client(api_url)?,
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.to_string())),
            response_url_prefix: SLACK_RESPONSE_URL_PREFIX.into(),
        })
    }

    /// Accepts `response_url`s under `prefix` instead of Slack's (a local stand-in).
    pub fn with_response_url_prefix(mut self, prefix: &str) -> SlackWeb {
        self.response_url_prefix = prefix.to_string();
        self
    }

    /// Posts an ephemeral message to the clicker through the click's `response_url`
    /// (how Slack shows an answer to a `block_actions` click). URLs outside
    /// [`SLACK_RESPONSE_URL_PREFIX`] are refused: the payload is signed, but the
    /// operator should never be made to POST elsewhere.
    pub async fn respond_ephemeral(&self, response_url: &str, text: &str) -> Result<(), String> {
        use slack_morphism::{SlackClientApiCallContext, SlackClientHttpConnector};
        if !response_url.starts_with(&self.response_url_prefix) {
            return Err("response_url is not Slack's".into());
        }
        let url = response_url
            .parse()
            .map_err(|e| format!("response_url: {e}"))?;
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        let span = tracing::debug_span!("Slack response_url");
        let context = SlackClientApiCallContext {
            rate_control_params: None,
            token: None,
            tracing_span: &span,
            is_sensitive_url: true,
        };
        self.client
            .http_api
            .connector
            .http_post_uri::<Value, Value>(url, &body, context)
            .await
            .map(|_| ())
            .map_err(|e| format!("response_url: {e}"))
    }

    /// Opens the Deny modal for `target` in answer to the click `trigger_id`.
    pub async fn open_deny_modal(
        &self,
        trigger_id: &str,
        target: &RequestRef,
    ) -> Result<(), String> {
        let view: SlackView = serde_json::from_value(deny_modal(target))
            .map_err(|e| format!("the modal does not parse: {e}"))?;
        let req = SlackApiViewsOpenRequest::new(SlackTriggerId(trigger_id.to_string()), view);
        self.client
            .open_session(&self.token)
            .views_open(&req)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                slack_morphism::errors::SlackClientError::ApiError(e) => {
                    format!("views.open: {}", e.code)
                }
                other => format!("views.open: {other}"),
            })
    }
}

/// The Deny modal's view (Block Kit).
pub fn deny_modal(target: &RequestRef) -> Value {
    let metadata = serde_json::to_string(target).unwrap_or_default();
    let what = format!("{}/{}", target.namespace, target.name);
    json!({
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Deny access request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": format!("Deny *{}*? The requester sees your comment.", escape(&what))}
            },
            {
                "type": "input",
                "block_id": COMMENT_BLOCK,
                "label": {"type": "plain_text", "text": "Why"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": COMMENT_ACTION,
                    "multiline": true,
                    "max_length": MAX_COMMENT
                }
            }
        ]
    })
}

/// Slack's mrkdwn escaping (`&`, `<`, `>`).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The comment of a submitted Deny modal (`view.state.values`), trimmed; `None` when
/// absent or blank.
pub fn submitted_comment(state_values: &Value) -> Option<String> {
    state_values[COMMENT_BLOCK][COMMENT_ACTION]["value"]
        .as_str()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modal_is_a_valid_slack_view_carrying_the_request() {
        let target = RequestRef {
            namespace: "team".into(),
            name: "req<1>".into(),
            uid: "u-1".into(),
        };
        let v = deny_modal(&target);
        let view: SlackView = serde_json::from_value(v.clone()).expect("a SlackView");
        let SlackView::Modal(modal) = view else {
            panic!("not a modal")
        };
        assert_eq!(
            modal.callback_id.map(|c| c.0).as_deref(),
            Some(DENY_CALLBACK)
        );
        let back: RequestRef =
            serde_json::from_str(modal.private_metadata.as_deref().unwrap()).unwrap();
        assert_eq!(back, target);
        assert!(v.to_string().contains("req&lt;1&gt;"), "{v}");
    }

    #[tokio::test]
    async fn response_urls_outside_slack_are_never_posted_to() {
        crate::install_crypto_provider();
        let web = SlackWeb::new("https://slack.com/api", "xoxb-test").unwrap();
        for url in [
            "http://127.0.0.1:1/hooks/x",
            "https://hooks.slack.com.evil.example/x",
            "https://evil.example/https://hooks.slack.com/",
        ] {
            assert_eq!(
                web.respond_ephemeral(url, "hi").await,
                Err("response_url is not Slack's".into()),
                "{url}"
            );
        }
        assert!(!format!("{web:?}").contains("xoxb"));
    }

    #[test]
    fn the_comment_is_read_from_the_view_state() {
        let values =
            json!({"comment": {"comment": {"type": "plain_text_input", "value": "  not now \n"}}});
        assert_eq!(submitted_comment(&values).as_deref(), Some("not now"));
        let blank = json!({"comment": {"comment": {"type": "plain_text_input", "value": "  "}}});
        assert_eq!(submitted_comment(&blank), None);
        assert_eq!(submitted_comment(&json!({})), None);
    }
}
