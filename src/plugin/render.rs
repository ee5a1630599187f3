//! Pure: what `list` shows (rows like `kubectl get`), "expires in", ages, colour, and the
//! `-o` forms. Approvals n/N are counted by the controller's own `tally`.
use jiff::Timestamp;

use crate::crd::{AccessRequest, AccessRole, Phase};
use crate::policy::decide;

/// `-o` as kubectl spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Name,
}

/// Why an object could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// `accessrequest.aws-jit.io/<name>`, as `kubectl get -o name` prints it.
pub fn name_form(request: &AccessRequest) -> String {
    format!(
        "accessrequest.aws-jit.io/{}",
        request.metadata.name.as_deref().unwrap_or_default()
    )
}

/// One object in the `-o` form (with a trailing newline).
pub fn object(request: &AccessRequest, output: Output) -> Result<String, RenderError> {
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(request)?),
        Output::Yaml => serde_yaml::to_string(request)?,
        Output::Name => format!("{}\n", name_form(request)),
    })
}

/// Several objects: a `List` as kubectl writes one for json/yaml, one name a line.
pub fn objects(requests: &[AccessRequest], output: Output) -> Result<String, RenderError> {
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": requests,
    });
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&list)?),
        Output::Yaml => serde_yaml::to_string(&list)?,
        Output::Name => requests
            .iter()
            .map(|r| format!("{}\n", name_form(r)))
            .collect(),
    })
}

/// A span for people, kubectl style: `45s`, `29m`, `1h5m`, `2d3h`.
pub fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..3600 => format!("{}m", s / 60),
        3600..86400 => match (s / 3600, (s % 3600) / 60) {
            (h, 0) => format!("{h}h"),
            (h, m) => format!("{h}h{m}m"),
        },
        _ => match (s / 86400, (s % 86400) / 3600) {
            (d, 0) => format!("{d}d"),
            (d, h) => format!("{d}d{h}h"),
        },
    }
}

/// "Expires in" of a request at `now`: the time left while access is held (`expired`
/// once past), `-` otherwise.
pub fn expires_in(request: &AccessRequest, now: Timestamp) -> String {
    let status = request.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    match (phase, status.and_then(|s| s.expires_at.as_ref())) {
        (Some(Phase::Active | Phase::Approved), Some(at)) => {
            let left = at.0.as_second() - now.as_second();
            if left > 0 {
                human(left)
            } else {
                "expired".into()
            }
        }
        _ => "-".into(),
    }
}

/// The votes that count, against the role's rule: `1/2`, `denied`, or `?/?` without the
/// role.
pub fn approvals(request: &AccessRequest, role: Option<&AccessRole>) -> String {
    let Some(role) = role else {
        return "?".into();
    };
    let need = role.spec.approvals_required.max(1);
    match decide::decision(role, request).0 {
        decide::Tally::Pending { have, need } => format!("{have}/{need}"),
        decide::Tally::Approved { approvers } => format!("{}/{need}", approvers.len()),
        decide::Tally::Denied { .. } => "denied".into(),
    }
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub role: String,
    pub requester: String,
    pub phase: Option<Phase>,
    pub approvals: String,
    pub expires_in: String,
    pub age: String,
}

pub fn row(request: &AccessRequest, role: Option<&AccessRole>, now: Timestamp) -> Row {
    let created = request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| human(now.as_second() - t.0.as_second()))
        .unwrap_or_else(|| "-".into());
    Row {
        namespace: request.metadata.namespace.clone().unwrap_or_default(),
        name: request.metadata.name.clone().unwrap_or_default(),
        role: request.spec.role.clone(),
        requester: request.spec.requester.clone(),
        phase: request.status.as_ref().and_then(|s| s.phase),
        approvals: approvals(request, role),
        expires_in: expires_in(request, now),
        age: created,
    }
}

/// A phase as text.
pub fn phase_text(phase: Option<Phase>) -> String {
    phase.map_or_else(|| "-".into(), |p| format!("{p:?}"))
}

/// ANSI colour of a phase: green held, yellow in progress, red refused or failed, dim
/// ended.
fn phase_colour(phase: Option<Phase>) -> &'static str {
    match phase {
        Some(Phase::Active) => "32",
        None
        | Some(Phase::Pending | Phase::AwaitingApproval | Phase::Scheduled | Phase::Approved) => {
            "33"
        }
        Some(Phase::Denied | Phase::Rejected | Phase::Failed) => "31",
        Some(Phase::Expired | Phase::Revoked) => "2",
    }
}

