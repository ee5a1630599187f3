//! Asks Kubernetes whether a message from AWS is backed by an AccessRequest, as
//! [`crate::policy::authorize`] decides, and reports what it refuses: a log line, the metric
//! `aws_jit_refused_tasks_total{queue, reason}`, and a Warning Event on the request the
//! message named (so the people who own it see that someone tried).
//!
//! The request-queue consumer asks [`Authority::task`] before it keeps a task token;
//! the trust-policy worker asks [`Authority::grant`] before any IAM write, and grants
//! what that returns, never what the message says.
use std::sync::Arc;

use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{error, warn};

use crate::aws::sfn::{SfnError, StepFunctionClient, execution_name};
use crate::contract::{ExecutionInput, RequestIdentity};
use crate::crd::{AccessRequest, AccessRole};
use crate::policy::authorize::{self, Refusal};
use crate::policy::decide::Scope;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// Kubernetes could not be asked: try again later.
    #[error("cannot read from Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    StateMachine(#[from] SfnError),
    /// Kubernetes does not back the message.
    #[error(transparent)]
    Refused(Refusal),
}

impl AuthorityError {
    /// Whether the same message may be accepted later.
    pub fn is_transient(&self) -> bool {
        match self {
            AuthorityError::Kube(_) => true,
            AuthorityError::StateMachine(_) => false,
            AuthorityError::Refused(r) => r.is_transient(),
        }
    }
}

