//! `sts:AssumeRole` for a grant, from the caller's own base AWS credentials (the SDK's
//! default chain, or a named profile). The base credentials are only ever handed to the
//! SDK: never printed, never logged.
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;

use super::Error;
use super::access::{AssumeRole, Credentials};

pub async fn assume(call: &AssumeRole, source_profile: Option<&str>) -> Result<Credentials, Error> {
    let mut region = RegionProviderChain::default_provider();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = source_profile {
        region = RegionProviderChain::first_try(
            aws_config::profile::ProfileFileRegionProvider::builder()
                .profile_name(profile)
                .build(),
        )
        .or_else(region);
        loader = loader.profile_name(profile);
    }
    // STS answers in every region; one must be set.
    let config = loader.region(region.or_else("us-east-1")).load().await;
    let sts = aws_sdk_sts::Client::new(&config);
    let out = sts
        .assume_role()
        .role_arn(&call.role_arn)
        .role_session_name(&call.session_name)
        .source_identity(&call.source_identity)
        .duration_seconds(call.duration_seconds)
        .send()
        .await
        .map_err(|e| {
            Error::Aws(format!(
                "sts:AssumeRole of {} as session {} with source identity {} failed (are your \
                 base AWS credentials{} those of the principal the AccessRole maps you to?): {}",
                call.role_arn,
                call.session_name,
                call.source_identity,
                source_profile
                    .map(|p| format!(" (profile {p})"))
                    .unwrap_or_default(),
                aws_sdk_sts::error::DisplayErrorContext(&e)
            ))
        })?;
    let creds = out
        .credentials()
        .ok_or_else(|| Error::Aws("sts:AssumeRole returned no credentials".into()))?;
    let expiration = jiff::Timestamp::from_second(creds.expiration().secs())
        .map_err(|e| Error::Aws(format!("sts:AssumeRole's expiration: {e}")))?;
    Ok(Credentials {
        access_key_id: creds.access_key_id().to_owned(),
        secret_access_key: creds.secret_access_key().to_owned(),
        session_token: creds.session_token().to_owned(),
        expiration,
    })
}
