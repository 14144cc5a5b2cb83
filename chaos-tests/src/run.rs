//! One run: start the cluster in the fabric, set out the workload, let
//! the clients and the nemesis loose for the duration, heal, read the final
//! state and hand everything to the checkers.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use berth_api::pb;
use berth_client::connect::Connector;
use berth_client::watcher::list_all;
use berth_client::watcher::Scope;
use berth_client::ClientKind;
use berth_testkit::flags::AgentFlags;
use berth_testkit::flags::Membership;
use berth_testkit::flags::Network;
use berth_testkit::flags::Runtime as AgentRuntime;
use berth_testkit::flags::ServerCommand;
use berth_testkit::flags::ServerFlags;
use tokio::sync::watch;

use crate::checks;
use crate::checks::Invariants;
use crate::fabric::Fabric;
use crate::history::FaultWindow;
use crate::history::Op;
use crate::history::OpKind;
use crate::history::Recorder;
use crate::linear;
use crate::nemesis::Cluster;
use crate::nemesis::FaultKind;
use crate::nemesis::Nemesis;
use crate::procs::Proc;
use crate::report::CheckerVerdict;
use crate::report::Report;
use crate::report::Status;
use crate::workload;
use crate::workload::ObjectClient;
use crate::workload::RegisterClient;
use crate::workload::NAMESPACE;

/// Which runtime the agents use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Simulated pods: many nodes, no processes.
    Sim,
    /// Real processes with their own network namespaces (needs root).
    Process,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub berth: PathBuf,
    pub duration: Duration,
    pub seed: u64,
    pub controllers: usize,
    pub faults: Vec<FaultKind>,
    pub agents: usize,
    pub runtime: Runtime,
    pub registers: usize,
    pub unsafe_stale_reads: bool,
    /// How long the linearizability search may take before it says unknown.
    pub check_budget: Duration,
    /// Controllers' data, agents' data, and the processes' logs.
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

impl From<String> for RunError {
    fn from(s: String) -> Self {
        RunError(s)
    }
}

const NODE_GRACE: Duration = Duration::from_secs(3);
const POD_EVICTION: Duration = Duration::from_secs(6);
/// Nodes each sim agent runs.
const SIM_NODES_PER_AGENT: u32 = 2;
/// Checker 6's bound.
const RECOVERY: Duration = Duration::from_secs(30);

/// The cluster's processes in the fabric's members (controllers first).
pub fn cluster(cfg: &Config, fabric: &Fabric) -> Cluster {
    let logs = cfg.work_dir.join("logs");
    let _ = std::fs::create_dir_all(&logs);
    let members = &fabric.net.members;
    let peers: Vec<(u64, String)> = (0..cfg.controllers)
        .map(|i| (i as u64 + 1, Cluster::addr(&members[i])))
        .collect();
    let flags = ServerFlags {
        node_grace_period: Some(NODE_GRACE),
        pod_eviction_timeout: Some(POD_EVICTION),
        unsafe_stale_reads: cfg.unsafe_stale_reads,
        ..Default::default()
    };
    let secret = format!("chaos-{}", cfg.seed);
    let controller_dirs: Vec<_> = (0..cfg.controllers)
        .map(|i| cfg.work_dir.join(format!("controller-{}", i + 1)))
        .collect();
    let controllers = (0..cfg.controllers)
        .map(|i| {
            let m = &members[i];
            let command = ServerCommand {
                id: i as u64 + 1,
                listen: Cluster::addr(m),
                metrics_listen: Some(format!("{}:9100", m.ip)),
                data_dir: controller_dirs[i].clone(),
                membership: Membership::Peers(peers.clone()),
                token: Some(secret.clone()),
                flags: flags.clone(),
            };
            let name = format!("c{}", i + 1);
            Proc::new(&name, m.clone(), &cfg.berth, command.args(), &logs)
        })
        .collect();
    let servers: Vec<String> = peers.into_iter().map(|(_, addr)| addr).collect();
    let agents = (0..cfg.agents)
        .map(|j| {
            let m = &members[cfg.controllers + j];
            let common = AgentFlags {
                servers: servers.clone(),
                data_dir: cfg.work_dir.join(format!("agent-{j}")),
                address: Some(m.ip.clone()),
                cpu: Some("1".into()),
                memory: Some("1Gi".into()),
                max_pods: Some(4),
                lease_interval: Some(Duration::from_secs(1)),
                ..Default::default()
            };
            let flags = match cfg.runtime {
                Runtime::Sim => AgentFlags {
                    runtime: AgentRuntime::Sim,
                    sim_nodes: Some((format!("a{j}-"), SIM_NODES_PER_AGENT)),
                    sim_start_delay: Some(Duration::from_millis(300)),
                    ..common
                },
                Runtime::Process => AgentFlags {
                    runtime: AgentRuntime::Process,
                    name: Some(format!("a{j}")),
                    network: Some(Network::Bridge),
                    dns_upstream: Some("none".into()),
                    ..common
                },
            };
            let name = format!("agent-{j}");
            Proc::new(&name, m.clone(), &cfg.berth, flags.args(), &logs)
        })
        .collect();
    Cluster {
        controller_dirs,
        controllers,
        agents,
        netem: fabric.netem,
    }
}