/// Reads requests and roles to judge messages from AWS.
#[derive(Clone)]
pub struct Authority {
    client: kube::Client,
    sfn: StepFunctionClient,
    scope: Scope,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    alerts: crate::aws::alerts::SecurityAlerts,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("state_machine", &self.sfn.state_machine_arn())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(
        client: kube::Client,
        sfn: StepFunctionClient,
        scope: Scope,
        metrics: Arc<Metrics>,
        alerts: crate::aws::alerts::SecurityAlerts,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "aws-jit-controller".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            sfn,
            scope,
            recorder,
            metrics,
            alerts,
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The request a task on the request queue names, if the task's execution is the
    /// one the controller started and recorded for it.
    pub async fn task(
        &self,
        queue: &'static str,
        identity: &RequestIdentity,
        execution_arn: &str,
    ) -> Result<AccessRequest, AuthorityError> {
        let expected = self.sfn.execution_arn(&execution_name(&identity.uid))?;
        self.precheck(queue, identity, &expected, execution_arn)
            .await?;
        let request = self.request(identity).await?;
        match authorize::check_execution(request.as_ref(), identity, &expected, execution_arn) {
            Ok(()) => request.ok_or(AuthorityError::Refused(Refusal::NotYetRecorded)),
            Err(refusal) => {
                self.report(queue, identity, request.as_ref(), execution_arn, &refusal)
                    .await;
                Err(AuthorityError::Refused(refusal))
            }
        }
    }

    /// What a grant work item may grant: the input Kubernetes derives for the request it
    /// names, if everything checks out (see [`authorize::check_grant`]).
    pub async fn grant(
        &self,
        queue: &'static str,
        execution_arn: &str,
        claimed: &ExecutionInput,
    ) -> Result<ExecutionInput, AuthorityError> {
        self.judged(queue, execution_arn, claimed, |request, role, expected| {
            authorize::check_grant(request, role, &self.scope, expected, execution_arn, claimed)
        })
        .await
    }

    /// [`Authority::grant`] for an extension: the grant still stands, and extension
    /// `id` is approved to exactly `until`, on the live request and role.
    pub async fn extend(
        &self,
        queue: &'static str,
        execution_arn: &str,
        claimed: &ExecutionInput,
        id: &str,
        until: jiff::Timestamp,
    ) -> Result<ExecutionInput, AuthorityError> {
        self.judged(queue, execution_arn, claimed, |request, role, expected| {
            authorize::check_extension(
                request,
                role,
                &self.scope,
                expected,
                execution_arn,
                claimed,
                id,
                until,
            )
        })
        .await
    }

    /// A work item judged by `check` on the live request and role it names, after the
    /// checks that need no lookup; a refusal is reported.
    async fn judged(
        &self,
        queue: &'static str,
        execution_arn: &str,
        claimed: &ExecutionInput,
        check: impl FnOnce(
            Option<&AccessRequest>,
            Option<&AccessRole>,
            &str,
        ) -> Result<ExecutionInput, Refusal>,
    ) -> Result<ExecutionInput, AuthorityError> {
        let identity = &claimed.request;
        let expected = self.sfn.execution_arn(&execution_name(&identity.uid))?;
        self.precheck(queue, identity, &expected, execution_arn)
            .await?;
        let (request, role) = self.request_and_role(identity).await?;
        match check(request.as_ref(), role.as_ref(), &expected) {
            Ok(planned) => Ok(planned),
            Err(refusal) => {
                self.report(queue, identity, request.as_ref(), execution_arn, &refusal)
                    .await;
                Err(AuthorityError::Refused(refusal))
            }
        }
    }

    /// The request, read live, and its AccessRole, read live.
    async fn request_and_role(
        &self,
        identity: &RequestIdentity,
    ) -> Result<(Option<AccessRequest>, Option<AccessRole>), AuthorityError> {
        let request = self.request(identity).await?;
        let role = match &request {
            Some(r) => Api::<AccessRole>::all(self.client.clone())
                .get_opt(&r.spec.role)
                .await
                .map_err(AuthorityError::Kube)?,
            None => None,
        };
        Ok((request, role))
    }

    /// What can be refused without asking Kubernetes: an identity no request can have,
    /// an execution that is not `ar-<uid>` of this state machine. Done first, so a
    /// forged message never costs a lookup that could fail transiently.
    async fn precheck(
        &self,
        queue: &'static str,
        identity: &RequestIdentity,
        expected: &str,
        execution_arn: &str,
    ) -> Result<(), AuthorityError> {
        let refused = authorize::check_identity(identity).err().or_else(|| {
            (execution_arn != expected).then(|| Refusal::ForeignExecution {
                claimed: execution_arn.to_owned(),
                expected: expected.to_owned(),
                uid: identity.uid.clone(),
            })
        });
        match refused {
            None => Ok(()),
            Some(refusal) => {
                // The request it names, if any, is told (a valid identity only).
                let request = match authorize::check_identity(identity) {
                    Ok(()) => self.request(identity).await.ok().flatten(),
                    Err(_) => None,
                };
                self.report(queue, identity, request.as_ref(), execution_arn, &refusal)
                    .await;
                Err(AuthorityError::Refused(refusal))
            }
        }
    }

    /// The request, or None; a refusal by the apiserver (forbidden, invalid) is final,
    /// only a failure to reach it is worth retrying.
    async fn request(
        &self,
        identity: &RequestIdentity,
    ) -> Result<Option<AccessRequest>, AuthorityError> {
        match Api::<AccessRequest>::namespaced(self.client.clone(), &identity.namespace)
            .get_opt(&identity.name)
            .await
        {
            Ok(r) => Ok(r),
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && status.code != 429 =>
            {
                warn!(code = status.code, message = %status.message, "the apiserver refuses to look the request up");
                Err(AuthorityError::Refused(Refusal::NoSuchRequest {
                    namespace: identity.namespace.clone(),
                    name: identity.name.clone(),
                    uid: identity.uid.clone(),
                }))
            }
            Err(e) => Err(AuthorityError::Kube(e)),
        }
    }

    /// Whether the request `identity` names exists (and is that one).
    pub async fn exists(&self, identity: &RequestIdentity) -> Result<bool, AuthorityError> {
        if authorize::check_identity(identity).is_err() {
            return Ok(false);
        }
        Ok(self
            .request(identity)
            .await?
            .is_some_and(|r| r.metadata.uid.as_deref() == Some(identity.uid.as_str())))
    }

    /// A Warning Event on the request `identity` names, if it exists and is that one.
    pub async fn notify(&self, identity: &RequestIdentity, reason: &str, note: &str) {
        match self.request(identity).await {
            Ok(Some(request)) if request.metadata.uid.as_deref() == Some(identity.uid.as_str()) => {
                self.event(&request, reason, note).await
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, reason, "cannot read the request to report on it"),
        }
    }

    async fn event(&self, request: &AccessRequest, reason: &str, note: &str) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(crate::aws::sfn::truncate(note, 1024).to_owned()),
            action: "Refuse".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &request.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish an event");
        }
    }

    /// Logs, counts, and tells the request's owners (a Warning Event on the request the
    /// message named, when it exists and is the one named).
    async fn report(
        &self,
        queue: &'static str,
        identity: &RequestIdentity,
        request: Option<&AccessRequest>,
        execution_arn: &str,
        refusal: &Refusal,
    ) {
        if refusal.is_transient() {
            warn!(%execution_arn, %refusal, "not accepting the task yet");
            return;
        }
        self.metrics.refused(queue, refusal.reason());
        if refusal.is_forgery() {
            error!(%execution_arn, %refusal, reason = refusal.reason(), "refused a task Kubernetes does not back");
            let named = authorize::check_identity(identity)
                .is_ok()
                .then_some(identity);
            self.alerts
                .send(
                    refusal.reason(),
                    named,
                    &format!(
                        "refused a {queue}-queue task of execution {execution_arn} naming {}/{}: {refusal}",
                        identity.namespace, identity.name
                    ),
                )
                .await;
        } else {
            warn!(%execution_arn, %refusal, reason = refusal.reason(), "refused a task");
        }
        // Only on the request the message named (not a namesake re-created since).
        let Some(request) =
            request.filter(|r| r.metadata.uid.as_deref() == Some(identity.uid.as_str()))
        else {
            return;
        };
        let note = format!("refused a {queue}-queue task of execution {execution_arn}: {refusal}");
        self.event(request, refusal.reason(), &note).await;
    }
}
