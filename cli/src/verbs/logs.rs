//! `berth logs POD [-c CONTAINER] [-f] [-p] [--tail N] [--since D |
//! --since-time T] [--timestamps]`: a container's output, which
//! a controller reads from the agent of the pod's node (`Pods.Logs`, as
//! kubectl's goes through the API server), so that `get pods/log` is all a
//! user needs.

use anyhow::Result;
use berth_api::pb;
use clap::Args;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::status_error;
use super::Ctx;
use super::NamespaceArgs;

#[derive(Args)]
pub struct LogsArgs {
    pod: String,
    /// The container (needed when the pod has more than one).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep printing new output until the container stops.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The output of the container's previous run.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Only the last N lines; -1 for all.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// Only what was written within this long (5s, 2m, 3h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "since_time")]
    since: Option<std::time::Duration>,
    /// Only what was written at this RFC 3339 time or later.
    #[arg(long)]
    since_time: Option<String>,
    /// Begin each line with the time it was written.
    #[arg(long)]
    timestamps: bool,
    #[command(flatten)]
    ns: NamespaceArgs,
}

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<()> {
    let req = pb::LogsRequest {
        namespace: args.ns.get(),
        name: args.pod,
        container: args.container.unwrap_or_default(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: (args.tail >= 0).then_some(args.tail),
        // As kubectl: part of a second counts as a whole one.
        since_seconds: args
            .since
            .map(|d| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1) as i64),
        since_time: args.since_time.unwrap_or_default(),
        timestamps: args.timestamps,
    };
    let mut chunks = pb::pods_client::PodsClient::new(ctx.channel().await?)
        .logs(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = tokio::io::stdout();
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk.map_err(status_error)?.data).await?;
        out.flush().await?;
    }
    Ok(())
}
