//! Pure: what `credentials` asks STS for and prints, which request a ROLE means, and the
//! `~/.aws/config` profile of `aws-profile`. The session name and source identity are
//! the ones the grant recorded (`status.access`), which the trust statement requires.
use jiff::Timestamp;

use crate::crd::{AccessRequest, AccessRole, Phase};
use crate::policy::decide;

/// Why there are no credentials to get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAccess {
    /// Exit 4.
    #[error("{name} is {phase}, not Active: it grants no access now. {how}")]
    NotActive {
        name: String,
        phase: String,
        how: String,
    },
    /// Exit 4.
    #[error(
        "you ({user}) have no Active request for AccessRole {role} in namespace {namespace}. {how}"
    )]
    NoneForRole {
        user: String,
        role: String,
        namespace: String,
        how: String,
    },
    /// Exit 4: the method has no credentials to hand out.
    #[error("{name} is granted by {method}, which has no role to assume: {how}")]
    NotTrustPolicy {
        name: String,
        method: String,
        how: String,
    },
    /// Exit 3.
    #[error(
        "{name} is {requester}'s request, not yours ({user}): its grant trusts only {requester}"
    )]
    NotYours {
        name: String,
        requester: String,
        user: String,
    },
    /// Exit 1: the controller has not written what the grant requires.
    #[error("{name} is Active but its status.access lacks {field}")]
    Incomplete { name: String, field: &'static str },
}

/// The command that asks for `role` (what `credentials` tells a person without access).
pub fn request_command(role: &str, namespace: &str) -> String {
    format!("Ask for it with: kubectl jit request {role} --reason \"…\" -n {namespace} --wait")
}

/// The `sts:AssumeRole` call for a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub session_name: String,
    pub source_identity: String,
    pub duration_seconds: i32,
    /// The grant's end: the credentials are reported as expiring no later.
    pub grant_expires: Timestamp,
}

/// STS's shortest session.
pub const MIN_SESSION: i64 = 900;
/// The longest session asked for (a chained role session's limit too).
pub const MAX_SESSION: i64 = 3600;

/// What to ask STS for `request`, as `caller`, at `now`: min(1 h, time left) floored at
/// STS's 15 minutes (the grant's session deny ends a longer session at the expiry).
pub fn assume_role(
    request: &AccessRequest,
    role: Option<&AccessRole>,
    caller: &str,
    now: Timestamp,
) -> Result<AssumeRole, NoAccess> {
    let name = request.metadata.name.clone().unwrap_or_default();
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let status = request.status.clone().unwrap_or_default();
    if request.spec.requester != caller {
        return Err(NoAccess::NotYours {
            name,
            requester: request.spec.requester.clone(),
            user: caller.to_owned(),
        });
    }
    if status.phase != Some(Phase::Active) {
        return Err(NoAccess::NotActive {
            name,
            phase: status
                .phase
                .map_or_else(|| "not yet started".into(), |p| format!("{p:?}")),
            how: request_command(&request.spec.role, &namespace),
        });
    }
    // Active, but its end is under way: an early revoke that counts (the controller's
    // own rule), or a revoke the operator cannot finish yet (Ready=False). A new session
    // would be access someone with a say asked to end.
    let revoke_asked = decide::effective_revocation(
        role,
        &request.spec.requester,
        status.revocations.as_deref().unwrap_or_default(),
    )
    .is_some();
    let not_ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .filter(|c| c.status != "True");
    if revoke_asked || not_ready.is_some() {
        return Err(NoAccess::NotActive {
            name,
            phase: match not_ready {
                Some(c) => format!("being ended ({})", c.reason),
                None => "being ended (an early revoke was asked)".into(),
            },
            how: request_command(&request.spec.role, &namespace),
        });
    }
    let access = status.access.unwrap_or_default();
    let method = status
        .grant
        .as_ref()
        .map(|g| g.method.clone())
        .unwrap_or_else(|| "TrustPolicy".into());
    if method != "TrustPolicy" || access.role_arn.is_empty() {
        return Err(NoAccess::NotTrustPolicy {
            name,
            method,
            how: access.how,
        });
    }
    let incomplete = |field| NoAccess::Incomplete {
        name: name.clone(),
        field,
    };
    if access.session_name.is_empty() {
        return Err(incomplete("sessionName"));
    }
    if access.source_identity.is_empty() {
        return Err(incomplete("sourceIdentity"));
    }
    let expires = status
        .expires_at
        .map(|t| t.0)
        .ok_or_else(|| incomplete("expiresAt (status)"))?;
    let left = expires.as_second() - now.as_second();
    if left <= 0 {
        // Past its end, though the controller has not recorded it yet: AWS refuses.
        return Err(NoAccess::NotActive {
            name,
            phase: "past its expiry".into(),
            how: request_command(&request.spec.role, &namespace),
        });
    }
    let duration = left.clamp(MIN_SESSION, MAX_SESSION);
    Ok(AssumeRole {
        role_arn: access.role_arn,
        session_name: access.session_name,
        source_identity: access.source_identity,
        duration_seconds: i32::try_from(duration).unwrap_or(900),
        grant_expires: expires,
    })
}

