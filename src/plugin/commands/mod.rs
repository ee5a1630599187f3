//! The commands' I/O: read from and write to the cluster as the caller, print.
use std::io::IsTerminal;

use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{Cli, Command, Error, KubeFlags};
use crate::crd::{AccessRequest, AccessRole};

mod aws;
mod decide;
mod read;
mod request;

/// The cluster, as the caller, in the namespace they chose.
pub struct Ctx {
    pub client: kube::Client,
    pub namespace: String,
    pub flags: KubeFlags,
    pub colour: bool,
}

impl Ctx {
    pub async fn new(flags: &KubeFlags) -> Result<Ctx, Error> {
        let options = KubeConfigOptions {
            context: flags.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &flags.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    Error::Cluster(format!("reading kubeconfig {}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(file, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| Error::Cluster(format!("kubeconfig: {e}")))?;
        let namespace = flags
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::Cluster(format!("building the Kubernetes client: {e}")))?;
        let colour = super::render::use_colour(
            std::io::stdout().is_terminal(),
            std::env::var("NO_COLOR").ok().as_deref(),
        );
        Ok(Ctx {
            client,
            namespace,
            flags: flags.clone(),
            colour,
        })
    }

    pub fn requests(&self) -> Api<AccessRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The request `name` in the namespace (exit 5 when there is none).
    pub async fn get(&self, name: &str) -> Result<AccessRequest, Error> {
        self.requests().get(name).await.map_err(|e| {
            Error::kube(
                &format!("AccessRequest {name} in namespace {}", self.namespace),
                e,
            )
        })
    }

    /// The AccessRole `name`; `None` when it does not exist or the caller may not read it
    /// (the plugin's checks are then left to the controller and admission).
    pub async fn role(&self, name: &str) -> Result<Option<AccessRole>, Error> {
        let api: Api<AccessRole> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(role) => Ok(role),
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
            Err(e) => Err(Error::kube(&format!("AccessRole {name}"), e)),
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), Error> {
    let ctx = Ctx::new(&cli.kube).await?;
    match cli.command {
        Command::Request(args) => request::request(&ctx, args).await,
        Command::Approve(args) => {
            let vote = decide::Vote {
                name: &args.name,
                extension: args.extension.as_deref(),
                decision: crate::crd::Decision::Approve,
                comment: args.comment,
                as_group: args.as_group.as_deref(),
            };
            decide::vote(&ctx, vote, args.output).await
        }
        Command::Deny(args) => {
            let vote = decide::Vote {
                name: &args.name,
                extension: args.extension.as_deref(),
                decision: crate::crd::Decision::Deny,
                comment: Some(args.comment),
                as_group: args.as_group.as_deref(),
            };
            decide::vote(&ctx, vote, args.output).await
        }
        Command::Revoke(args) => decide::revoke(&ctx, args).await,
        Command::Extend(args) => decide::extend(&ctx, args).await,
        Command::Review(args) => decide::review(&ctx, args).await,
        Command::List(args) => read::list(&ctx, args).await,
        Command::Describe(args) => read::describe(&ctx, args).await,
        Command::Credentials(args) => aws::credentials(&ctx, args).await,
        Command::AwsProfile(args) => aws::profile(&ctx, args).await,
    }
}