fn deployment(replicas: i32) -> pb::Deployment {
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: chaos
        command: ["sleep", "86400"]
        resources: {{requests: {{cpu: 250m, memory: 64Mi}}}}
"#,
        name = workload::DEPLOYMENT
    );
    match berth_api::manifest::parse(&manifest)
        .expect("the run's own manifest parses")
        .pop()
    {
        Some(berth_api::AnyObject::Deployment(d)) => d,
        _ => unreachable!("the manifest holds one deployment"),
    }
}

/// The report of a run, and the history it judged.
pub type Outcome = (Report, Vec<Op>, Vec<FaultWindow>);

/// Runs the whole thing inside the fabric (the caller's threads are in
/// its namespace) and returns the checkers' report.
pub async fn run(cfg: &Config, fabric: &Fabric) -> Result<Outcome, RunError> {
    let mut cluster = cluster(cfg, fabric);
    let result = drive(cfg, &mut cluster).await;
    if cfg.runtime == Runtime::Process {
        remove_workloads(cfg, &cluster).await;
    }
    if let Err(e) = &result {
        for p in cluster.controllers.iter().chain(cluster.agents.iter()) {
            eprintln!("--- last lines of {}'s log:\n{}", p.name, p.log_tail(15));
        }
        eprintln!("berth-chaos: {e}");
    }
    cluster.stop().await;
    result
}

