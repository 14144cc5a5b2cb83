//! The kubectl-like verbs: apply, get (with tables and watch), describe,
//! delete, scale, cordon, uncordon, drain, logs, rollout status.

pub mod apply;
mod describe;
pub mod get;
pub mod logs;
mod node;
pub mod rollout;
mod table;

use std::time::Duration;

use anyhow::anyhow;
use anyhow::Result;
use berth::client;
use berth_api::KindInfo;
use clap::Args;
use tonic::transport::Channel;
use tonic::Status;

pub use apply::apply;
pub use apply::delete;
pub use apply::scale;
pub use describe::describe;
pub use get::get;
pub use node::cordon;
pub use node::drain;

/// Where the verbs send their calls.
#[derive(Clone)]
pub struct Ctx {
    pub addrs: Vec<String>,
    pub transport: berth_client::Transport,
}

impl Ctx {
    /// A channel to the first controller that answers.
    pub async fn channel(&self) -> Result<Channel> {
        Ok(client::connect(&self.addrs, &self.transport).await?.1)
    }

    /// A channel to the leader, for writes: any controller would forward
    /// them, but going straight there saves a hop. Falls back to the first
    /// controller that answers when the leader is unknown or unreachable.
    pub async fn leader_channel(&self) -> Result<Channel> {
        let (addr, ch) = client::connect(&self.addrs, &self.transport).await?;
        let mut req = tonic::Request::new(berth_proto::cluster::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        let status = berth_proto::cluster::cluster_client::ClusterClient::new(ch.clone())
            .status(req)
            .await;
        let leader_addr = status.ok().and_then(|s| {
            let s = s.into_inner();
            let leader = s.leader?;
            s.members
                .into_iter()
                .find(|m| m.id == leader)
                .map(|m| m.addr)
        });
        match leader_addr {
            Some(l) if l != addr => {
                match client::connect(std::slice::from_ref(&l), &self.transport).await {
                    Ok((_, leader)) => Ok(leader),
                    Err(_) => Ok(ch),
                }
            }
            _ => Ok(ch),
        }
    }
}

/// Turns a gRPC error into the one line the CLI prints.
pub fn status_error(s: Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("transport") || s.message().is_empty() => {
            anyhow!(
                "the controller closed the connection ({}): retry, or check `berth cluster status`",
                s.message()
            )
        }
        tonic::Code::DeadlineExceeded => {
            anyhow!("the controller did not answer in time: retry, or check `berth cluster status`")
        }
        _ => anyhow!("{}", s.message()),
    }
}

pub fn kind_info(name: &str) -> Result<&'static KindInfo> {
    KindInfo::lookup(name).ok_or_else(|| {
        anyhow!(
            "unknown kind {name:?}: use one of {} (or their singular and short names)",
            KindInfo::names()
        )
    })
}

/// `pod/web`, `deployment.apps/web`: how kubectl names an object.
pub fn object_ref(info: &KindInfo, name: &str) -> String {
    match info.api_version.rsplit_once('/') {
        Some((group, _)) => format!("{}.{group}/{name}", info.kind.to_lowercase()),
        None => format!("{}/{name}", info.kind.to_lowercase()),
    }
}

#[derive(Args, Clone, Debug)]
pub struct NamespaceArgs {
    /// Namespace (default: "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

impl NamespaceArgs {
    pub fn get(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "default".into())
    }
}

/// How long a watch keeps trying to reach a controller again.
pub const RECONNECT_FOR: Duration = Duration::from_secs(60);
