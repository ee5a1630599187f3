//! `approve`, `deny`, `revoke`, `extend`: one entry appended to status, in the caller's own name
//! (the SelfSubjectReview's), after the controller's own rules said it would count. The
//! patch tests the request's uid first, so a request re-created under the same name is
//! never voted on by mistake; admission checks the entry again.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use std::time::{Duration, Instant};

use super::Ctx;
use crate::crd::{AccessRequest, Decision};
use crate::plugin::{Error, ExtendArgs, Output, ReviewArgs, RevokeArgs, identity, render, votes};

/// How long a vote waits for a Pending request to ask for approval.
const PENDING_WAIT: Duration = Duration::from_secs(60);

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some("kubectl-jit".into()),
        ..PatchParams::default()
    }
}

/// JSON patch ops that append `entry` to `status.<list>`, creating the list (on
/// condition that nothing changed since it was read) when the controller has not yet.
fn append(request: &AccessRequest, list: &str, entry: Value) -> Vec<Value> {
    let mut ops = vec![json!({"op": "test", "path": "/metadata/uid", "value": request.uid()})];
    let status = request.status.as_ref();
    let exists = status.is_some_and(|s| match list {
        "approvals" => s.approvals.is_some(),
        "extensions" => s.extensions.is_some(),
        "extensionApprovals" => s.extension_approvals.is_some(),
        "reviews" => s.reviews.is_some(),
        _ => s.revocations.is_some(),
    });
    if exists {
        ops.push(json!({"op": "add", "path": format!("/status/{list}/-"), "value": entry}));
    } else {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion",
                        "value": request.resource_version()}));
        if status.is_some() {
            ops.push(json!({"op": "add", "path": format!("/status/{list}"), "value": [entry]}));
        } else {
            ops.push(json!({"op": "add", "path": "/status", "value": {list: [entry]}}));
        }
    }
    ops
}

async fn write(
    ctx: &Ctx,
    request: &AccessRequest,
    ops: Vec<Value>,
    what: &str,
) -> Result<AccessRequest, Error> {
    let name = request.name_any();
    let patch: Patch<()> = serde_json::from_value(Value::Array(ops))
        .map(Patch::Json)
        .map_err(|e| Error::Other(format!("building the patch: {e}")))?;
    ctx.requests()
        .patch_status(&name, &params(), &patch)
        .await
        .map_err(|e| Error::kube(&format!("{what} on {name}"), e))
}

/// One vote to cast: on the request, or on one of its extensions.
pub struct Vote<'a> {
    pub name: &'a str,
    pub extension: Option<&'a str>,
    pub decision: Decision,
    pub comment: Option<String>,
    pub as_group: Option<&'a str>,
}