/// The caller's Active request for AccessRole `role` among `requests`: the one that
/// lasts longest.
pub fn for_role<'a>(
    requests: &'a [AccessRequest],
    role: &str,
    caller: &str,
) -> Option<&'a AccessRequest> {
    requests
        .iter()
        .filter(|r| {
            r.spec.role == role
                && r.spec.requester == caller
                && r.metadata.deletion_timestamp.is_none()
                && r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
        })
        .max_by_key(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.expires_at.as_ref())
                .map(|t| t.0)
        })
}

/// Which request `target` means for `caller`: the request of that name when it is the
/// caller's Active one; else the caller's Active request for the AccessRole of that
/// name (so nobody blocks `credentials ROLE` by naming a request like the role); else
/// the request of that name, whose refusal then says why.
pub fn pick<'a>(
    named: Option<&'a AccessRequest>,
    all: &'a [AccessRequest],
    target: &str,
    caller: &str,
) -> Option<&'a AccessRequest> {
    let active_of_caller = |r: &AccessRequest| {
        r.spec.requester == caller
            && r.metadata.deletion_timestamp.is_none()
            && r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
    };
    named
        .filter(|r| active_of_caller(r))
        .or_else(|| for_role(all, target, caller))
        .or(named)
}

/// Credentials as STS returned them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The AWS CLI's `credential_process` JSON; `Expiration` no later than the grant's end,
/// so the CLI asks again then (and is told the grant is over).
pub fn credential_process(creds: &Credentials, grant_expires: Timestamp) -> serde_json::Value {
    let expiration = creds.expiration.min(grant_expires);
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "SessionToken": creds.session_token,
        "Expiration": format!("{:.0}", expiration),
    })
}

