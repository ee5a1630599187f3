//! Who the caller is, as the apiserver authenticates them: a SelfSubjectReview (what
//! `kubectl auth whoami` asks). Every vote, revocation and request the plugin writes is
//! in this name; admission checks it again.
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

use super::Error;
use super::votes::Caller;

pub async fn whoami(client: &kube::Client) -> Result<Caller, Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| Error::kube("asking the apiserver who you are (SelfSubjectReview)", e))?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    let username = info
        .username
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::Cluster("the apiserver did not say who you are".into()))?;
    Ok(Caller {
        username,
        groups: info.groups.unwrap_or_default(),
    })
}
