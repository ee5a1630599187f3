//! The `controller` subcommand's body: the AccessRequest controller, the request-queue
//! consumer and the trust-policy worker, run together until shutdown. Clients are
//! passed in, so tests run the very same code against the local stack.
use std::sync::Arc;
use std::time::Duration;

use crate::aws::sfn::StepFunctionClient;
use crate::controller::request_queue::RequestQueue;
use crate::controller::tokens::TokenStore;
use crate::controller::{self, Settings};
use crate::grant::trust_policy::worker::Worker;
use crate::run::leader::{Election, LeaderError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::probes::Health;

/// Where the AWS side is (the CloudFormation template's outputs).
#[derive(Clone, Debug)]
pub struct AwsTargets {
    pub state_machine_arn: String,
    /// The session-cleanup state machine (template output CleanupStateMachineArn).
    pub cleanup_state_machine_arn: String,
    pub request_queue_url: String,
    pub request_dead_letter_url: Option<String>,
    pub work_queue_url: String,
    pub work_dead_letter_url: Option<String>,
    /// Where security findings go for the relay to post to Slack (template output
    /// AlertQueueUrl); None: Events, logs and metrics only.
    pub alert_queue_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error(
        "{what} {arn:?} is not a state machine ARN (arn:<partition>:states:<region>:<account>:stateMachine:<name>)"
    )]
    NotAStateMachine { what: &'static str, arn: String },
    #[error(
        "the cleanup state machine {cleanup} must be the template's CleanupStateMachineArn: \
         another machine than {main}, in its account and region"
    )]
    WrongCleanup { cleanup: String, main: String },
}

/// `(partition, region, account)` of a state machine ARN.
fn machine_home(arn: &str) -> Option<(&str, &str, &str)> {
    let mut parts = arn.splitn(7, ':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("arn"), Some(p), Some("states"), Some(r), Some(a), Some("stateMachine"), Some(n))
            if !r.is_empty() && a.len() == 12 && !n.is_empty() =>
        {
            Some((p, r, a))
        }
        _ => None,
    }
}

impl AwsTargets {
    /// Refuses a configuration that would quietly never start a cleanup: the cleanup
    /// ARN must be another state machine than the main one (a start on the main one
    /// would always find `ar-<uid>` "already there") in the same account and region.
    pub fn validate(&self) -> Result<(), TargetsError> {
        let main = machine_home(&self.state_machine_arn).ok_or_else(|| {
            TargetsError::NotAStateMachine {
                what: "the state machine",
                arn: self.state_machine_arn.clone(),
            }
        })?;
        let cleanup = machine_home(&self.cleanup_state_machine_arn).ok_or_else(|| {
            TargetsError::NotAStateMachine {
                what: "the cleanup state machine",
                arn: self.cleanup_state_machine_arn.clone(),
            }
        })?;
        if cleanup != main || self.cleanup_state_machine_arn == self.state_machine_arn {
            return Err(TargetsError::WrongCleanup {
                cleanup: self.cleanup_state_machine_arn.clone(),
                main: self.state_machine_arn.clone(),
            });
        }
        Ok(())
    }

