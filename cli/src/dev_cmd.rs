//! `berth dev`: a local cluster in the foreground, for trying Berth out.
//!
//! Runs the controllers in this one process on consecutive ports of
//! 127.0.0.1 (7001, 7002, 7003 by default, so the client's default address
//! reaches them), and node agents (process runtime by default) beside them;
//! keeps their data under one directory and reuses it on the next start,
//! and on Ctrl-C stops the pods' containers and then itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use berth_controller::ServerConfig;
use berth_raft::NodeConfig;
use clap::Args;
use tracing::Instrument;

#[derive(Args)]
pub struct DevArgs {
    /// Number of controllers.
    #[arg(long, default_value_t = 3)]
    controllers: u64,
    /// Port of the first controller; the others follow.
    #[arg(long, default_value_t = 7001)]
    port_base: u16,
    /// Where the controllers keep their data (default: ./berth-dev).
    #[arg(long, default_value = "berth-dev")]
    data_dir: PathBuf,
    /// Manifests to apply once the cluster is up (a file, a directory or -).
    #[arg(long)]
    apply: Vec<String>,
    /// Number of node agents.
    #[arg(long, default_value_t = 1)]
    agents: u32,
    /// The agents' runtime.
    #[arg(long, value_enum, default_value = "process")]
    runtime: crate::agent_cmd::RuntimeKind,
    /// Pod networking: `bridge` gives each pod its own network namespace
    /// and address, as agents on real nodes do (the default as root with
    /// one process-runtime agent; removed again on Ctrl-C); `host` runs
    /// pods in this machine's network, where two pods cannot both listen
    /// on one port.
    #[arg(long, value_enum)]
    network: Option<crate::agent_cmd::NetworkMode>,
}

