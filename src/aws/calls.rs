//! `aws_jit_aws_calls_total{service, api}`: every attempt of every AWS call the operator
//! makes, retries included (what AWS rate-limits), counted by one interceptor that each
//! of the operator's SDK clients carries ([`Clients`] builds them all).
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::telemetry::metrics::Metrics;

/// Counts each attempt, by the operation's service and name as the SDK knows them
/// (`SFN`/`DescribeExecution`, `SQS`/`ReceiveMessage`, …).
#[derive(Debug, Clone)]
pub struct CallCounter {
    metrics: Arc<Metrics>,
}

impl CallCounter {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "aws-jit-call-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(op) = cfg.load::<Metadata>() {
            self.metrics.aws_call(op.service(), op.name());
        }
        Ok(())
    }
}

/// The operator's AWS clients, one per service, each counting its calls.
#[derive(Clone, Debug)]
pub struct Clients {
    pub sfn: aws_sdk_sfn::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub iam: aws_sdk_iam::Client,
    pub sso: aws_sdk_ssoadmin::Client,
    pub store: aws_sdk_identitystore::Client,
}

impl Clients {
    pub fn new(aws: &aws_config::SdkConfig, metrics: Arc<Metrics>) -> Self {
        let counter = CallCounter::new(metrics);
        Self {
            sfn: aws_sdk_sfn::Client::from_conf(
                aws_sdk_sfn::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .build(),
            ),
            sso: aws_sdk_ssoadmin::Client::from_conf(
                aws_sdk_ssoadmin::config::Builder::from(aws)
                    .interceptor(counter.clone())
                    .build(),
            ),
            store: aws_sdk_identitystore::Client::from_conf(
                aws_sdk_identitystore::config::Builder::from(aws)
                    .interceptor(counter)
                    .build(),
            ),
        }
    }
}