/// `s` safe to print on a terminal: control characters (ESC, CR, BEL, newlines, C1) and
/// the bidirectional overrides shown escaped (`\u{1b}`), so text others wrote (a
/// requester's reason, a denial's comment, an Event's note) cannot move the cursor,
/// rewrite the lines above it or reorder what a person reads before they approve.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` in the phase's colour when `colour`.
pub fn paint(text: &str, phase: Option<Phase>, colour: bool) -> String {
    if colour {
        format!("\x1b[{}m{text}\x1b[0m", phase_colour(phase))
    } else {
        text.to_owned()
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything non-empty
/// (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The table `list` prints, like `kubectl get` (a NAMESPACE column with `-A`).
pub fn table(rows: &[Row], with_namespace: bool, colour: bool) -> String {
    let mut header = vec![
        "NAME",
        "ROLE",
        "REQUESTER",
        "PHASE",
        "APPROVALS",
        "EXPIRES IN",
        "AGE",
    ];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                printable(&r.name),
                printable(&r.role),
                printable(&r.requester),
                phase_text(r.phase),
                r.approvals.clone(),
                r.expires_in.clone(),
                r.age.clone(),
            ];
            if with_namespace {
                c.insert(0, r.namespace.clone());
            }
            c
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let phase_col = if with_namespace { 4 } else { 3 };
    let line = |cells: Vec<String>, phase: Option<Option<Phase>>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            let text = match phase {
                Some(p) if i == phase_col => paint(&cell, p, colour),
                _ => cell,
            };
            out.push_str(&text);
            if i < last {
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect(), None);
    for (r, c) in rows.iter().zip(cells) {
        out.push_str(&line(c, Some(r.phase)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(required: i32) -> AccessRole {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                "approvalsRequired": required,
                "approvers": [{"user": "carol"}, {"user": "dave"}],
                "requesters": [{"user": "alice"}],
                "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
            }
        }))
        .unwrap()
    }

    fn request(status: serde_json::Value) -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team",
                         "creationTimestamp": "2026-12-01T12:00:00Z"},
            "spec": {"role": "prod-admin", "requester": "alice", "reason": "INC-1"},
            "status": status
        }))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn spans_read_like_kubectl() {
        assert_eq!(human(-5), "0s");
        assert_eq!(human(45), "45s");
        assert_eq!(human(119), "119s");
        assert_eq!(human(29 * 60 + 59), "29m");
        assert_eq!(human(3600), "1h");
        assert_eq!(human(3900), "1h5m");
        assert_eq!(human(2 * 86400 + 3 * 3600 + 5), "2d3h");
    }

    #[test]
    fn expires_in_only_while_access_is_held() {
        let active = request(json!({"phase": "Active", "expiresAt": "2026-12-01T12:30:00Z"}));
        assert_eq!(expires_in(&active, at("2026-12-01T12:00:30Z")), "29m");
        assert_eq!(expires_in(&active, at("2026-12-01T12:31:00Z")), "expired");
        let ended = request(json!({"phase": "Revoked", "expiresAt": "2026-12-01T12:30:00Z"}));
        assert_eq!(expires_in(&ended, at("2026-12-01T12:00:30Z")), "-");
        assert_eq!(
            expires_in(&request(json!(null)), at("2026-12-01T12:00:30Z")),
            "-"
        );
    }

    #[test]
    fn approvals_count_only_what_the_controller_counts() {
        let r = request(json!({"phase": "AwaitingApproval", "approvals": [
            {"approver": "alice", "decision": "Approve"},
            {"approver": "mallory", "decision": "Approve"},
            {"approver": "carol", "decision": "Approve"}]}));
        assert_eq!(approvals(&r, Some(&role(2))), "1/2");
        assert_eq!(approvals(&r, Some(&role(1))), "1/1");
        assert_eq!(approvals(&r, None), "?");
        let denied = request(json!({"approvals": [{"approver": "dave", "decision": "Deny"}]}));
        assert_eq!(approvals(&denied, Some(&role(1))), "denied");
    }

    #[test]
    fn the_table_lines_up_and_colours_only_when_asked() {
        let now = at("2026-12-01T12:10:00Z");
        let r = request(
            json!({"phase": "Active", "expiresAt": "2026-12-01T12:40:00Z",
            "approvals": [{"approver": "carol", "decision": "Approve"}]}),
        );
        let rows = vec![row(&r, Some(&role(1)), now)];
        let plain = table(&rows, false, false);
        assert_eq!(
            plain,
            "NAME   ROLE         REQUESTER   PHASE    APPROVALS   EXPIRES IN   AGE\n\
             fix    prod-admin   alice       Active   1/1         30m          10m\n"
        );
        let wide = table(&rows, true, false);
        assert!(wide.starts_with("NAMESPACE   NAME"), "{wide}");
        assert!(wide.contains("\nteam        fix"), "{wide}");
        let coloured = table(&rows, false, true);
        assert!(coloured.contains("\x1b[32mActive\x1b[0m"), "{coloured}");
        assert!(!plain.contains('\x1b'));
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn output_forms() {
        let r = request(json!({"phase": "Active"}));
        assert_eq!(
            object(&r, Output::Name).unwrap(),
            "accessrequest.aws-jit.io/fix\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&object(&r, Output::Json).unwrap()).unwrap();
        assert_eq!(json["status"]["phase"], "Active");
        let yaml: serde_json::Value =
            serde_yaml::from_str(&objects(std::slice::from_ref(&r), Output::Yaml).unwrap())
                .unwrap();
        assert_eq!(yaml["kind"], "List");
        assert_eq!(yaml["items"][0]["metadata"]["name"], "fix");
        assert_eq!(
            objects(&[r.clone(), r], Output::Name).unwrap(),
            "accessrequest.aws-jit.io/fix\naccessrequest.aws-jit.io/fix\n"
        );
    }
}
