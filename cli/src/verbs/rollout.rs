//! `berth rollout status deployment NAME [--timeout 60s]`: waits until the
//! deployment's current template is rolled out, printing progress the way
//! kubectl does.

use std::time::Duration;

use anyhow::bail;
use anyhow::Result;
use berth::objects::ClientKind;
use berth_api::pb;
use clap::Subcommand;

use super::status_error;
use super::Ctx;
use super::NamespaceArgs;

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Wait for a deployment's rollout to finish.
    Status {
        /// `deployment` (or deploy, deployments).
        kind: String,
        name: String,
        /// Give up after this long (exit 1).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
}

/// Where a rollout stands: done, or a line saying what it waits for.
pub fn progress(d: &pb::Deployment) -> Result<(), String> {
    let name = d.metadata.as_ref().map_or("", |m| m.name.as_str());
    let generation = d.metadata.as_ref().map_or(0, |m| m.generation);
    let spec = d.spec.clone().unwrap_or_default();
    let s = d.status.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    if s.observed_generation < generation {
        return Err("Waiting for deployment spec update to be observed...".into());
    }
    if s.updated_replicas < want {
        return Err(format!(
            "Waiting for deployment {name:?} rollout to finish: {} out of {want} new replicas have been updated...",
            s.updated_replicas
        ));
    }
    if s.replicas > s.updated_replicas {
        return Err(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            s.replicas - s.updated_replicas
        ));
    }
    if s.available_replicas < s.updated_replicas {
        return Err(format!(
            "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
            s.available_replicas, s.updated_replicas
        ));
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: RolloutCommand) -> Result<()> {
    let RolloutCommand::Status {
        kind,
        name,
        timeout,
        ns,
    } = cmd;
    let info = super::kind_info(&kind)?;
    if info.kind != "Deployment" {
        bail!("rollout status works on deployments, not {}", info.plural);
    }
    let namespace = ns.get();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let req = pb::GetRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            serializable: false,
        };
        let d = pb::Deployment::get(ctx.channel().await?, req)
            .await
            .map_err(status_error)?;
        match progress(&d) {
            Ok(()) => {
                println!("deployment {name:?} successfully rolled out");
                return Ok(());
            }
            Err(line) => {
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "deployment {namespace}/{name} was not rolled out within {}: see `berth describe deployment {name}` and its pods",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
