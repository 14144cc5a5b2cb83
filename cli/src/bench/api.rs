//! `berth bench api`: the public API under a mixed load, then watch fan-out.
//!
//! Mixed load: each client owns a namespace and creates, gets, updates and
//! lists pods or configmaps in it (at most `--objects-per-client` live; a
//! create past that deletes the oldest first). Fan-out: `--watchers`
//! watches on pods, spread over the controllers, while one writer creates
//! pods; the latency of a delivery is measured from the write's request,
//! so it bounds commit-to-delivery from above.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use anyhow::bail;
use anyhow::Context;
use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use clap::Args;
use futures::StreamExt;
use rand::Rng;
use rand::SeedableRng;
use tonic::transport::Channel;

use super::latency::Samples;

#[derive(Args)]
pub struct ApiArgs {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 100)]
    objects_per_client: usize,
    /// Watchers for the fan-out phase (0: skip it).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Pods per second the fan-out writer creates.
    #[arg(long, default_value_t = 20)]
    watch_writes_per_sec: u32,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    watch_duration: Duration,
    /// Start a 3-controller cluster of this binary for the run instead of
    /// using --server.
    #[arg(long)]
    spawn: bool,
    /// Run the load as a user with only the built-in `edit` role, bound in
    /// each of its namespaces, so that RBAC decides every call (a
    /// cluster-admin, the default, is let through on its group alone).
    /// With --spawn.
    #[arg(long, requires = "spawn")]
    as_user: bool,
    #[arg(short, long, default_value = "text")]
    output: String,
}

/// Who runs the load with --as-user.
const BENCH_USER: &str = "bench-user";

const VERBS: [&str; 4] = ["create", "get", "update", "list"];

#[derive(Default)]
struct VerbResult {
    ops: [u64; 4],
    errors: u64,
    latency: [Samples; 4],
}

fn annotate(meta: &mut pb::ObjectMeta, i: u64) {
    meta.annotations.insert("bench/i".into(), i.to_string());
}

fn object_of<K: Object>(ns: &str, name: &str, make: fn() -> K) -> K {
    let mut o = make();
    let meta = o.meta_mut();
    meta.namespace = ns.into();
    meta.name = name.into();
    meta.labels.insert("app".into(), "bench".into());
    o
}

