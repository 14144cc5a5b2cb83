//! `berth bench services`: how long an agent takes to program service
//! virtual IPs in nftables: the whole rule set for `--services` services of
//! `--endpoints` Ready endpoints each (what an agent does when it starts),
//! and one endpoint change at that size (what it does on every change).
//! Each run goes the agent's way: Service and Endpoints objects, the rule
//! set derived from them, the nft script, one `nft -f` transaction. The
//! rules go into a network namespace the benchmark makes and removes, so
//! the host's own rules are never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use berth_agent::network::netns;
use berth_agent::network::nft;
use berth_agent::network::sync::desired;
use berth_api::pb;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct ServicesArgs {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Ready endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Measurements of each kind; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(short, long, default_value = "text")]
    output: String,
}

fn service(i: usize) -> pb::Service {
    pb::Service {
        metadata: Some(pb::ObjectMeta {
            name: format!("svc-{i}"),
            namespace: "bench".into(),
            ..Default::default()
        }),
        spec: Some(pb::ServiceSpec {
            cluster_ip: format!("10.96.{}.{}", i / 250, i % 250 + 1),
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Endpoints of service `i`; `generation` shifts one address so that a
/// new generation is one endpoint change.
fn endpoints(i: usize, n: usize, generation: usize) -> pb::Endpoints {
    let addresses = (0..n)
        .map(|e| {
            let host = if e == 0 { generation % 200 + 2 } else { e + 2 };
            pb::EndpointAddress {
                ip: format!("10.244.{}.{}", (i * n + e) % 250, host),
                ..Default::default()
            }
        })
        .collect();
    pb::Endpoints {
        metadata: Some(pb::ObjectMeta {
            name: format!("svc-{i}"),
            namespace: "bench".into(),
            ..Default::default()
        }),
        subsets: vec![pb::EndpointSubset {
            addresses,
            not_ready_addresses: Vec::new(),
            ports: vec![pb::EndpointPort {
                port: 8080,
                ..Default::default()
            }],
        }],
        ..Default::default()
    }
}

struct Measured {
    full: Vec<Duration>,
    incremental: Vec<Duration>,
    script_bytes: usize,
}

async fn measure(args: &ServicesArgs) -> anyhow::Result<Measured> {
    let services: Vec<Arc<pb::Service>> =
        (0..args.services).map(|i| Arc::new(service(i))).collect();
    let mut eps: HashMap<String, Arc<pb::Endpoints>> = (0..args.services)
        .map(|i| {
            (
                format!("bench/svc-{i}"),
                Arc::new(endpoints(i, args.endpoints, 0)),
            )
        })
        .collect();
    let nat = nft::NodeNat {
        bridge: "berth0".into(),
        node_cidr: "10.244.0.0/24".parse()?,
        cluster_cidr: "10.244.0.0/16".parse()?,
    };
    let mut out = Measured {
        full: Vec::new(),
        incremental: Vec::new(),
        script_bytes: 0,
    };
    let mut applied = None;
    for _ in 0..args.runs {
        let started = Instant::now();
        let (rules, _) = desired(&services, |k| eps.get(k).cloned(), "cluster.local");
        let script = nft::render_full(&nat, &rules);
        nft::apply(&script).await?;
        out.full.push(started.elapsed());
        out.script_bytes = script.len();
        applied = Some(rules);
    }
    for generation in 1..=args.runs {
        let changed = generation % args.services;
        eps.insert(
            format!("bench/svc-{changed}"),
            Arc::new(endpoints(changed, args.endpoints, generation)),
        );
        let started = Instant::now();
        let (rules, _) = desired(&services, |k| eps.get(k).cloned(), "cluster.local");
        let old = applied.take().context("a full sync ran first")?;
        let script = nft::render_changes(&old, &rules);
        anyhow::ensure!(!script.is_empty(), "the endpoint change changed no rule");
        nft::apply(&script).await?;
        out.incremental.push(started.elapsed());
        applied = Some(rules);
    }
    Ok(out)
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub async fn run(args: ServicesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.services > 0 && args.services <= 60_000,
        "--services must be between 1 and 60000"
    );
    anyhow::ensure!(
        args.endpoints > 0 && args.endpoints <= 200,
        "--endpoints must be between 1 and 200"
    );
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let name = format!(
        "berth-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ns = tokio::task::spawn_blocking(move || netns::create(&name))
        .await?
        .context("create the benchmark's network namespace (run as root)")?;
    let args = Arc::new(args);
    let (in_ns, path) = (args.clone(), ns.clone());
    // nft runs as a child of the namespace's own thread, so in that
    // namespace.
    let measured = tokio::task::spawn_blocking(move || {
        netns::run_in(&path, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(measure(&in_ns)))
        })
    })
    .await?;
    netns::remove(&ns).context("remove the benchmark's network namespace")?;
    let mut m = measured.context("enter the benchmark's network namespace")??;
    let full = median_ms(&mut m.full);
    let incremental = median_ms(&mut m.incremental);
    if args.output == "json" {
        println!(
            "{}",
            json!({
                "services": args.services,
                "endpoints": args.endpoints,
                "runs": args.runs,
                "full_sync_ms": full,
                "incremental_ms": incremental,
                "script_bytes": m.script_bytes,
            })
        );
    } else {
        println!(
            "{} services x {} endpoints ({} runs, medians): full sync {full:.1} ms, one endpoint change {incremental:.1} ms ({} bytes of nft script)",
            args.services, args.endpoints, args.runs, m.script_bytes
        );
    }
    Ok(())
}