    /// The accounts the operator serves: the state machine's own. The worker edits
    /// roles with the operator's own credentials, by name, so a role in any other
    /// account would edit the same-named role here; cross-account grants need
    /// per-account credentials, which aws-jit does not have yet.
    pub fn scope(&self) -> crate::policy::decide::Scope {
        let own = self
            .state_machine_arn
            .split(':')
            .nth(4)
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        crate::policy::decide::Scope::new(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(main: &str, cleanup: &str) -> AwsTargets {
        AwsTargets {
            state_machine_arn: main.into(),
            cleanup_state_machine_arn: cleanup.into(),
            request_queue_url: String::new(),
            request_dead_letter_url: None,
            work_queue_url: String::new(),
            work_dead_letter_url: None,
            alert_queue_url: None,
        }
    }

    #[test]
    fn a_cleanup_machine_that_would_never_run_is_refused() {
        let main = "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-access";
        let ok = "arn:aws:states:us-east-1:123456789012:stateMachine:aws-jit-session-cleanup";
        assert!(targets(main, ok).validate().is_ok());
        for bad in [
            main,
            "arn:aws:states:eu-west-1:123456789012:stateMachine:aws-jit-session-cleanup",
            "arn:aws:states:us-east-1:210987654321:stateMachine:aws-jit-session-cleanup",
            "aws-jit-session-cleanup",
            "",
        ] {
            assert!(targets(main, bad).validate().is_err(), "{bad:?}");
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub aws: AwsTargets,
    pub settings: Settings,
    /// Long-poll wait of the queue consumers.
    pub queue_wait: Duration,
    /// The account's trust-policy size quota (IAM: 2048 unless raised, at most 4096).
    pub trust_policy_size_limit: usize,
    /// Crash points for tests; none armed in production.
    pub faults: crate::faults::Faults,
    /// This process's metrics (served by [`crate::telemetry::probes`]).
    pub metrics: Arc<Metrics>,
    /// What `/healthz` and `/readyz` answer.
    pub health: Arc<Health>,
    /// How often the drift sweeper runs (it also runs at start).
    pub sweep_interval: Duration,
    /// At most this many AWS calls on the wire at once (SQS's long-polls apart).
    pub aws_max_in_flight: usize,
}

/// Runs the operator's loops while this replica leads (see [`crate::run::leader`]); with
/// no election, runs them at once. Returns `Ok` after `shutdown`, or an error when the
/// Lease was lost: the caller exits, and the process starts over as a candidate.
pub async fn run_elected(
    kube: kube::Client,
    aws: &aws_config::SdkConfig,
    config: Config,
    election: Option<Election>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), LeaderError> {
    let Some(election) = election else {
        config.health.set_ready();
        config.metrics.leader.set(1);
        run(kube, aws, config, shutdown).await;
        return Ok(());
    };
    let health = config.health.clone();
    let metrics = config.metrics.clone();
    let aws = aws.clone();
    let client = kube.clone();
    crate::run::leader::lead(
        client,
        &election,
        health,
        metrics,
        shutdown,
        move |stop| async move { run(kube, &aws, config, stop).await },
    )
    .await
}

/// Runs every loop of the operator until `shutdown` resolves, then returns once each
/// has stopped (in-flight work finishes; undeleted messages come back to the queues).
pub async fn run(
    kube: kube::Client,
    aws: &aws_config::SdkConfig,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Every client counts its calls (`aws_jit_aws_calls_total{service, api}`).
    let clients =
        crate::aws::calls::Clients::new(aws, config.metrics.clone(), config.aws_max_in_flight);
    let sfn = StepFunctionClient::new(clients.sfn.clone(), &config.aws.state_machine_arn);
    let sqs = clients.sqs.clone();
    let scope = config.aws.scope();
    let alerts =
        crate::aws::alerts::SecurityAlerts::new(sqs.clone(), config.aws.alert_queue_url.clone());
    let authority = crate::aws::authority::Authority::new(
        kube.clone(),
        sfn.clone(),
        scope.clone(),
        config.metrics.clone(),
        alerts.clone(),
    );
    // One cache of the token Secrets for the consumer, the worker and the reconciler
    // (fed by the reconciler's watch of them, which wakes each request on a change).
    let (tokens, token_events) =
        TokenStore::watched(kube.clone(), &config.settings.operator_namespace);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let requests = RequestQueue {
        sqs: sqs.clone(),
        queue_url: config.aws.request_queue_url.clone(),
        dead_letter_url: config.aws.request_dead_letter_url.clone(),
        sfn: sfn.clone(),
        tokens: tokens.clone(),
        client: kube.clone(),
        wait: config.queue_wait,
        faults: config.faults.clone(),
        metrics: config.metrics.clone(),
        authority: authority.clone(),
    };
    let consumer = {
        let rx = stop_rx.clone();
        let requests = Arc::new(requests);
        tokio::spawn(async move { requests.run(stopped(rx)).await })
    };
    let mut worker = Worker::new(
        authority,
        sqs.clone(),
        clients.iam.clone(),
        sfn.clone(),
        &config.aws.work_queue_url,
    )
    .with_wait_time(config.queue_wait)
    .with_size_limit(config.trust_policy_size_limit)
    .with_faults(config.faults.clone())
    .with_metrics(config.metrics.clone())
    .with_outcomes(outcomes(tokens.clone()));
    if let Some(dlq) = &config.aws.work_dead_letter_url {
        worker = worker.with_dead_letter_url(dlq);
    }
    let worker_handle = worker.clone();
    let permission_sets = Arc::new(crate::grant::identity_center::PermissionSets::new(Some(
        clients.sso.clone(),
    )));
    let methods = Arc::new(crate::grant::sweeper::Methods {
        identity_center: crate::grant::identity_center::IdentityCenterGrants::with_clients(
            clients.sso.clone(),
            clients.store.clone(),
            permission_sets.clone(),
        ),
        iam_group: crate::grant::iam_group::IamGroupGrants {
            iam: clients.iam.clone(),
        },
    });
    // The controller's watches, made here so that the sweeper reads the same caches.
    let watches = controller::Watches::new(&kube, &config.settings);
    let sweeper = crate::grant::sweeper::Sweeper {
        client: kube.clone(),
        sfn: clients.sfn.clone(),
        state_machine_arn: config.aws.state_machine_arn.clone(),
        worker: worker.clone(),
        scope: scope.clone(),
        watch_namespace: config.settings.watch_namespace.clone(),
        metrics: config.metrics.clone(),
        alerts: alerts.clone(),
        interval: config.sweep_interval,
        methods: methods.clone(),
        caches: Some(crate::grant::sweeper::Caches {
            requests: watches.requests.clone(),
            requests_synced: watches.requests_synced.clone(),
            roles: watches.roles.clone(),
            roles_synced: watches.roles_synced.clone(),
        }),
        answers: answers(tokens.clone()),
    };
    let sweeper = {
        let rx = stop_rx.clone();
        tokio::spawn(async move { sweeper.run(stopped(rx)).await })
    };
    let worker = {
        let rx = stop_rx.clone();
        tokio::spawn(async move { worker.run(stopped(rx)).await })
    };
    let revoker = controller::Revoker {
        worker: worker_handle,
        cleanup: crate::grant::trust_policy::worker::CleanupTarget {
            state_machine_arn: config.aws.cleanup_state_machine_arn.clone(),
        },
        methods,
    };
    let reconciler = tokio::spawn(controller::run(
        kube.clone(),
        sfn.clone(),
        controller::Guard {
            scope,
            alerts,
            revoker: Some(revoker),
            permission_sets,
        },
        config.settings.clone(),
        watches,
        tokens,
        token_events,
        config.faults.clone(),
        config.metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    for task in [consumer, worker, sweeper, reconciler] {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "an operator loop ended abnormally");
        }
    }
}

/// The approval answers the controller records on the token Secrets, for the sweeper.
pub fn answers(tokens: TokenStore) -> crate::grant::sweeper::Answers {
    crate::grant::sweeper::Answers::new(move |uid| {
        let tokens = tokens.clone();
        Box::pin(async move {
            use crate::controller::tokens::keys;
            let read = tokens.get(&uid).await.map_err(|e| e.to_string())?;
            Ok(crate::grant::sweeper::RecordedAnswer {
                answer: read.get(keys::APPROVAL_ANSWER).map(str::to_owned),
                approved_until: read.get(keys::APPROVED_UNTIL).map(str::to_owned),
            })
        })
    })
}

/// The worker's answers of a failed grant or a revoke, noted on the request's token
/// Secret (only if it still exists): the change wakes the request, which looks at its
/// execution.
fn outcomes(tokens: TokenStore) -> crate::grant::trust_policy::worker::Outcomes {
    crate::grant::trust_policy::worker::Outcomes::new(move |request| {
        let tokens = tokens.clone();
        Box::pin(async move {
            let at = jiff::Timestamp::now().to_string();
            if let Err(e) = tokens
                .mark(
                    &request,
                    &[(crate::controller::tokens::keys::WORK_ANSWERED, &at)],
                )
                .await
            {
                tracing::warn!(error = %e, "cannot tell the controller that a task was answered");
            }
        })
    })
}
