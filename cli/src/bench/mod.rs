//! `berth bench`: measurements against real clusters. Speed goals are met
//! here, never in tests.

use clap::Subcommand;

mod api;
mod failover;
mod latency;
mod schedule;
mod services;
mod startup;
mod store;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Concurrent clients writing small values (and reading a sample back).
    Store(store::StoreArgs),
    /// The public API under a mixed load, then watch fan-out.
    Api(api::ApiArgs),
    /// Place pods in bulk on many agent-less nodes of a spawned cluster.
    Schedule(schedule::ScheduleArgs),
    /// Time pods of a deployment from creation to Running on one agent.
    Startup(startup::StartupArgs),
    /// Program service rules (nftables) at scale, and one endpoint change.
    Services(services::ServicesArgs),
    /// Repeatedly SIGKILL the leader of a 3-controller cluster under writes.
    Failover(failover::FailoverArgs),
}

/// Runs `cmd` against `target` (a running cluster: `--server`, and the
/// credentials or `--insecure`), or against a cluster it spawns, secure
/// unless `insecure`.
pub async fn run(
    cmd: BenchCommand,
    target: anyhow::Result<crate::verbs::Ctx>,
    insecure: bool,
) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(a) => store::run(a, &target?).await,
        BenchCommand::Failover(a) => failover::run(a, insecure).await,
        BenchCommand::Api(a) => api::run(a, target, insecure).await,
        BenchCommand::Schedule(a) => schedule::run(a, insecure).await,
        BenchCommand::Startup(a) => startup::run(a, insecure).await,
        BenchCommand::Services(a) => services::run(a).await,
    }
}
