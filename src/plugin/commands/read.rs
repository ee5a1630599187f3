//! `list` and `describe`: reads only.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Ctx;
use crate::crd::{AccessRequest, AccessRole, Decision};
use crate::plugin::timeline::{EventNote, Events};
use crate::plugin::{DescribeArgs, Error, ListArgs, identity, render, timeline, votes};

/// Every AccessRole the caller may read, by name (none when they may not list them).
async fn roles(ctx: &Ctx) -> Result<BTreeMap<String, AccessRole>, Error> {
    let api: Api<AccessRole> = Api::all(ctx.client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.into_iter().map(|r| (r.name_any(), r)).collect()),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(BTreeMap::new()),
        Err(e) => Err(Error::kube("listing AccessRoles", e)),
    }
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let api: Api<AccessRequest> = if args.all_namespaces {
        Api::all(ctx.client.clone())
    } else {
        ctx.requests()
    };
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing AccessRequests", e))?
        .items;
    let roles = roles(ctx).await?;
    items.retain(|r| {
        let role = roles.get(&r.spec.role);
        (!args.mine || r.spec.requester == me.username)
            && (!args.pending_for_me || votes::vote(r, role, &me, Decision::Approve, None).is_ok())
    });
    items.sort_by(|a, b| {
        (
            a.namespace(),
            a.creation_timestamp().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.namespace(),
                b.creation_timestamp().map(|t| t.0),
                b.name_any(),
            ))
    });
    if let Some(output) = args.output {
        print!("{}", render::objects(&items, output)?);
        return Ok(());
    }
    if items.is_empty() {
        if args.all_namespaces {
            eprintln!("No AccessRequests found.");
        } else {
            eprintln!("No AccessRequests found in namespace {}.", ctx.namespace);
        }
        return Ok(());
    }
    let now = jiff::Timestamp::now();
    let rows: Vec<render::Row> = items
        .iter()
        .map(|r| render::row(r, roles.get(&r.spec.role), now))
        .collect();
    print!("{}", render::table(&rows, args.all_namespaces, ctx.colour));
    Ok(())
}

/// The request's Events (core/v1 shows those written through events.k8s.io too).
async fn events(ctx: &Ctx, request: &AccessRequest) -> Events {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.uid={}",
        request.uid().unwrap_or_default()
    ));
    match api.list(&params).await {
        Ok(list) => Events::Read(
            list.items
                .into_iter()
                .map(|e| EventNote {
                    at: e
                        .event_time
                        .map(|t| t.0)
                        .or(e.last_timestamp.map(|t| t.0))
                        .or(e.first_timestamp.map(|t| t.0))
                        .or(e.metadata.creation_timestamp.map(|t| t.0)),
                    kind: e.type_.unwrap_or_default(),
                    reason: e.reason.unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                    count: e.series.and_then(|s| s.count).or(e.count).unwrap_or(1),
                })
                .collect(),
        ),
        Err(kube::Error::Api(s)) if s.code == 403 => Events::Forbidden(s.message),
        Err(e) => Events::Forbidden(format!("reading them failed: {e}")),
    }
}

pub async fn describe(ctx: &Ctx, args: DescribeArgs) -> Result<(), Error> {
    let request = ctx.get(&args.name).await?;
    if let Some(output) = args.output {
        print!("{}", render::object(&request, output)?);
        return Ok(());
    }
    let role = ctx.role(&request.spec.role).await?;
    let events = events(ctx, &request).await;
    print!(
        "{}",
        timeline::page(
            &request,
            role.as_ref(),
            &events,
            jiff::Timestamp::now(),
            ctx.colour
        )
    );
    Ok(())
}