fn bench_pod() -> pb::Pod {
    pb::Pod {
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox".into(),
                command: vec!["sleep".into(), "3600".into()],
                resources: Some(pb::ResourceRequirements {
                    requests: [
                        ("cpu".to_string(), "100m".to_string()),
                        ("memory".to_string(), "64Mi".to_string()),
                    ]
                    .into(),
                    limits: Default::default(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bench_configmap() -> pb::ConfigMap {
    pb::ConfigMap {
        data: [("config".to_string(), "x".repeat(256))].into(),
        ..Default::default()
    }
}

/// One client's loop over its own namespace.
async fn drive<K: ClientKind>(
    ch: Channel,
    ns: String,
    make: fn() -> K,
    cap: usize,
    until: Instant,
) -> VerbResult {
    let mut r = VerbResult::default();
    let mut live: VecDeque<String> = VecDeque::new();
    let mut next = 0u64;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while Instant::now() < until {
        // Weights: create 25%, get 35%, update 25%, list 15%.
        let roll: u32 = rng.random_range(0..100);
        let verb = match roll {
            _ if live.is_empty() => 0,
            0..25 => 0,
            25..60 => 1,
            60..85 => 2,
            _ => 3,
        };
        if verb == 0 && live.len() >= cap {
            if let Some(old) = live.pop_front() {
                let req = pb::DeleteRequest {
                    namespace: ns.clone(),
                    name: old,
                    resource_version: String::new(),
                };
                let _ = K::delete(ch.clone(), req).await;
            }
        }
        let pick = match live.len() {
            0 => String::new(),
            n => live[rng.random_range(0..n)].clone(),
        };
        let started = Instant::now();
        let ok = match verb {
            0 => {
                let name = format!("o-{next}");
                next += 1;
                let mut o = object_of(&ns, &name, make);
                annotate(o.meta_mut(), next);
                let ok = K::create(ch.clone(), o).await.is_ok();
                if ok {
                    live.push_back(name);
                }
                ok
            }
            1 => K::get(
                ch.clone(),
                pb::GetRequest {
                    namespace: ns.clone(),
                    name: pick.clone(),
                    serializable: false,
                },
            )
            .await
            .is_ok(),
            2 => {
                let mut o = object_of(&ns, &pick, make);
                annotate(o.meta_mut(), next);
                next += 1;
                K::update(ch.clone(), o).await.is_ok()
            }
            _ => {
                let req = pb::ListRequest {
                    namespace: ns.clone(),
                    limit: 50,
                    ..Default::default()
                };
                K::list(ch.clone(), req).await.is_ok()
            }
        };
        if ok {
            r.ops[verb] += 1;
            r.latency[verb].record(started.elapsed());
        } else {
            r.errors += 1;
        }
    }
    r
}

async fn channels(
    addrs: &[String],
    transport: &berth_client::Transport,
) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for a in addrs {
        let (_, ch) = berth::client::connect(std::slice::from_ref(a), transport).await?;
        out.push(ch);
    }
    Ok(out)
}

async fn create_namespace(ch: Channel, name: &str) -> anyhow::Result<()> {
    let mut ns = pb::Namespace::default();
    ns.meta_mut().name = name.into();
    match pb::Namespace::create(ch, ns).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => bail!("could not create namespace {name}: {}", s.message()),
    }
}

/// The load's namespaces: one per client and one for the fan-out.
fn namespaces(args: &ApiArgs, run: &str) -> Vec<String> {
    let mut names: Vec<String> = (0..args.clients).map(|c| format!("{run}-{c}")).collect();
    names.push(format!("{run}-watch"));
    names
}

/// Binds `user` to the built-in ClusterRole `edit` in `namespace`.
async fn bind_edit(ch: Channel, namespace: &str, user: &str) -> anyhow::Result<()> {
    let binding = berth_testkit::objects::role_binding(
        namespace,
        "bench-edit",
        berth_testkit::objects::user(user),
        "ClusterRole",
        "edit",
    );
    pb::RoleBinding::create(ch, binding)
        .await
        .map(drop)
        .map_err(|s| anyhow::anyhow!("bind {user} to edit in {namespace}: {}", s.message()))
}

async fn mixed_load(
    args: &ApiArgs,
    chans: &[Channel],
    run: &str,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let until = started + args.duration;
    let handles: Vec<_> = (0..args.clients)
        .map(|c| {
            let ch = chans[c % chans.len()].clone();
            let ns = format!("{run}-{c}");
            let cap = args.objects_per_client;
            if c % 2 == 0 {
                tokio::spawn(drive(ch, ns, bench_pod, cap, until))
            } else {
                tokio::spawn(drive(ch, ns, bench_configmap, cap, until))
            }
        })
        .collect();
    let mut total = VerbResult::default();
    for h in handles {
        let r = h.await?;
        for v in 0..4 {
            total.ops[v] += r.ops[v];
            total.latency[v].extend(r.latency[v].clone());
        }
        total.errors += r.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut out = serde_json::Map::new();
    for (v, name) in VERBS.iter().enumerate() {
        out.insert(
            name.to_string(),
            serde_json::json!({
                "ops_per_sec": (total.ops[v] as f64 / secs).round(),
                "p50_ms": total.latency[v].quantile_ms(0.50),
                "p99_ms": total.latency[v].quantile_ms(0.99),
            }),
        );
    }
    out.insert("clients".into(), args.clients.into());
    out.insert("errors".into(), total.errors.into());
    Ok(serde_json::Value::Object(out))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Watchers on one namespace's pods, and one writer creating pods in it.
async fn fan_out(
    args: &ApiArgs,
    chans: &[Channel],
    run: &str,
) -> anyhow::Result<serde_json::Value> {
    let ns = format!("{run}-watch");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        let ch = chans[w % chans.len()].clone();
        let req = pb::WatchRequest {
            namespace: ns.clone(),
            ..Default::default()
        };
        let mut stream = pb::Pod::watch(ch, req)
            .await
            .map_err(|s| anyhow::anyhow!("watch {w}: {}", s.message()))?;
        let samples = samples.clone();
        watchers.push(tokio::spawn(async move {
            let mut local = Samples::default();
            let mut received = 0u64;
            while let Some(Ok((kind, pod))) = stream.next().await {
                if kind != "ADDED" {
                    continue;
                }
                let sent: u128 = pod
                    .meta()
                    .and_then(|m| m.annotations.get("bench/sent-ns"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if sent > 0 {
                    local.record(Duration::from_nanos(now_nanos().saturating_sub(sent) as u64));
                    received += 1;
                }
                if pod.name() == "last" {
                    break;
                }
            }
            samples.lock().expect("samples").extend(local);
            received
        }));
    }
    let writer = chans[0].clone();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.watch_writes_per_sec.max(1)));
    let until = Instant::now() + args.watch_duration;
    let mut i = 0u64;
    let mut ticker = tokio::time::interval(period);
    while Instant::now() < until {
        ticker.tick().await;
        let mut p = object_of(&ns, &format!("p-{i}"), bench_pod);
        p.meta_mut()
            .annotations
            .insert("bench/sent-ns".into(), now_nanos().to_string());
        pb::Pod::create(writer.clone(), p)
            .await
            .map_err(|s| anyhow::anyhow!("create: {}", s.message()))?;
        i += 1;
    }
    pb::Pod::create(writer.clone(), object_of(&ns, "last", bench_pod))
        .await
        .map_err(|s| anyhow::anyhow!("create: {}", s.message()))?;
    let mut delivered = 0;
    for w in watchers {
        delivered += tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .context("a watcher never saw the last pod")??;
    }
    let mut s = samples.lock().expect("samples").clone();
    Ok(serde_json::json!({
        "watchers": args.watchers,
        "writes": i,
        "deliveries": delivered,
        "expected_deliveries": i * args.watchers as u64,
        "watch_p50_ms": s.quantile_ms(0.50),
        "watch_p99_ms": s.quantile_ms(0.99),
    }))
}

pub async fn run(
    args: ApiArgs,
    target: anyhow::Result<crate::verbs::Ctx>,
    insecure: bool,
) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    // Keeps the spawned cluster (and its data dir) alive for the run.
    let mut spawned: Option<(tempfile::TempDir, Cluster)> = None;
    let (addrs, transport, user) = if args.spawn {
        let binary = std::env::current_exe().context("locate the berth binary")?;
        let root = tempfile::tempdir().context("create a temporary directory")?;
        // Without schedulers: the bench's pods are not meant to be placed.
        let options = ClusterOptions {
            flags: ServerFlags {
                no_scheduler: true,
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
        let user = args
            .as_user
            .then(|| cluster.user(root.path(), BENCH_USER, &[]).1);
        let reach = (cluster.addrs(), cluster.transport(), user);
        spawned = Some((root, cluster));
        reach
    } else {
        let target = target?;
        (target.addrs, target.transport, None)
    };
    let chans = channels(&addrs, &transport).await?;
    let run = format!("bench-{}", std::process::id());
    for ns in namespaces(&args, &run) {
        create_namespace(chans[0].clone(), &ns).await?;
        if user.is_some() {
            bind_edit(chans[0].clone(), &ns, BENCH_USER).await?;
        }
    }
    let load_chans = match &user {
        Some(user) => channels(&addrs, user).await?,
        None => chans.clone(),
    };
    let mut report = mixed_load(&args, &load_chans, &run).await?;
    if let Some(r) = report.as_object_mut() {
        r.insert("as_user".into(), args.as_user.into());
    }
    if args.watchers > 0 {
        let watch = fan_out(&args, &load_chans, &run).await?;
        if let (Some(r), serde_json::Value::Object(w)) = (report.as_object_mut(), watch) {
            r.extend(w);
        }
    }
    if spawned.is_none() {
        for name in namespaces(&args, &run) {
            let req = pb::DeleteRequest {
                name,
                ..Default::default()
            };
            let _ = pb::Namespace::delete(chans[0].clone(), req).await;
        }
    }
    if args.output == "json" {
        println!("{report}");
    } else {
        for v in VERBS {
            let r = &report[v];
            println!(
                "{v:>7}: {} ops/s, p50 {} ms, p99 {} ms",
                r["ops_per_sec"], r["p50_ms"], r["p99_ms"]
            );
        }
        if args.watchers > 0 {
            println!(
                "  watch: {} watchers, p50 {} ms, p99 {} ms from the write's request to delivery",
                report["watchers"], report["watch_p50_ms"], report["watch_p99_ms"]
            );
        }
    }
    drop(spawned);
    Ok(())
}
