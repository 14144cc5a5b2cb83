//! `berth bench schedule`: a spawned 3-controller cluster (each running its
//! scheduler, one active), Node objects without agents (Ready, with
//! allocatable) and pods created in bulk. Measures from the first pod
//! created to the last bind seen committed, then checks from the store
//! that no node holds more than its allocatable.

use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::resources::node_allocatable;
use berth_api::resources::pod_holds_node;
use berth_api::resources::pod_requests;
use berth_api::resources::Resources;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::watcher;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::Process;
use berth_testkit::SchedulerFlags;
use berth_testkit::ServerFlags;
use clap::Args;
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::latency::Samples;

#[derive(Args)]
pub struct ScheduleArgs {
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    #[arg(long, default_value_t = 100_000)]
    pods: usize,
    /// Pods per CreateBatch call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// CreateBatch calls in flight.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Give up waiting for the last bind after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// text or json.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    /// Run one standalone `berth scheduler` instead of one per controller
    /// (which keeps two standbys watching every pod).
    #[arg(long)]
    standalone_scheduler: bool,
}

const NAMESPACE: &str = "default";
const ZONES: usize = 3;

fn bench_node(i: usize) -> pb::Node {
    let mut n = pb::Node::default();
    n.meta_mut().name = format!("node-{i:05}");
    n.meta_mut().labels = [
        ("kubernetes.io/hostname".to_string(), format!("node-{i:05}")),
        (
            "topology.kubernetes.io/zone".to_string(),
            format!("zone-{}", i % ZONES),
        ),
    ]
    .into();
    n.status = Some(berth_api::resources::ready_status(&[
        ("cpu", "16"),
        ("memory", "64Gi"),
        ("pods", "110"),
    ]));
    n
}