async fn drive(cfg: &Config, cluster: &mut Cluster) -> Result<Outcome, RunError> {
    for c in &mut cluster.controllers {
        c.start().map_err(|e| format!("start {}: {e}", c.name))?;
    }
    wait_for(Duration::from_secs(30), "a leader", || async {
        cluster.leader().await.is_some()
    })
    .await?;
    let admin = cluster
        .admin()
        .ok_or_else(|| String::from("no controller wrote its credentials"))?;
    let kv_transport = cluster
        .controller_transport()
        .ok_or_else(|| String::from("no controller wrote its CA"))?;
    let conn = Connector::new(cluster.addrs(), admin.clone()).map_err(|e| e.to_string())?;
    workload::prepare(&conn, cfg.registers, deployment(3))
        .await
        .map_err(|s| format!("set out the workload: {s}"))?;
    let dir = berth_testkit::tls::written(cluster.controller_dirs.iter().map(|d| d.as_path()))
        .ok_or_else(|| String::from("no controller wrote its CA"))?
        .to_path_buf();
    let servers = cluster.addrs();
    for (j, a) in cluster.agents.iter_mut().enumerate() {
        let agent_dir = cfg.work_dir.join(format!("agent-{j}"));
        // Each node its own identity, as a joining agent would get.
        let confs = match cfg.runtime {
            Runtime::Sim => (0..SIM_NODES_PER_AGENT)
                .map(|i| {
                    let node = format!("a{j}-{i}");
                    (agent_dir.join(format!("agent-{node}.conf")), node)
                })
                .collect(),
            Runtime::Process => vec![(agent_dir.join("agent.conf"), format!("a{j}"))],
        };
        for (path, node) in confs {
            berth_testkit::tls::write_agent_conf(&dir, &path, &node, &a.member.ip, &servers)?;
        }
        a.start().map_err(|e| format!("start {}: {e}", a.name))?;
    }
    let wanted = cfg.agents
        * match cfg.runtime {
            Runtime::Sim => SIM_NODES_PER_AGENT as usize,
            Runtime::Process => 1,
        };
    wait_for(
        Duration::from_secs(60),
        "the agents' nodes to be Ready and the deployment to run",
        || async {
            ready_nodes(&conn).await >= wanted && deployments_running(&conn).await == Some(true)
        },
    )
    .await?;

    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let (stop_tx, stop_rx) = watch::channel(false);
    let invariants = Arc::new(Mutex::new(Invariants::default()));
    let sampler = tokio::spawn(sample(conn.clone(), invariants.clone(), stop_rx.clone()));
    let mut clients = Vec::new();
    let register_clients = 2 * cfg.controllers;
    let addrs = cluster.addrs();
    for i in 0..register_clients {
        let client = RegisterClient {
            index: i,
            addr: addrs[i % addrs.len()].clone(),
            transport: kv_transport.clone(),
            registers: cfg.registers,
            clients: register_clients,
            seed: cfg.seed.wrapping_mul(1000).wrapping_add(i as u64),
        };
        clients.push(tokio::spawn(client.run(recorder.clone(), stop_rx.clone())));
    }
    for i in 0..2 {
        let mut rotated = addrs.clone();
        rotated.rotate_left(i % addrs.len());
        let client = ObjectClient {
            conn: Connector::new(rotated, admin.clone()).map_err(|e| e.to_string())?,
            process: 100 + i as u64,
            seed: cfg.seed.wrapping_mul(1000).wrapping_add(500 + i as u64),
            replicas: (2, 8),
        };
        clients.push(tokio::spawn(client.run(recorder.clone(), stop_rx.clone())));
    }
    let nemesis = Nemesis {
        kinds: cfg.faults.clone(),
        seed: cfg.seed,
        eviction_hold: NODE_GRACE + POD_EVICTION + Duration::from_secs(4),
    };
    let faults_result = nemesis.run(cluster, &recorder, start + cfg.duration).await;
    let healed = Instant::now();
    let _ = stop_tx.send(true);
    for c in clients {
        let _ = c.await;
    }
    faults_result?;
    tracing::info!("healed; reading the final state");

    let finals = final_reads(&conn, &recorder, cfg.registers).await?;
    let present = present_objects(&conn).await?;
    let recovery = recovery(&conn, healed).await;
    let _ = sampler.await;
    let (pods, nodes, services) = snapshot(&conn)
        .await
        .ok_or_else(|| RunError("no final snapshot of pods, nodes and services".into()))?;
    let mut inv = std::mem::take(&mut *invariants.lock().expect("invariants lock"));
    inv.observe(&pods, &nodes, &services);

    let ops = recorder.ops();
    let faults = recorder.faults();
    let names: Vec<String> = cfg.faults.iter().map(|f| f.name().to_string()).collect();
    let mut report = Report::new(
        cfg.seed,
        cfg.duration.as_secs_f64(),
        cfg.controllers,
        names,
        &ops,
        &faults,
    );
    report.checkers = verdicts(cfg, &ops, &finals, &present, &inv, recovery);
    Ok((report, ops, faults))
}

fn verdicts(
    cfg: &Config,
    ops: &[Op],
    finals: &BTreeMap<String, i64>,
    present: &BTreeSet<String>,
    inv: &Invariants,
    recovery: Result<Duration, String>,
) -> Vec<CheckerVerdict> {
    let register_ops = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Read | OpKind::Write | OpKind::Cas))
        .count();
    let started = Instant::now();
    let linear = match linear::check(ops, workload::INITIAL, cfg.check_budget) {
        linear::Verdict::Linearizable => CheckerVerdict::from_problems(
            "1 linearizable registers",
            format!(
                "{} registers, {register_ops} operations, searched in {:.1} s",
                cfg.registers,
                started.elapsed().as_secs_f64()
            ),
            Vec::new(),
        ),
        linear::Verdict::Violation(why) => {
            CheckerVerdict::from_problems("1 linearizable registers", String::new(), vec![why])
        }
        linear::Verdict::Unknown(why) => CheckerVerdict {
            checker: "1 linearizable registers".into(),
            status: Status::Unknown,
            detail: format!("undecided within {:?}: {why}", cfg.check_budget),
            problems: Vec::new(),
        },
    };
    let mut lost = checks::registers_kept(ops, workload::INITIAL, finals);
    lost.extend(checks::objects_kept(ops, present));
    let acknowledged = ops
        .iter()
        .filter(|o| o.outcome == crate::history::Outcome::Ok && o.kind != OpKind::Read)
        .count();
    let recovered = match recovery {
        Ok(took) => CheckerVerdict::from_problems(
            "6 deployments running after heal",
            format!(
                "all replicas Running {:.1} s after heal",
                took.as_secs_f64()
            ),
            Vec::new(),
        ),
        Err(why) => CheckerVerdict::from_problems(
            "6 deployments running after heal",
            String::new(),
            vec![why],
        ),
    };
    vec![
        linear,
        CheckerVerdict::from_problems(
            "2 no acknowledged write lost",
            format!(
                "{acknowledged} acknowledged writes; {} registers and {} objects read after heal",
                finals.len(),
                present.len()
            ),
            lost,
        ),
        CheckerVerdict::from_problems(
            "3 pods bound once, never moved",
            format!(
                "{} placements over {} snapshots",
                inv.placements, inv.snapshots
            ),
            inv.moved.clone(),
        ),
        CheckerVerdict::from_problems(
            "4 no node over allocatable",
            format!("{} snapshots", inv.snapshots),
            inv.overcommitted.clone(),
        ),
        CheckerVerdict::from_problems(
            "5 no duplicate address",
            format!(
                "{} snapshots: {}",
                inv.snapshots,
                ["pod IP", "pod CIDR", "ClusterIP"]
                    .map(|what| format!(
                        "{} {what}s",
                        inv.addresses_seen.get(what).copied().unwrap_or(0)
                    ))
                    .join(", ")
            ),
            inv.duplicates.clone(),
        ),
        recovered,
    ]
}