/// The dev agent's pod network, if it gets one: a bridge needs root and
/// belongs to one agent on this host, and docker pods would need a pause
/// image, which a machine without a registry may lack.
fn pod_network(
    args: &DevArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<berth_agent::BridgeConfig>> {
    use crate::agent_cmd::NetworkMode;
    use crate::agent_cmd::RuntimeKind;
    let root = nix::unistd::geteuid().is_root();
    let possible = root && args.runtime == RuntimeKind::Process && args.agents == 1;
    match (args.network, possible) {
        (Some(NetworkMode::Host), _) | (None, false) => Ok(None),
        (Some(NetworkMode::Bridge), false) => bail!(
            "--network bridge in dev needs root, the process runtime and one agent (the agents share this host and its bridge): drop --network or change those"
        ),
        (_, true) => {
            let plan = berth_controller::ipam::NetworkConfig::default();
            Ok(Some(berth_agent::BridgeConfig {
                bridge: "berth0".into(),
                cluster_cidr: plan.cluster_cidr,
                service_cidr: plan.service_cidr,
                cluster_domain: "cluster.local".into(),
                dns_upstream: berth_agent::network::dns::host_upstream(),
                dir: data_dir.join("agent-1").join("network"),
            }))
        }
    }
}

/// Applies `files` once the cluster takes writes and has its built-in
/// namespaces (a few seconds on a first start).
async fn apply_when_ready(ctx: &crate::verbs::Ctx, files: &[String]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = match ctx.channel().await {
            Ok(ch) => {
                let req = berth_api::pb::GetRequest {
                    name: "default".into(),
                    ..Default::default()
                };
                <berth_api::pb::Namespace as berth::objects::ClientKind>::get(ch, req)
                    .await
                    .is_ok()
            }
            Err(_) => false,
        };
        if ready {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the cluster did not become ready within 60 s; --apply was not done");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let args = crate::verbs::apply::ApplyArgs {
        files: files.to_vec(),
        ns: crate::verbs::NamespaceArgs { namespace: None },
    };
    crate::verbs::apply(ctx, args).await
}

/// Starts the dev agents (`dev-node-1`, ...) with their data under
/// `data_dir`; returns their runtimes.
async fn start_agents(
    args: &DevArgs,
    ctx: &crate::verbs::Ctx,
    data_dir: &std::path::Path,
    network: Option<berth_agent::BridgeConfig>,
) -> anyhow::Result<DevAgents> {
    use crate::agent_cmd;
    let capacity = berth_agent::node::capacity(None, None, 110)?;
    let mut plans = Vec::new();
    for i in 1..=args.agents {
        let name = format!("dev-node-{i}");
        let dir = data_dir.join(format!("agent-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let runtime: std::sync::Arc<dyn berth_agent::Runtime> = match args.runtime {
            agent_cmd::RuntimeKind::Process => agent_cmd::process_runtime(&name, &dir)?,
            agent_cmd::RuntimeKind::Sim => std::sync::Arc::new(
                berth_agent::runtime::sim::SimRuntime::new(std::time::Duration::from_secs(1)),
            ),
            agent_cmd::RuntimeKind::Docker => std::sync::Arc::new(
                // Dev agents use the host network: no pause containers.
                berth_agent::runtime::docker::DockerRuntime::connect(&name, "").await?,
            ),
        };
        let mut node = agent_cmd::node_config(
            name,
            "127.0.0.1".into(),
            capacity.clone(),
            Default::default(),
        );
        node.runtime_version = runtime.version().await;
        let sync = berth_agent::sync_config(&node, &dir);
        plans.push(agent_cmd::AgentPlan {
            node,
            transport: berth_client::Transport::Insecure,
            sync,
            runtime,
            index: Default::default(),
            network: network.clone(),
        });
    }
    if plans.is_empty() {
        return Ok(DevAgents::default());
    }
    // Each dev agent is a node of its own, with its own identity.
    let mut creds = None;
    for (i, plan) in plans.iter_mut().enumerate() {
        let dir = data_dir.join(format!("agent-{}", i + 1));
        let mine = dev_node_credentials(ctx, &dir, &plan.node.name).await?;
        plan.transport = mine.transport.clone();
        creds.get_or_insert(mine);
    }
    let creds = creds.expect("there are dev agents");
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let port = agent_cmd::serve_logs(
        listen,
        plans.iter().map(agent_cmd::AgentPlan::logs).collect(),
        Some(agent_cmd::log_tls(&creds, &creds.servers)?),
    )
    .await?;
    for p in &mut plans {
        p.node.http_port = Some(port);
    }
    let runtimes = plans
        .iter()
        .map(|p| (p.runtime.clone(), p.sync.volumes_dir.clone()))
        .collect();
    let tasks = agent_cmd::spawn_agents(&creds.servers, plans)?;
    Ok(DevAgents {
        runtimes,
        tasks,
        network,
    })
}

fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// Waits for the first controller's admin credentials, renames their
/// cluster `berth-dev`, writes them to DIR/admin.conf and makes them the
/// current context of ~/.berth/config.
async fn admin_context(
    data_dir: &std::path::Path,
    addrs: &[String],
) -> anyhow::Result<crate::verbs::Ctx> {
    let written = data_dir.join("controller-1").join("admin.conf");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !written.exists() {
        if std::time::Instant::now() > deadline {
            bail!(
                "the first controller wrote no {} within 60 s",
                written.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resolved = berth_client::credentials::read(&written)?.resolve(None)?;
    let issued = berth_pki::Issued {
        cert_pem: resolved.cert_pem,
        key_pem: resolved.key_pem,
    };
    let creds = berth_pki::Credentials::new("berth-dev", addrs, &resolved.ca_pem, "admin", &issued);
    if let Some(home) = berth_client::credentials::default_path() {
        let mut merged = match home.exists() {
            true => berth_client::credentials::read(&home)?,
            false => berth_pki::Credentials::default(),
        };
        merged.merge(creds.clone());
        if let Some(dir) = home.parent() {
            berth_raft::identity::create_private_dir(dir)
                .with_context(|| format!("create {}", dir.display()))?;
        }
        berth_controller::security::write_private(&home, &merged.to_yaml())?;
    }
    // Last: once it exists, dev's credentials are all in place.
    let ours = data_dir.join("admin.conf");
    berth_controller::security::write_private(&ours, &creds.to_yaml())?;
    let loaded = berth_client::credentials::load(&ours, None)?;
    Ok(crate::verbs::Ctx {
        addrs: loaded.servers,
        transport: loaded.transport,
    })
}

/// The dev agents' node credentials: joined with a token the admin makes
/// (once the cluster takes writes) at the first start, kept after.
async fn dev_node_credentials(
    ctx: &crate::verbs::Ctx,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<crate::node_tls::NodeCredentials> {
    let path = crate::node_tls::conf_path(dir, name, false);
    let token = match path.exists() {
        true => None,
        false => Some(agent_token(ctx).await?),
    };
    crate::node_tls::node_credentials(path, name, "127.0.0.1", token.as_deref(), &ctx.addrs).await
}

async fn agent_token(ctx: &crate::verbs::Ctx) -> anyhow::Result<String> {
    use berth_proto::security as pb;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let made = match ctx.leader_channel().await {
            Ok(ch) => pb::tokens_client::TokensClient::new(ch)
                .create(pb::CreateTokenRequest {
                    role: pb::Role::Agent as i32,
                    ttl_seconds: 600,
                })
                .await
                .map(|r| r.into_inner().token)
                .map_err(|s| anyhow::anyhow!("{}", s.message())),
            Err(e) => Err(e),
        };
        match made {
            Ok(token) => return Ok(token),
            Err(e) if std::time::Instant::now() > deadline => {
                bail!("the cluster made no join token for the dev agents within 60 s: {e:#}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// The dev agents' runtimes (with where their volumes live) and tasks.
#[derive(Default)]
struct DevAgents {
    runtimes: Vec<(std::sync::Arc<dyn berth_agent::Runtime>, std::path::PathBuf)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    network: Option<berth_agent::BridgeConfig>,
}

impl DevAgents {
    /// Stops the agents, then their pods' containers and network: dev's
    /// workloads end with it.
    async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for (rt, volumes) in &self.runtimes {
            berth_agent::remove_all(&**rt, std::time::Duration::from_secs(5)).await;
            berth_agent::volumes::remove_all(volumes);
        }
        if let Some(config) = &self.network {
            if let Err(e) = berth_agent::network::teardown(config).await {
                eprintln!("warning: the pod network was not all removed: {e}");
            }
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.controllers == 0 || args.controllers > 7 {
        bail!("--controllers must be between 1 and 7");
    }
    let addr = |id: u64| -> anyhow::Result<SocketAddr> {
        let port = u16::try_from(id - 1)
            .ok()
            .and_then(|o| args.port_base.checked_add(o))
            .context("--port-base is too high for that many controllers")?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let mut peers = Vec::new();
    for id in 1..=args.controllers {
        peers.push((id, addr(id)?.to_string()));
    }
    berth_raft::identity::create_private_dir(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    // Refused before anything starts.
    let network = pod_network(&args, &data_dir)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // The controllers trust each other's CA through it; a restart reuses
    // the CA in their data dirs and needs no secret.
    let bootstrap_secret = random_secret();
    for (id, a) in &peers {
        let dir = data_dir.join(format!("controller-{id}"));
        let config = ServerConfig {
            id: *id,
            listen: a.parse()?,
            advertise: a.clone(),
            audit: berth_controller::audit::AuditConfig::in_dir(&dir),
            connections: Default::default(),
            unsafe_raw_registry_writes: false,
            data_dir: dir.clone(),
            peers: peers.clone(),
            join: None,
            metrics_listen: None,
            node: NodeConfig::new(*id, dir),
            network: Default::default(),
            insecure: false,
            token: Some(bootstrap_secret.clone()),
            cert_ttl: berth_controller::security::DEFAULT_CERT_TTL,
            tls_sans: Vec::new(),
        };
        let mut rx = stop_rx.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let clients = crate::server_cmd::clients(
            &config,
            Some(berth_scheduler::SchedulerConfig::default()),
            Some(berth_reconcilers::ReconcileConfig::new(String::new())),
        );
        let span = tracing::info_span!("controller", id = *id);
        tasks.push(tokio::spawn(
            berth_controller::run(config, stopped, clients).instrument(span),
        ));
    }
    let addrs: Vec<String> = peers.iter().map(|(_, a)| a.clone()).collect();
    let bridged = network.is_some();
    let ctx = admin_context(&data_dir, &addrs).await?;
    let agents = start_agents(&args, &ctx, &data_dir, network).await?;
    let servers = addrs.join(",");
    println!(
        "Berth dev cluster: {} controllers and {} {:?} agents, data in {}",
        peers.len(),
        agents.runtimes.len(),
        args.runtime,
        data_dir.display()
    );
    println!("  reach it with:   berth get namespaces");
    println!("                   berth apply -f MANIFEST.yaml");
    println!(
        "  (its admin credentials are the current context of ~/.berth/config, and in {}; controllers {servers})",
        data_dir.join("admin.conf").display()
    );
    if bridged {
        println!("  pods get addresses in 10.244.0.0/16 and services in 10.96.0.0/16, reachable");
        println!("  from this machine: `berth get pods -o wide` shows the IPs, `berth get svc` the ClusterIPs");
    } else if !agents.runtimes.is_empty() {
        println!("  pods share this machine's network (--network host): give each its own port");
    }
    println!("  stop with Ctrl-C; the next `berth dev` reuses the data");
    if !args.apply.is_empty() {
        // A bad manifest should not take the cluster down with it.
        if let Err(e) = apply_when_ready(&ctx, &args.apply).await {
            eprintln!("error: --apply: {e:#}");
        }
    }
    let mut failed = None;
    tokio::select! {
        _ = crate::signals::shutdown() => {}
        r = futures::future::select_all(tasks.iter_mut()) => {
            failed = Some(match r.0 {
                Ok(Ok(())) => anyhow::anyhow!("a controller stopped unexpectedly"),
                Ok(Err(e)) => anyhow::Error::from(e),
                Err(e) => anyhow::Error::from(e),
            });
        }
    }
    println!("stopping: the pods' containers first");
    agents.stop().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