/// Pods of 20 workloads, 100m cpu and 128Mi each.
fn bench_pod(i: usize) -> pb::Pod {
    let workload = i % 20;
    let mut p = pb::Pod::default();
    let meta = p.meta_mut();
    meta.name = format!("pod-{i:06}");
    meta.namespace = NAMESPACE.into();
    meta.labels = [("app".to_string(), format!("app-{workload}"))].into();
    meta.owner_references = vec![pb::OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: format!("app-{workload}"),
        uid: format!("bench-workload-{workload}"),
        controller: Some(true),
        block_owner_deletion: None,
    }];
    p.spec = Some(pb::PodSpec {
        containers: vec![pb::Container {
            name: "main".into(),
            image: "busybox".into(),
            resources: Some(pb::ResourceRequirements {
                requests: [
                    ("cpu".to_string(), "100m".to_string()),
                    ("memory".to_string(), "128Mi".to_string()),
                ]
                .into(),
                limits: Default::default(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

async fn create_nodes(ch: &Channel, n: usize) -> anyhow::Result<()> {
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| pb::Node::create(ch.clone(), bench_node(i)))
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r.context("create a node")?;
    }
    Ok(())
}

/// Creates the pods in batches; returns when each batch was sent.
async fn create_pods(
    ch: &Channel,
    args: &ScheduleArgs,
) -> anyhow::Result<HashMap<String, Instant>> {
    let batches: Vec<Vec<usize>> = (0..args.pods)
        .collect::<Vec<_>>()
        .chunks(args.batch.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let results: Vec<anyhow::Result<Vec<(String, Instant)>>> = futures::stream::iter(batches)
        .map(|batch| {
            let ch = ch.clone();
            async move {
                let sent = Instant::now();
                let items: Vec<pb::Pod> = batch.iter().map(|&i| bench_pod(i)).collect();
                let names: Vec<String> = items.iter().map(|p| p.name().to_string()).collect();
                let r = pb::pods_client::PodsClient::new(ch)
                    .create_batch(pb::CreatePodsRequest { items })
                    .await?
                    .into_inner();
                if let Some(bad) = r.results.iter().find(|r| r.code != 0) {
                    bail!("a pod was not created: {}", bad.message);
                }
                Ok(names.into_iter().map(|n| (n, sent)).collect())
            }
        })
        .buffer_unordered(args.clients.max(1))
        .collect()
        .await;
    let mut created = HashMap::with_capacity(args.pods);
    for r in results {
        created.extend(r?);
    }
    Ok(created)
}

/// Waits until `want` pods were seen bound; returns when each was.
async fn await_binds(
    mut rx: mpsc::Receiver<watcher::Change<pb::Pod>>,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, Instant>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bound = HashMap::with_capacity(want);
    while bound.len() < want {
        let change = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("only {} of {want} pods were placed in time", bound.len()))?
            .context("the pod watch ended")?;
        let now = Instant::now();
        let pods = match change {
            watcher::Change::Listed(items) => items,
            watcher::Change::Applied(p) => vec![p],
            watcher::Change::Deleted(_) => continue,
        };
        for p in pods.into_iter().filter(|p| !p.node_name().is_empty()) {
            bound.entry(p.name().to_string()).or_insert(now);
        }
    }
    Ok(bound)
}

/// Nodes whose pods hold more than the node's allocatable.
async fn overcommitted(conn: &Connector) -> anyhow::Result<(usize, usize)> {
    let scope = watcher::Scope::default();
    let ch = conn.channel().await?;
    let (nodes, _) = watcher::list_all::<pb::Node>(ch.clone(), &scope).await?;
    let (pods, _) = watcher::list_all::<pb::Pod>(ch, &scope).await?;
    let mut used: HashMap<&str, Resources> = HashMap::new();
    let mut unbound = 0;
    for p in &pods {
        match pod_holds_node(p) {
            Some(n) => {
                let u = used.entry(n).or_default();
                *u = *u + pod_requests(p);
            }
            None => unbound += 1,
        }
    }
    let over = nodes
        .iter()
        .filter(|n| {
            let u = used.get(n.name()).copied().unwrap_or_default();
            u.shortfall(Resources::default(), node_allocatable(n)).any()
        })
        .count();
    Ok((over, unbound))
}

/// A `berth scheduler` of `cluster`, killed when dropped.
fn standalone_scheduler(
    binary: &std::path::Path,
    cluster: &Cluster,
    root: &std::path::Path,
) -> anyhow::Result<Process> {
    let flags = SchedulerFlags {
        servers: cluster.addrs(),
        ..Default::default()
    };
    let log = root.join("scheduler.log");
    let mut scheduler = Process::new("scheduler", binary, flags.args(), log);
    scheduler.start().context("start berth scheduler")?;
    Ok(scheduler)
}

pub async fn run(args: ScheduleArgs, insecure: bool) -> anyhow::Result<()> {
    if args.nodes == 0 || args.pods == 0 {
        bail!("--nodes and --pods must be at least 1");
    }
    let binary = std::env::current_exe().context("locate the berth binary")?;
    let root = tempfile::tempdir().context("create a temporary directory")?;
    // The watch history must cover a watcher's lag under the burst.
    let options = ClusterOptions {
        flags: ServerFlags {
            watch_history: Some(1_000_000),
            no_scheduler: args.standalone_scheduler,
            insecure,
            ..Default::default()
        },
        ..Default::default()
    };
    let cluster = Cluster::start(&binary, root.path(), 3, options);
    let _scheduler = match args.standalone_scheduler {
        true => Some(standalone_scheduler(&binary, &cluster, root.path())?),
        false => None,
    };
    if cluster
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(20))
        .await
        .is_none()
    {
        bail!("the spawned cluster elected no leader within 20 s");
    }
    let conn = Connector::new(cluster.addrs(), cluster.transport())?;
    let ch = conn.channel().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pb::Namespace::get(
        ch.clone(),
        pb::GetRequest {
            name: NAMESPACE.into(),
            ..Default::default()
        },
    )
    .await
    .is_err()
    {
        if Instant::now() > deadline {
            bail!("namespace {NAMESPACE} did not appear within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    create_nodes(&ch, args.nodes).await?;
    eprintln!(
        "{} nodes created in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    // Let the schedulers' caches take the nodes in before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (tx, rx) = mpsc::channel(65_536);
    let scope = watcher::Scope {
        namespace: NAMESPACE.into(),
        ..Default::default()
    };
    let watch = tokio::spawn(watcher::run::<pb::Pod>(conn.clone(), scope, tx));
    let waiting = tokio::spawn(await_binds(rx, args.pods, args.timeout));
    let first = Instant::now();
    let created = create_pods(&ch, &args).await?;
    let created_in = first.elapsed();
    let bound = waiting.await??;
    watch.abort();
    let last = bound.values().max().copied().unwrap_or(first);
    let elapsed = last.duration_since(first);
    let mut latency = Samples::default();
    for (name, at) in &bound {
        if let Some(sent) = created.get(name) {
            latency.record(at.saturating_duration_since(*sent));
        }
    }
    let (over, unbound) = overcommitted(&conn).await?;
    let report = serde_json::json!({
        "nodes": args.nodes,
        "pods": args.pods,
        "pods_per_sec": (args.pods as f64 / elapsed.as_secs_f64()).round(),
        "p99_bind_ms": latency.quantile_ms(0.99),
        "overcommitted_nodes": over,
        "unbound_pods": unbound,
        "create_secs": (created_in.as_secs_f64() * 10.0).round() / 10.0,
        "total_secs": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
    });
    if args.output == "json" {
        println!("{report}");
    } else {
        println!(
            "{} pods on {} nodes in {:.1} s: {} pods/s (created in {:.1} s); bind p99 {} ms from create; {} nodes overcommitted, {} pods unbound",
            args.pods,
            args.nodes,
            elapsed.as_secs_f64(),
            report["pods_per_sec"],
            created_in.as_secs_f64(),
            report["p99_bind_ms"],
            over,
            unbound
        );
    }
    drop(cluster);
    Ok(())
}