async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(RunError(format!("gave up waiting {timeout:?} for {what}")))
}

async fn list<K: ClientKind>(conn: &Connector, namespace: &str) -> Option<Vec<K>> {
    let ch = conn.channel().await.ok()?;
    let scope = Scope {
        namespace: namespace.into(),
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(3), list_all::<K>(ch, &scope)).await {
        Ok(Ok((items, _))) => Some(items),
        Ok(Err(s)) => {
            conn.failed(&s).await;
            None
        }
        Err(_) => {
            conn.failed(&tonic::Status::cancelled("list timed out"))
                .await;
            None
        }
    }
}

async fn ready_nodes(conn: &Connector) -> usize {
    let nodes: Vec<pb::Node> = list(conn, "").await.unwrap_or_default();
    nodes
        .iter()
        .filter(|n| berth_api::resources::node_is_ready(n))
        .count()
}

/// Whether every deployment of the run has its replicas Running.
async fn deployments_running(conn: &Connector) -> Option<bool> {
    Some(short_replicas(conn).await?.is_empty())
}

/// "NAME: RUNNING of WANTED Running" for each of the run's deployments
/// short of its replicas; None when the listings failed.
async fn short_replicas(conn: &Connector) -> Option<Vec<String>> {
    let deployments: Vec<pb::Deployment> = list(conn, NAMESPACE).await?;
    let pods: Vec<pb::Pod> = list(conn, NAMESPACE).await?;
    let short = deployments.iter().filter_map(|d| {
        let (running, wanted) = checks::running_replicas(d, &pods);
        let name = d.metadata.as_ref().map_or("", |m| m.name.as_str());
        (running != wanted).then(|| format!("{name}: {running} of {wanted} Running"))
    });
    Some(short.collect())
}

async fn snapshot(conn: &Connector) -> Option<(Vec<pb::Pod>, Vec<pb::Node>, Vec<pb::Service>)> {
    Some((
        list(conn, "").await?,
        list(conn, "").await?,
        list(conn, "").await?,
    ))
}

