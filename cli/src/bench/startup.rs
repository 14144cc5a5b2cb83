//! `berth bench startup`: a spawned 3-controller cluster and one agent on
//! the chosen runtime; a deployment of N pods is created and each pod is
//! timed from its creation (its first watch event) to its first report of
//! phase Running. Prints the per-pod p50 and p99 and the time from the
//! deployment's creation to the last pod Running. For docker, the image is
//! a busybox rootfs imported locally (no registry).

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use berth::objects::ClientKind;
use berth_agent::runtime::process::running_processes;
use berth_api::pb;
use berth_api::Object;
use berth_client::connect::Connector;
use berth_client::watcher;
use berth_testkit::flags::Network;
use berth_testkit::flags::Runtime;
use berth_testkit::objects;
use berth_testkit::objects::container;
use berth_testkit::Agent;
use berth_testkit::AgentFlags;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use clap::Args;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::latency::Samples;
use crate::agent_cmd::RuntimeKind;

#[derive(Args)]
pub struct StartupArgs {
    #[arg(long, default_value_t = 100)]
    pods: usize,
    #[arg(long, value_enum, default_value = "process")]
    runtime: RuntimeKind,
    /// The image for the docker runtime (imported from busybox-static if
    /// the engine lacks it).
    #[arg(long, default_value = "berth-bench/busybox:1")]
    image: String,
    /// Give up waiting for the last pod after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// text or json.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
}

const NODE: &str = "bench-startup";
const APP: &str = "bench-startup";

/// The bench's agent: one node with room for every pod, on the host's
/// network. Dropping it kills it and whatever its pods still run.
fn start_agent(root: &Path, cluster: &Cluster, args: &StartupArgs) -> anyhow::Result<Agent> {
    let flags = AgentFlags {
        servers: cluster.addrs(),
        data_dir: root.join("agent"),
        name: Some(NODE.into()),
        address: Some("127.0.0.1".into()),
        cpu: Some("1000".into()),
        memory: Some("1000Gi".into()),
        max_pods: Some(args.pods as u32 + 10),
        runtime: match args.runtime {
            RuntimeKind::Process => Runtime::Process,
            RuntimeKind::Docker => Runtime::Docker,
            RuntimeKind::Sim => Runtime::Sim,
        },
        network: Some(Network::Host),
        ..Default::default()
    };
    Agent::start_with(cluster, root, flags, None).context("start the agent")
}

/// `--pods` replicas of a sleeper that asks for almost nothing and stops
/// at once.
fn deployment(args: &StartupArgs) -> pb::Deployment {
    let main = match args.runtime {
        RuntimeKind::Docker => container("main").image(&args.image),
        _ => container("main").command(&["/bin/sleep", "3600"]),
    };
    objects::deployment(APP)
        .replicas(args.pods as i32)
        .container(main.requests(&[("cpu", "1m")]))
        .grace_period(1)
        .build()
}

async fn wait_ready(
    ch: &Channel,
    what: &str,
    timeout: Duration,
    check: impl Fn(&pb::Node) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let req = pb::GetRequest {
            name: NODE.into(),
            ..Default::default()
        };
        if pb::Node::get(ch.clone(), req)
            .await
            .is_ok_and(|n| check(&n))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} within {}", humantime::format_duration(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: StartupArgs, insecure: bool) -> anyhow::Result<()> {
    if args.pods == 0 {
        bail!("--pods must be at least 1");
    }
    if args.runtime == RuntimeKind::Docker {
        berth_testkit::images::busybox_image(&args.image).map_err(anyhow::Error::msg)?;
    }
    let binary = std::env::current_exe().context("locate the berth binary")?;
    let root = tempfile::tempdir().context("create a temporary directory")?;
    let options = ClusterOptions {
        flags: berth_testkit::ServerFlags {
            insecure,
            ..Default::default()
        },
        ..Default::default()
    };
    let cluster = Cluster::start(&binary, root.path(), 3, options);
    if cluster
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(20))
        .await
        .is_none()
    {
        bail!("the spawned cluster elected no leader within 20 s");
    }
    let agent = start_agent(root.path(), &cluster, &args)?;
    let conn = Connector::new(cluster.addrs(), cluster.transport())?;
    let ch = conn.channel().await?;
    wait_ready(
        &ch,
        "the agent did not register a Ready node",
        Duration::from_secs(30),
        berth_api::resources::node_is_ready,
    )
    .await?;

    let (tx, mut rx) = mpsc::channel(4096);
    let scope = watcher::Scope {
        namespace: "default".into(),
        label_selector: format!("app={APP}"),
        ..Default::default()
    };
    tokio::spawn(watcher::run::<pb::Pod>(conn.clone(), scope, tx));
    // The initial (empty) list.
    rx.recv().await;
    let started = Instant::now();
    pb::Deployment::create(ch.clone(), deployment(&args))
        .await
        .map_err(|s| anyhow::anyhow!("create the deployment: {}", s.message()))?;
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut samples = Samples::default();
    let deadline = tokio::time::Instant::now() + args.timeout;
    while done.len() < args.pods {
        let Ok(Some(change)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            bail!(
                "{} of {} pods were Running after {} (agent log: {})",
                done.len(),
                args.pods,
                humantime::format_duration(args.timeout),
                agent.process.log_path().display()
            );
        };
        let pods = match change {
            watcher::Change::Applied(p) => vec![p],
            watcher::Change::Listed(ps) => ps,
            watcher::Change::Deleted(_) => continue,
        };
        for p in pods {
            let name = p.name().to_string();
            let first = *created.entry(name.clone()).or_insert_with(Instant::now);
            let is_running = p.status.as_ref().is_some_and(|s| s.phase == "Running");
            if is_running && done.insert(name) {
                samples.record(first.elapsed());
            }
        }
    }
    let all_running = started.elapsed();
    let report = serde_json::json!({
        "runtime": format!("{:?}", args.runtime).to_lowercase(),
        "pods": args.pods,
        "startup_p50_ms": samples.quantile_ms(0.50),
        "startup_p99_ms": samples.quantile_ms(0.99),
        "all_running_s": (all_running.as_secs_f64() * 1000.0).round() / 1000.0,
    });
    cleanup(&ch, &agent.data_dir).await;
    // Whatever the agent did not stop in time goes with it.
    drop(agent);
    drop(cluster);
    if args.output == "json" {
        println!("{report}");
    } else {
        println!(
            "{} pods on the {} runtime: startup p50 {} ms, p99 {} ms; all Running after {} s",
            args.pods,
            report["runtime"],
            report["startup_p50_ms"],
            report["startup_p99_ms"],
            report["all_running_s"]
        );
    }
    Ok(())
}

/// Deletes the deployment and waits (a while) for the agent to stop what
/// it ran, so that nothing outlives the bench.
async fn cleanup(ch: &Channel, agent_dir: &Path) {
    let req = pb::DeleteRequest {
        namespace: "default".into(),
        name: APP.into(),
        resource_version: String::new(),
    };
    let _ = pb::Deployment::delete(ch.clone(), req).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let req = pb::ListRequest {
            namespace: "default".into(),
            label_selector: format!("app={APP}"),
            ..Default::default()
        };
        let left = pb::Pod::list(ch.clone(), req)
            .await
            .map_or(1, |(p, _)| p.len());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The agent stops each container within its 1 s grace period.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !running_processes(agent_dir).is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
