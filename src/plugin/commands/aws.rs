//! `credentials` and `aws-profile`.
use kube::api::ListParams;

use super::Ctx;
use crate::crd::AccessRequest;
use crate::plugin::access::{self, NoAccess};
use crate::plugin::{AwsProfileArgs, CredentialsArgs, Error, credentials, identity};

/// The request `target` names for the caller ([`access::pick`]): an AccessRequest of
/// that name, or the caller's Active request for the AccessRole of that name.
async fn resolve(ctx: &Ctx, target: &str, user: &str) -> Result<AccessRequest, Error> {
    let named = ctx
        .requests()
        .get_opt(target)
        .await
        .map_err(|e| Error::kube(&format!("AccessRequest {target}"), e))?;
    let all = ctx
        .requests()
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing AccessRequests", e))?
        .items;
    if let Some(r) = access::pick(named.as_ref(), &all, target, user) {
        return Ok(r.clone());
    }
    let role_exists = all.iter().any(|r| r.spec.role == target) || {
        let api: kube::Api<crate::crd::AccessRole> = kube::Api::all(ctx.client.clone());
        match api.get_opt(target).await {
            Ok(found) => found.is_some(),
            // Not readable: it may exist; say how to ask for it.
            Err(_) => true,
        }
    };
    if !role_exists {
        return Err(Error::NotFound(format!(
            "no AccessRequest and no AccessRole named {target} (namespace {})",
            ctx.namespace
        )));
    }
    Err(NoAccess::NoneForRole {
        user: user.to_owned(),
        role: target.to_owned(),
        namespace: ctx.namespace.clone(),
        how: access::request_command(target, &ctx.namespace),
    }
    .into())
}

pub async fn credentials(ctx: &Ctx, args: CredentialsArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    let request = resolve(ctx, &args.target, &me.username).await?;
    let role = ctx.role(&request.spec.role).await?;
    let call = access::assume_role(
        &request,
        role.as_ref(),
        &me.username,
        jiff::Timestamp::now(),
    )?;
    let creds = credentials::assume(&call, args.source_profile.as_deref()).await?;
    let out = access::credential_process(&creds, call.grant_expires);
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| Error::Other(e.to_string()))?
    );
    Ok(())
}

pub async fn profile(ctx: &Ctx, args: AwsProfileArgs) -> Result<(), Error> {
    let me = identity::whoami(&ctx.client).await?;
    // A typo is better caught now than at the AWS CLI's first call.
    match resolve(ctx, &args.target, &me.username).await {
        Ok(_) | Err(Error::NoAccess(_)) => {}
        Err(e) => return Err(e),
    }
    let profile_name = args
        .profile_name
        .unwrap_or_else(|| format!("aws-jit-{}", args.target));
    if args.source_profile.as_deref() == Some(profile_name.as_str()) {
        return Err(Error::Refused(format!(
            "--source-profile {profile_name} is the profile being written: it would call itself"
        )));
    }
    // The kubeconfig the plugin used, absolute, so the profile works from any directory.
    let kubeconfig = ctx
        .flags
        .kubeconfig
        .clone()
        .or_else(|| {
            std::env::var_os("KUBECONFIG")
                .filter(|k| !k.is_empty() && std::env::split_paths(k).count() == 1)
                .map(std::path::PathBuf::from)
        })
        .map(|p| std::path::absolute(&p).unwrap_or(p).display().to_string());
    let target = access::Target {
        kubeconfig,
        context: ctx.flags.context.clone(),
        namespace: ctx.namespace.clone(),
        source_profile: args.source_profile,
    };
    let text = access::profile(&profile_name, &args.target, &target).ok_or_else(|| {
        Error::Refused(
            "a flag value holds a line break: it cannot be written in ~/.aws/config".into(),
        )
    })?;
    print!("{text}");
    Ok(())
}