/// An argument of `credential_process`, quoted when it needs it; `None` when it cannot
/// be written on one line. The AWS SDKs run the line with `sh -c` and the AWS CLI splits
/// it with `shlex`: single quotes (a `'` as `'\''`) mean the same to both, and nothing in
/// them is expanded (double quotes would run `$(…)` and backticks in `sh`).
fn quoted(arg: &str) -> Option<String> {
    if arg.contains(['\n', '\r', '\0']) {
        return None;
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        Some(arg.to_owned())
    } else {
        Some(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// The flags that choose the cluster and the caller, passed on unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    pub namespace: String,
    pub source_profile: Option<String>,
}

/// A `~/.aws/config` profile whose `credential_process` runs this plugin for `name`
/// with the same kubeconfig, context and namespace. `None` when an argument cannot be
/// written in the file (a line break in it).
pub fn profile(profile_name: &str, name: &str, target: &Target) -> Option<String> {
    let mut args = vec![
        "kubectl-jit".to_owned(),
        "credentials".to_owned(),
        name.to_owned(),
    ];
    if let Some(k) = &target.kubeconfig {
        args.extend(["--kubeconfig".to_owned(), k.clone()]);
    }
    if let Some(c) = &target.context {
        args.extend(["--context".to_owned(), c.clone()]);
    }
    args.extend(["--namespace".to_owned(), target.namespace.clone()]);
    if let Some(p) = &target.source_profile {
        args.extend(["--source-profile".to_owned(), p.clone()]);
    }
    let line = args
        .iter()
        .map(|a| quoted(a))
        .collect::<Option<Vec<_>>>()?
        .join(" ");
    let header = quoted(profile_name)?;
    Some(format!(
        "[profile {header}]\n# aws-jit: {name} in namespace {ns}, credentials from `kubectl jit`\ncredential_process = {line}\n",
        ns = target.namespace
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(phase: &str, expires: &str) -> AccessRequest {
        serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "fix", "namespace": "team"},
            "spec": {"role": "prod-admin", "requester": "alice", "reason": "INC-1"},
            "status": {
                "phase": phase,
                "expiresAt": expires,
                "grant": {"method": "TrustPolicy", "statementId": "x"},
                "access": {
                    "how": "assume it",
                    "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                    "sessionName": "ar-0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e",
                    "sourceIdentity": "alice"
                }
            }
        }))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_session_is_the_one_the_grant_requires_and_never_outlives_an_hour() {
        let r = request("Active", "2026-12-01T14:00:00Z");
        let call = assume_role(&r, None, "alice", at("2026-12-01T12:00:00Z")).unwrap();
        assert_eq!(
            call.role_arn,
            "arn:aws:iam::123456789012:role/jit/prod-admin"
        );
        assert_eq!(call.session_name, "ar-0b5f7a4e-9c1d-4e2b-8f3a-1d2c3b4a5f6e");
        assert_eq!(call.source_identity, "alice");
        assert_eq!(call.duration_seconds, 3600);
        // 20 minutes left: 20 minutes; 5 left: STS's floor of 15.
        let call = assume_role(&r, None, "alice", at("2026-12-01T13:40:00Z")).unwrap();
        assert_eq!(call.duration_seconds, 1200);
        let call = assume_role(&r, None, "alice", at("2026-12-01T13:55:00Z")).unwrap();
        assert_eq!(call.duration_seconds, 900);
        assert_eq!(call.grant_expires, at("2026-12-01T14:00:00Z"));
        // Past the end (the controller not there yet): nothing to ask for.
        let err = assume_role(&r, None, "alice", at("2026-12-01T14:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("past its expiry"), "{err}");
    }

    #[test]
    fn no_credentials_without_an_active_grant_of_ones_own() {
        let now = at("2026-12-01T12:00:00Z");
        for phase in ["AwaitingApproval", "Revoked", "Expired", "Denied"] {
            let err = assume_role(&request(phase, "2026-12-01T14:00:00Z"), None, "alice", now)
                .unwrap_err();
            assert!(matches!(err, NoAccess::NotActive { .. }), "{phase}");
            assert!(
                err.to_string()
                    .contains("kubectl jit request prod-admin --reason \"…\" -n team"),
                "{err}"
            );
        }
        let err =
            assume_role(&request("Active", "2026-12-01T14:00:00Z"), None, "bob", now).unwrap_err();
        assert!(matches!(err, NoAccess::NotYours { .. }), "{err}");
        let mut group = request("Active", "2026-12-01T14:00:00Z");
        let status = group.status.as_mut().unwrap();
        status.grant.as_mut().unwrap().method = "IamGroup".into();
        status.access = Some(crate::crd::AccessInstructions {
            how: "use your own IAM user".into(),
            ..Default::default()
        });
        let err = assume_role(&group, None, "alice", now).unwrap_err();
        assert!(err.to_string().contains("use your own IAM user"), "{err}");
    }

    /// An Active request whose end is under way mints no new session: an early revoke
    /// asked by someone with a say (the requester, a listed approver, an admin), or a
    /// revoke the operator cannot finish (`Ready=False RevokeFailing`). Someone with no
    /// say does not stand in the way.
    #[test]
    fn no_new_session_while_the_access_is_being_ended() {
        let now = at("2026-12-01T12:00:00Z");
        let role: AccessRole = serde_json::from_value(json!({
            "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRole",
            "metadata": {"name": "prod-admin"},
            "spec": {
                "roleArn": "arn:aws:iam::123456789012:role/jit/prod-admin",
                "approvers": [{"user": "carol"}],
                "requesters": [{"user": "alice"}],
                "principal": {"template": "arn:aws:iam::123456789012:user/{username}"}
            }
        }))
        .unwrap();
        let revoked_by = |who: &str, group: Option<&str>| {
            let mut r = request("Active", "2026-12-01T14:00:00Z");
            r.status.as_mut().unwrap().revocations = Some(vec![crate::crd::Revocation {
                requested_by: who.into(),
                group: group.map(str::to_owned),
                reason: None,
                time: None,
            }]);
            r
        };
        for r in [
            revoked_by("alice", None),
            revoked_by("carol", None),
            revoked_by("root", Some("system:masters")),
        ] {
            let err = assume_role(&r, Some(&role), "alice", now).unwrap_err();
            assert!(matches!(err, NoAccess::NotActive { .. }), "{err}");
            assert!(err.to_string().contains("being ended"), "{err}");
        }
        // mallory has no say: the controller ignores her entry, so does this.
        assert!(assume_role(&revoked_by("mallory", None), Some(&role), "alice", now).is_ok());

        let mut failing = request("Active", "2026-12-01T14:00:00Z");
        let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
        let status = failing.status.as_mut().unwrap();
        status.conditions =
            crate::policy::decide::conditions_for(&[], Phase::Active, "held", Some(1), &t);
        crate::policy::decide::set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "RevokeFailing",
            "the operator cannot end access yet",
            Some(1),
            &t,
        );
        let err = assume_role(&failing, Some(&role), "alice", now).unwrap_err();
        assert!(err.to_string().contains("being ended"), "{err}");
    }

    #[test]
    fn the_expiration_is_the_grants_when_that_comes_first() {
        let creds = Credentials {
            access_key_id: "ASIA".into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration: at("2026-12-01T13:00:00Z"),
        };
        let out = credential_process(&creds, at("2026-12-01T12:20:00Z"));
        assert_eq!(out["Version"], 1);
        assert_eq!(out["Expiration"], "2026-12-01T12:20:00Z");
        let out = credential_process(&creds, at("2026-12-01T14:00:00Z"));
        assert_eq!(out["Expiration"], "2026-12-01T13:00:00Z");
        assert_eq!(out["SessionToken"], "t");
        // Debug never shows the secret.
        assert!(!format!("{creds:?}").contains("\"s\""));
    }

    #[test]
    fn a_role_means_the_callers_longest_active_request_for_it() {
        let mut a = request("Active", "2026-12-01T13:00:00Z");
        a.metadata.name = Some("a".into());
        let mut b = request("Active", "2026-12-01T14:00:00Z");
        b.metadata.name = Some("b".into());
        let mut ended = request("Revoked", "2026-12-01T15:00:00Z");
        ended.metadata.name = Some("c".into());
        let all = vec![a, b, ended];
        let found = for_role(&all, "prod-admin", "alice").unwrap();
        assert_eq!(found.metadata.name.as_deref(), Some("b"));
        assert!(for_role(&all, "prod-admin", "bob").is_none());
        assert!(for_role(&all, "other", "alice").is_none());
    }

    /// The AWS SDKs run `credential_process` with `sh -c` (Rust, Go, Java) and the AWS
    /// CLI splits it with Python's `shlex`: each must see exactly the plugin's arguments,
    /// whatever a kubeconfig path or context name holds (`$`, backticks, quotes, spaces),
    /// and nothing in them may run.
    #[test]
    fn the_profile_line_means_the_same_to_a_shell_and_to_the_aws_cli() {
        let canary = std::env::temp_dir().join(format!("aws-jit-canary-{}", std::process::id()));
        let _ = std::fs::remove_file(&canary);
        let target = Target {
            kubeconfig: Some(format!(
                "/home/a b/$HOME/it's `touch {}`/k\\8s",
                canary.display()
            )),
            context: Some(format!(
                "arn:aws:eks:eu-west-1:1:cluster/$(touch {})",
                canary.display()
            )),
            namespace: "team".into(),
            source_profile: Some("my profile".into()),
        };
        let expected = [
            "kubectl-jit",
            "credentials",
            "fix",
            "--kubeconfig",
            target.kubeconfig.as_deref().unwrap(),
            "--context",
            target.context.as_deref().unwrap(),
            "--namespace",
            "team",
            "--source-profile",
            "my profile",
        ];
        let p = profile("aws-jit-fix", "fix", &target).expect("a profile");
        let line = p
            .lines()
            .find_map(|l| l.strip_prefix("credential_process = "))
            .expect("credential_process line");
        // sh -c, with the program replaced by one that prints its arguments.
        let script = format!("printf '%s\\n' {line}");
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(words, expected, "sh -c {line}");
        assert!(
            !canary.exists(),
            "sh ran a command from the kubeconfig path"
        );
        // The AWS CLI (botocore's compat_shell_split: shlex.split on POSIX).
        if let Ok(out) = std::process::Command::new("python3")
            .args([
                "-c",
                "import json,shlex,sys; print(json.dumps(shlex.split(sys.argv[1])))",
            ])
            .arg(line)
            .output()
        {
            let words: Vec<String> = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(words, expected, "shlex.split({line})");
        }
    }

    #[test]
    fn the_profile_calls_the_plugin_with_the_same_cluster_flags() {
        let target = Target {
            kubeconfig: Some("/home/a b/kube.yaml".into()),
            context: Some("prod".into()),
            namespace: "team".into(),
            source_profile: None,
        };
        let p = profile("aws-jit-fix", "fix", &target).unwrap();
        assert!(p.starts_with("[profile aws-jit-fix]\n"), "{p}");
        assert!(
            p.contains(
                "credential_process = kubectl-jit credentials fix --kubeconfig '/home/a b/kube.yaml' --context prod --namespace team\n"
            ),
            "{p}"
        );
        let bad = Target {
            context: Some("x\"\n[profile evil]".into()),
            ..target
        };
        assert_eq!(profile("aws-jit-fix", "fix", &bad), None);
    }

    #[test]
    fn a_request_named_like_the_role_does_not_hide_the_callers_active_one() {
        let with = |name: &str, requester: &str, phase: &str| -> AccessRequest {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aws-jit.io/v1alpha1", "kind": "AccessRequest",
                "metadata": {"name": name, "namespace": "team"},
                "spec": {"role": "prod-admin", "requester": requester, "reason": "r"},
                "status": {"phase": phase, "expiresAt": "2026-12-01T13:00:00Z"}
            }))
            .unwrap()
        };
        // bob's request named like the role, and alice's own ended one of that name.
        for named in [
            with("prod-admin", "bob", "AwaitingApproval"),
            with("prod-admin", "alice", "Expired"),
        ] {
            let mine = with("fix", "alice", "Active");
            let all = vec![named.clone(), mine.clone()];
            let got = pick(Some(&named), &all, "prod-admin", "alice");
            assert_eq!(got.and_then(|r| r.metadata.name.as_deref()), Some("fix"));
            // With no Active one of alice's, the named request answers (and says why not).
            let all = vec![named.clone()];
            let got = pick(Some(&named), &all, "prod-admin", "alice");
            assert_eq!(
                got.and_then(|r| r.metadata.name.as_deref()),
                Some("prod-admin")
            );
        }
        // The caller's own Active request of that name wins.
        let named = with("prod-admin", "alice", "Active");
        let all = vec![named.clone(), with("fix", "alice", "Active")];
        let got = pick(Some(&named), &all, "prod-admin", "alice");
        assert_eq!(
            got.and_then(|r| r.metadata.name.as_deref()),
            Some("prod-admin")
        );
    }
}
