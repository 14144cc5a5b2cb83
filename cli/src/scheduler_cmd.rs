//! `berth scheduler`: the scheduler on its own, and the one every
//! controller runs unless told not to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_client::connect::Connector;
use berth_scheduler::ElectionConfig;
use berth_scheduler::SchedulerConfig;
use clap::Args;
use tokio::net::TcpListener;

#[derive(Args)]
pub struct SchedulerArgs {
    /// Scheduler settings, YAML or JSON (scoringStrategy, weights,
    /// percentageOfNodesToScore, batchSize, ...); defaults without.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// This scheduler's name in the lease (default: scheduler-<random>).
    #[arg(long)]
    id: Option<String>,
    /// How long the lease holds without renewal before another scheduler
    /// takes over.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How often the holder renews the lease (and a standby looks at it).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    renew_interval: Duration,
    /// Tests only: schedule without the lease, with its current epoch, to
    /// show that the store keeps two active schedulers from overcommitting.
    #[arg(long, hide = true)]
    force_active: bool,
    /// Address for HTTP /metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// A name for a scheduler that is unique across restarts.
pub fn identity(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Loads the scheduler settings, or the defaults.
pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<SchedulerConfig> {
    Ok(match path {
        Some(p) => SchedulerConfig::load(p)?,
        None => SchedulerConfig::default(),
    })
}

/// Starts a scheduler in the background against `addrs` (tried in turn,
/// the first preferred).
pub fn spawn(
    conn: Connector,
    config: SchedulerConfig,
    election: ElectionConfig,
) -> anyhow::Result<()> {
    berth_scheduler::describe_metrics();
    tokio::spawn(berth_scheduler::run(conn, config, election));
    Ok(())
}

pub async fn run(args: SchedulerArgs, ctx: &crate::verbs::Ctx) -> anyhow::Result<()> {
    let config = load_config(args.scheduler_config.as_ref())?;
    if args.renew_interval.is_zero() || args.renew_interval >= args.lease_duration {
        anyhow::bail!("--renew-interval must be positive and shorter than --lease-duration");
    }
    let mut election =
        berth_scheduler::election_config(args.id.unwrap_or_else(|| identity("scheduler")));
    election.lease_duration = args.lease_duration;
    election.renew_interval = args.renew_interval;
    election.force_active = args.force_active;
    if let Some(addr) = args.metrics_listen {
        let prometheus = berth_controller::http::prometheus();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr}"))?;
        tokio::spawn(berth_controller::http::serve_metrics(listener, prometheus));
    }
    tracing::info!(identity = %election.identity, servers = %ctx.addrs.join(","), "scheduler starting");
    spawn(
        Connector::new(ctx.addrs.clone(), ctx.transport.clone())?,
        config,
        election,
    )?;
    crate::signals::shutdown().await;
    Ok(())
}