/// Feeds the invariants a snapshot every second until told to stop.
async fn sample(
    conn: Connector,
    invariants: Arc<Mutex<Invariants>>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        if let Some((pods, nodes, services)) = snapshot(&conn).await {
            invariants
                .lock()
                .expect("invariants lock")
                .observe(&pods, &nodes, &services);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Each register's value after heal, read linearizably and recorded in
/// the history like any read.
async fn final_reads(
    conn: &Connector,
    recorder: &Recorder,
    registers: usize,
) -> Result<BTreeMap<String, i64>, RunError> {
    let mut finals = BTreeMap::new();
    for i in 0..registers {
        let key = workload::register_name(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending = recorder
                .invoke(u64::MAX, OpKind::Read, &key, None)
                .controller("final");
            let got = match conn.channel().await {
                Ok(ch) => {
                    let req = pb::GetRequest {
                        namespace: NAMESPACE.into(),
                        name: key.clone(),
                        serializable: false,
                    };
                    tokio::time::timeout(Duration::from_secs(3), pb::ConfigMap::get(ch, req)).await
                }
                Err(e) => Ok(Err(tonic::Status::unavailable(e.to_string()))),
            };
            match got {
                Ok(Ok(cm)) => {
                    let value = cm.data.get("value").and_then(|v| v.parse::<i64>().ok());
                    recorder.complete(pending, crate::history::Outcome::Ok, value, None);
                    let value =
                        value.ok_or_else(|| format!("{key} holds no number: {:?}", cm.data))?;
                    finals.insert(key.clone(), value);
                    break;
                }
                Ok(Err(s)) => {
                    conn.failed(&s).await;
                    recorder.complete(
                        pending,
                        crate::history::Outcome::Fail,
                        None,
                        Some(s.message().to_string()),
                    );
                }
                Err(_) => {
                    conn.failed(&tonic::Status::cancelled("timed out")).await;
                    recorder.complete(
                        pending,
                        crate::history::Outcome::Fail,
                        None,
                        Some("timed out".into()),
                    );
                }
            }
            if Instant::now() > deadline {
                return Err(RunError(format!(
                    "no linearizable read of {key} within 30 s after heal"
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(finals)
}

/// The run's created objects that exist after heal, as `Kind/name`.
async fn present_objects(conn: &Connector) -> Result<BTreeSet<String>, RunError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lists = async {
            let cms: Vec<pb::ConfigMap> = list(conn, NAMESPACE).await?;
            let nodes: Vec<pb::Node> = list(conn, "").await?;
            let services: Vec<pb::Service> = list(conn, NAMESPACE).await?;
            Some((cms, nodes, services))
        };
        if let Some((cms, nodes, services)) = lists.await {
            let mut present = BTreeSet::new();
            present.extend(made_by_run(&cms, "obj-", "ConfigMap"));
            present.extend(made_by_run(&nodes, "churn-", "Node"));
            present.extend(made_by_run(&services, "svc-", "Service"));
            return Ok(present);
        }
        if Instant::now() > deadline {
            return Err(RunError(
                "could not list the run's objects within 30 s after heal".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `Kind/name` of the objects among `items` whose name the run gave them.
fn made_by_run<K: berth_api::Object>(items: &[K], prefix: &str, kind: &str) -> Vec<String> {
    items
        .iter()
        .map(|o| o.name())
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("{kind}/{n}"))
        .collect()
}

/// Checker 6: how long after heal every deployment had its replicas
/// Running, or what was missing when the bound ran out.
async fn recovery(conn: &Connector, healed: Instant) -> Result<Duration, String> {
    let mut last = String::from("no listing of deployments and pods succeeded");
    while healed.elapsed() < RECOVERY {
        if let Some(short) = short_replicas(conn).await {
            if short.is_empty() {
                return Ok(healed.elapsed());
            }
            last = short.join(", ");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "not all replicas Running {RECOVERY:?} after heal: {last}"
    ))
}

/// Real processes outlive their agent (by design: an agent restart keeps
/// its workloads), and they run in the pods' namespaces, not the members':
/// delete the run's pods through the API and let the agents stop them (an
/// agent removes a pod's directory last) before the agents go.
async fn remove_workloads(cfg: &Config, cluster: &Cluster) {
    delete_pods(cluster).await;
    let pod_dirs = || {
        (0..cfg.agents)
            .flat_map(|j| {
                std::fs::read_dir(cfg.work_dir.join(format!("agent-{j}/pods")))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect::<Vec<_>>()
    };
    let stopped = wait_for(
        Duration::from_secs(30),
        "the agents to stop the run's pods",
        || async { pod_dirs().is_empty() },
    )
    .await;
    if stopped.is_err() {
        eprintln!(
            "berth-chaos: the agents left pods behind: {}",
            pod_dirs().join(", ")
        );
    }
}

async fn delete_pods(cluster: &Cluster) {
    let Some(admin) = cluster.admin() else {
        return;
    };
    let Ok(conn) = Connector::new(cluster.addrs(), admin) else {
        return;
    };
    let _ = wait_for(
        Duration::from_secs(60),
        "the run's pods to be removed",
        || async {
            let Ok(ch) = conn.channel().await else {
                return false;
            };
            let req = pb::DeleteRequest {
                namespace: NAMESPACE.into(),
                name: workload::DEPLOYMENT.into(),
                resource_version: String::new(),
            };
            let _ = pb::Deployment::delete(ch.clone(), req).await;
            let pods: Option<Vec<pb::Pod>> = list(&conn, NAMESPACE).await;
            for pod in pods.iter().flatten() {
                let name = pod
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let req = pb::DeleteRequest {
                    namespace: NAMESPACE.into(),
                    name,
                    resource_version: String::new(),
                };
                let _ = pb::Pod::delete(ch.clone(), req).await;
            }
            pods.is_some_and(|p| p.is_empty())
        },
    )
    .await;
}
