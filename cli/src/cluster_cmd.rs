//! `berth cluster status|add-member|remove-member`.

use std::time::Duration;

use anyhow::Context;
use berth::client;
use berth_proto::cluster as pb;
use clap::Subcommand;
use clap::ValueEnum;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, term, commit index and members.
    Status {
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Add a controller (started with an empty data dir) as a voter.
    AddMember { id: u64, addr: String },
    /// Remove a controller from the cluster.
    RemoveMember { id: u64 },
}

fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} failed: {}", s.message())
}

pub async fn run(cmd: ClusterCommand, ctx: &crate::verbs::Ctx) -> anyhow::Result<()> {
    let (addrs, transport) = (&ctx.addrs[..], &ctx.transport);
    match cmd {
        ClusterCommand::Status { output } => status(addrs, transport, output).await,
        ClusterCommand::AddMember { id, addr } => {
            let (_, mut c) = client::cluster(addrs, transport).await?;
            let mut req = tonic::Request::new(pb::AddMemberRequest {
                id,
                addr,
                fresh: false,
            });
            req.set_timeout(Duration::from_secs(330));
            let resp = c
                .add_member(req)
                .await
                .map_err(|s| status_error("add-member", s))?;
            println!(
                "controller {id} added; members: {}",
                describe(&resp.into_inner().members)
            );
            Ok(())
        }
        ClusterCommand::RemoveMember { id } => {
            let (_, mut c) = client::cluster(addrs, transport).await?;
            let resp = c
                .remove_member(pb::RemoveMemberRequest { id })
                .await
                .map_err(|s| status_error("remove-member", s))?;
            println!(
                "controller {id} removed; members: {}",
                describe(&resp.into_inner().members)
            );
            Ok(())
        }
    }
}

fn describe(members: &[pb::Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.id, m.addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// Asks any controller, then its leader (which alone knows who is reachable).
async fn status(
    addrs: &[String],
    transport: &berth_client::Transport,
    output: Output,
) -> anyhow::Result<()> {
    let (_, mut c) = client::cluster(addrs, transport).await?;
    let mut s = c
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| status_error("status", e))?
        .into_inner();
    if let Some(leader) = s.leader.filter(|l| *l != s.id) {
        if let Some(m) = s.members.iter().find(|m| m.id == leader) {
            let addr = m.addr.clone();
            if let Ok((_, mut lc)) = client::cluster(&[addr], transport).await {
                if let Ok(ls) = lc.status(pb::StatusRequest {}).await {
                    s = ls.into_inner();
                }
            }
        }
    }
    match output {
        Output::Json => {
            let members: Vec<_> = s
                .members
                .iter()
                .map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter, "role": m.role}))
                .collect();
            let v = json!({
                "leader": s.leader,
                "term": s.term,
                "commitIndex": s.commit_index,
                "members": members,
            });
            println!("{}", serde_json::to_string(&v).context("encode status")?);
        }
        Output::Text => {
            let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
            println!(
                "cluster {}  leader {leader}  term {}  commit {}  revision {}",
                if s.cluster_id.is_empty() {
                    "(none yet)"
                } else {
                    &s.cluster_id
                },
                s.term,
                s.commit_index,
                s.revision
            );
            println!("{:<4} {:<22} {:<6} ROLE", "ID", "ADDR", "VOTER");
            for m in &s.members {
                println!("{:<4} {:<22} {:<6} {}", m.id, m.addr, m.voter, m.role);
            }
        }
    }
    Ok(())
}
