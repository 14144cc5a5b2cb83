//! `berth bench failover`: how long writes stop when the leader dies.
//!
//! Starts three controllers as processes, and for each trial SIGKILLs the
//! leader while writers keep writing to every controller, measures the time
//! from the kill to the first acknowledged write issued after it, restarts
//! the victim and waits for it to catch up. Before the trials it watches an
//! idle and a loaded healthy cluster for elections that should not happen.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use berth_testkit::rpc;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use clap::Args;
use serde_json::json;

use super::latency::Samples;

#[derive(Args)]
pub struct FailoverArgs {
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Seconds to watch a healthy cluster (idle, then loaded) for spurious elections.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    observe: Duration,
    /// Extra `berth server` flags for the controllers (repeatable), e.g.
    /// `--server-arg=--heartbeat-ms=25`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Keep controller logs here.
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    #[arg(short, long, default_value = "text")]
    output: String,
}

/// Acknowledged writes of the background load: (issued at, acknowledged at).
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn start_writers(
    transport: berth_client::Transport,
    addrs: Vec<String>,
    n: usize,
    stop: Arc<AtomicBool>,
    acks: Acks,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let addrs = addrs.clone();
            let transport = transport.clone();
            let stop = stop.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                let mut target = w % addrs.len();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut kv) = rpc::kv(&transport, &addrs[target]).await else {
                        target = (target + 1) % addrs.len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let issued = Instant::now();
                        let key = format!("failover/{w}/{}", i % 100);
                        i += 1;
                        match rpc::put(&mut kv, &key, b"v", Duration::from_millis(250)).await {
                            Ok(_) => acks
                                .lock()
                                .expect("acks lock")
                                .push((issued, Instant::now())),
                            Err(_) => {
                                target = (target + 1) % addrs.len();
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Issues a fresh write to a surviving controller every few milliseconds
/// until one is acknowledged; returns how long after the kill that was.
async fn probe(cluster: &Cluster, survivors: &[u64], killed_at: Instant) -> Option<Duration> {
    let mut clients = Vec::new();
    for id in survivors {
        if let Some(kv) = rpc::kv(&cluster.controller_transport(), &cluster.addr(*id)).await {
            clients.push(kv);
        }
    }
    if clients.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1);
    let deadline = killed_at + Duration::from_secs(30);
    let mut i = 0usize;
    loop {
        if let Ok(acked) = rx.try_recv() {
            return Some(acked.duration_since(killed_at));
        }
        if Instant::now() > deadline {
            return None;
        }
        let mut kv = clients[i % clients.len()].clone();
        let tx = tx.clone();
        let key = format!("failover/probe/{i}");
        tokio::spawn(async move {
            if rpc::put(&mut kv, &key, b"p", Duration::from_millis(500))
                .await
                .is_ok()
            {
                let _ = tx.try_send(Instant::now());
            }
        });
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn term(cluster: &Cluster, id: u64) -> Option<u64> {
    rpc::status(&cluster.transport(), &cluster.addr(id))
        .await
        .map(|s| s.term)
}

pub async fn run(args: FailoverArgs, insecure: bool) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locate the berth binary")?;
    let root = tempfile::tempdir().context("create a temporary directory")?;
    let options = ClusterOptions {
        flags: ServerFlags {
            passthrough: args.server_args.clone(),
            insecure,
            ..Default::default()
        },
        log_dir: args.log_dir.clone(),
        host: None,
    };
    let mut cluster = Cluster::start(&binary, root.path(), 3, options);
    let all = [1, 2, 3];
    let Some(leader) = cluster.wait_for_leader(&all, Duration::from_secs(20)).await else {
        bail!("the cluster elected no leader within 20 s");
    };

    // Spurious elections: the term must not move on a healthy cluster.
    let t0 = term(&cluster, leader).await.unwrap_or(0);
    tokio::time::sleep(args.observe).await;
    let t1 = term(&cluster, leader).await.unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let writers = start_writers(
        cluster.controller_transport(),
        cluster.addrs(),
        args.writers,
        stop.clone(),
        acks.clone(),
    );
    tokio::time::sleep(args.observe).await;
    let t2 = term(&cluster, leader).await.unwrap_or(0);

    let mut failover = Samples::default();
    let mut leader = leader;
    for trial in 0..args.trials {
        let killed_at = Instant::now();
        cluster.kill(leader);
        let survivors: Vec<u64> = all.iter().copied().filter(|i| *i != leader).collect();
        let recovered = probe(&cluster, &survivors, killed_at).await;
        let Some(took) = recovered else {
            bail!(
                "trial {trial}: no write was acknowledged within 30 s of killing leader {leader}"
            );
        };
        failover.record(took);
        eprintln!(
            "trial {trial}: killed leader {leader}, writes resumed after {} ms",
            took.as_millis()
        );
        cluster.spawn(leader);
        let new_leader = cluster
            .wait_for_leader_other_than(&survivors, Some(leader), Duration::from_secs(20))
            .await;
        let Some(new_leader) = new_leader else {
            bail!("trial {trial}: the survivors agree on no leader");
        };
        // Let the restarted controller catch up before the next kill.
        if cluster
            .wait_for_leader(&all, Duration::from_secs(30))
            .await
            .is_none()
        {
            bail!("trial {trial}: controller {leader} did not rejoin");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        leader = new_leader;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let report = json!({
        "trials": args.trials,
        "failover_p50_ms": failover.quantile_ms(0.5),
        "failover_p99_ms": failover.quantile_ms(0.99),
        "failover_max_ms": failover.quantile_ms(1.0),
        "spurious_elections_idle": t1.saturating_sub(t0),
        "spurious_elections_loaded": t2.saturating_sub(t1),
    });
    if args.output == "json" {
        println!("{report}");
    } else {
        println!(
            "failover over {} trials: p50 {} ms, p99 {} ms; term changes on a healthy cluster: idle {}, loaded {}",
            args.trials, report["failover_p50_ms"], report["failover_p99_ms"], report["spurious_elections_idle"], report["spurious_elections_loaded"]
        );
    }
    Ok(())
}