pub async fn vote(ctx: &Ctx, vote: Vote<'_>, output: Option<Output>) -> Result<(), Error> {
    if let Some(id) = vote.extension {
        return vote_extension(ctx, &vote, id, output).await;
    }
    let Vote {
        name,
        decision,
        comment,
        as_group,
        ..
    } = vote;
    let me = identity::whoami(&ctx.client).await?;
    // A request just created is Pending for the few seconds its execution takes to ask
    // for approval: wait for that (bounded) rather than send a person away.
    let deadline = Instant::now() + PENDING_WAIT;
    let mut told = false;
    let (request, role, group) = loop {
        let request = ctx.get(name).await?;
        let role = ctx.role(&request.spec.role).await?;
        match votes::vote(&request, role.as_ref(), &me, decision, as_group) {
            Err(votes::Refusal::NotYetAwaiting { phase, .. }) if Instant::now() < deadline => {
                if !told {
                    eprintln!("{name} is {phase}: waiting for it to await approval...");
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            decided => break (request, role, decided?),
        }
    };
    let mut entry = json!({
        "approver": me.username,
        "decision": decision,
        "time": Time(jiff::Timestamp::now()),
    });
    if let Some(g) = &group {
        entry["group"] = json!(g);
    }
    if let Some(c) = comment.filter(|c| !c.is_empty()) {
        entry["comment"] = json!(c);
    }
    let ops = append(&request, "approvals", entry);
    let verb = match decision {
        Decision::Approve => "approved",
        Decision::Deny => "denied",
    };
    let after = write(ctx, &request, ops, "recording your vote").await?;
    match output {
        Some(o) => print!("{}", render::object(&after, o)?),
        None => println!(
            "accessrequest.aws-jit.io/{name} {verb} by {}{} (approvals {})",
            me.username,
            group.map(|g| format!(" as group {g}")).unwrap_or_default(),
            render::approvals(&after, role.as_ref())
        ),
    }
    Ok(())
}

pub async fn revoke(ctx: &Ctx, args: RevokeArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let request = ctx.get(&args.name).await?;
    let role = ctx.role(&request.spec.role).await?;
    let group = votes::revoke(&request, role.as_ref(), &me, args.as_group.as_deref())?;
    let mut entry = json!({
        "requestedBy": me.username,
        "time": Time(jiff::Timestamp::now()),
    });
    if let Some(g) = &group {
        entry["group"] = json!(g);
    }
    if let Some(r) = args.reason.filter(|r| !r.is_empty()) {
        entry["reason"] = json!(r);
    }
    let ops = append(&request, "revocations", entry);
    let after = write(ctx, &request, ops, "asking for the revoke").await?;
    match args.output {
        Some(o) => print!("{}", render::object(&after, o)?),
        None => println!(
            "accessrequest.aws-jit.io/{} revoke asked by {}: the controller ends its access now \
             (follow it: kubectl jit describe {} -n {})",
            args.name, me.username, args.name, ctx.namespace
        ),
    }
    Ok(())
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approved",
        Decision::Deny => "denied",
    }
}

async fn vote_extension(
    ctx: &Ctx,
    vote: &Vote<'_>,
    id: &str,
    output: Option<Output>,
) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let request = ctx.get(vote.name).await?;
    let role = ctx.role(&request.spec.role).await?;
    let group = votes::vote_extension(&request, role.as_ref(), &me, id, vote.as_group)?;
    let mut entry = json!({
        "extension": id,
        "approver": me.username,
        "decision": vote.decision,
        "time": Time(jiff::Timestamp::now()),
    });
    if let Some(g) = &group {
        entry["group"] = json!(g);
    }
    if let Some(c) = vote.comment.clone().filter(|c| !c.is_empty()) {
        entry["comment"] = json!(c);
    }
    let ops = append(&request, "extensionApprovals", entry);
    let after = write(ctx, &request, ops, "recording your vote on the extension").await?;
    match output {
        Some(o) => print!("{}", render::object(&after, o)?),
        None => println!(
            "accessrequest.aws-jit.io/{} extension {id} {} by {}{}",
            vote.name,
            verb(vote.decision),
            me.username,
            group.map(|g| format!(" as group {g}")).unwrap_or_default(),
        ),
    }
    Ok(())
}

pub async fn extend(ctx: &Ctx, args: ExtendArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let request = ctx.get(&args.name).await?;
    let role = ctx.role(&request.spec.role).await?;
    let ask = votes::extend(
        &request,
        role.as_ref(),
        &me,
        &args.by,
        &args.reason,
        jiff::Timestamp::now(),
    )?;
    let mut entry = json!({
        "id": ask.id,
        "requestedBy": me.username,
        "by": args.by,
        "time": Time(jiff::Timestamp::now()),
    });
    if !args.reason.is_empty() {
        entry["reason"] = json!(args.reason);
    }
    let ops = append(&request, "extensions", entry);
    let after = write(ctx, &request, ops, "asking for the extension").await?;
    match args.output {
        Some(o) => print!("{}", render::object(&after, o)?),
        None => println!(
            "accessrequest.aws-jit.io/{} extension {} asked: until {} once {} (follow it: \
             kubectl jit describe {} -n {})",
            args.name,
            ask.id,
            ask.until,
            match ask.need {
                0 => "the controller applies it".to_owned(),
                n => format!(
                    "{n} approver(s) approve it (kubectl jit approve {} --extension {})",
                    args.name, ask.id
                ),
            },
            args.name,
            ctx.namespace
        ),
    }
    Ok(())
}

pub async fn review(ctx: &Ctx, args: ReviewArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let request = ctx.get(&args.name).await?;
    let role = ctx.role(&request.spec.role).await?;
    let flagged = args.verdict == "Flagged";
    let comment = args.comment.filter(|c| !c.trim().is_empty());
    if flagged && comment.is_none() {
        return Err(Error::Refused(
            "--comment is required to flag: say what needs a closer look".into(),
        ));
    }
    let group = votes::review(&request, role.as_ref(), &me, args.as_group.as_deref())?;
    let mut entry = json!({
        "reviewer": me.username,
        "verdict": args.verdict,
        "time": Time(jiff::Timestamp::now()),
    });
    if let Some(g) = &group {
        entry["group"] = json!(g);
    }
    if let Some(c) = comment {
        entry["comment"] = json!(c);
    }
    let ops = append(&request, "reviews", entry);
    let after = write(ctx, &request, ops, "recording your review").await?;
    match args.output {
        Some(o) => print!("{}", render::object(&after, o)?),
        None => println!(
            "accessrequest.aws-jit.io/{} {} by {}",
            args.name,
            if flagged { "flagged" } else { "reviewed" },
            me.username
        ),
    }
    Ok(())
}
