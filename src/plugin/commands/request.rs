//! `request`: create the caller's AccessRequest, and with `--wait` follow it.
use std::time::{Duration, Instant};

use kube::api::PostParams;

use super::Ctx;
use crate::crd::{AccessRequest, AccessRequestSpec, Phase};
use crate::plugin::{Error, RequestArgs, identity, render, timeline, votes};

pub async fn request(ctx: &Ctx, args: RequestArgs) -> Result<(), Error> {
    let timeout = args.timeout;
    let me = identity::whoami(&ctx.client).await?;
    let mut draft = AccessRequest::new(
        args.name.as_deref().unwrap_or_default(),
        AccessRequestSpec {
            role: args.role.clone(),
            requester: me.username.clone(),
            requester_group: None,
            duration: args.duration.clone(),
            reason: args.reason.clone(),
            ticket: args.ticket.clone(),
            start_at: args
                .start_at
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            break_glass: args.break_glass,
        },
    );
    // As the apiserver will stamp it: a start too far ahead is refused before creating.
    draft.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    if args.name.is_none() {
        draft.metadata.name = None;
        let base: String = args.role.chars().take(40).collect();
        draft.metadata.generate_name = Some(format!("{}-", base.trim_end_matches(['.', '-'])));
    }
    draft.metadata.namespace = Some(ctx.namespace.clone());
    let roles: kube::Api<crate::crd::AccessRole> = kube::Api::all(ctx.client.clone());
    let role = match roles.get_opt(&args.role).await {
        Ok(None) => {
            return Err(Error::NotFound(format!(
                "AccessRole {} does not exist (kubectl get accessroles lists them)",
                args.role
            )));
        }
        Ok(Some(role)) => Some(role),
        // Not readable: admission and the controller decide.
        Err(kube::Error::Api(s)) if s.code == 403 => None,
        Err(e) => return Err(Error::kube(&format!("AccessRole {}", args.role), e)),
    };
    match role {
        Some(role) => {
            draft.spec.requester_group =
                votes::ask_as(&draft, &role, &me, args.as_group.as_deref())?;
        }
        // Not readable: admission and the controller decide; a --as-group is passed on.
        None => draft.spec.requester_group = args.as_group.clone(),
    }
    let created = ctx
        .requests()
        .create(&PostParams::default(), &draft)
        .await
        .map_err(|e| {
            Error::kube(
                &format!("creating the request in namespace {}", ctx.namespace),
                e,
            )
        })?;
    let name = created.metadata.name.clone().unwrap_or_default();
    match args.output {
        Some(output) => print!("{}", render::object(&created, output)?),
        None => println!(
            "accessrequest.aws-jit.io/{name} created: {} asks for {} in namespace {}",
            me.username, args.role, ctx.namespace
        ),
    }
    if args.wait {
        follow(ctx, &created, timeout).await?;
    }
    Ok(())
}

/// Follows `request` until it is Active (Ok) or ends without access (exit 4), printing
/// each phase change and vote to stderr.
async fn follow(
    ctx: &Ctx,
    request: &AccessRequest,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    let name = request.metadata.name.clone().unwrap_or_default();
    let uid = request.metadata.uid.clone();
    let started = Instant::now();
    let mut shown_state: Option<(Option<Phase>, Option<String>)> = None;
    let mut votes_seen = 0;
    let mut revocations_seen = 0;
    eprintln!("waiting for {name} (Ctrl-C stops waiting; the request stays)");
    loop {
        let now = match ctx.requests().get_opt(&name).await {
            Ok(Some(r)) if r.metadata.uid == uid => r,
            Ok(_) => {
                return Err(Error::NoAccess(format!(
                    "{name} was deleted while waiting: no access"
                )));
            }
            Err(e) => return Err(Error::kube(&format!("following {name}"), e)),
        };
        let status = now.status.clone().unwrap_or_default();
        let votes = status.approvals.clone().unwrap_or_default();
        for vote in votes.iter().skip(votes_seen) {
            eprintln!("  {}", render::printable(&timeline::vote_line(vote)));
        }
        votes_seen = votes_seen.max(votes.len());
        let revocations = status.revocations.clone().unwrap_or_default();
        for r in revocations.iter().skip(revocations_seen) {
            eprintln!("  early revoke asked by {}", r.requested_by);
        }
        revocations_seen = revocations_seen.max(revocations.len());
        let state = (status.phase, status.message.clone());
        if shown_state.as_ref() != Some(&state) {
            shown_state = Some(state);
            let message = status
                .message
                .as_ref()
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {}", render::printable(m)))
                .unwrap_or_default();
            let shown = match status.phase {
                None => "created; the controller has not taken it up yet".to_owned(),
                Some(_) => {
                    render::paint(&render::phase_text(status.phase), status.phase, ctx.colour)
                }
            };
            eprintln!("{name}: {shown}{message}");
        }
        match status.phase {
            Some(Phase::Active) => {
                if let Some(at) = &status.expires_at {
                    eprintln!(
                        "access granted until {} (in {})",
                        at.0,
                        render::expires_in(&now, jiff::Timestamp::now())
                    );
                }
                if status
                    .access
                    .as_ref()
                    .is_some_and(|a| !a.role_arn.is_empty())
                {
                    eprintln!(
                        "credentials: kubectl jit credentials {name} -n {}   (or: kubectl jit aws-profile {name} -n {} >> ~/.aws/config)",
                        ctx.namespace, ctx.namespace
                    );
                } else if let Some(how) = status.access.as_ref().map(|a| a.how.clone()) {
                    eprintln!("how: {}", render::printable(&how));
                }
                return Ok(());
            }
            Some(p) if p.is_terminal() => {
                return Err(Error::NoAccess(format!(
                    "{name} ended {p:?}{}",
                    status
                        .message
                        .as_ref()
                        .map(|m| format!(": {}", render::printable(m)))
                        .unwrap_or_default()
                )));
            }
            _ => {}
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            return Err(Error::Other(format!(
                "timed out after {limit:?} waiting for {name} (phase {}); it goes on: \
                 kubectl jit describe {name} -n {}",
                render::phase_text(status.phase),
                ctx.namespace
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
