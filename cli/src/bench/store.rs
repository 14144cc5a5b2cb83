//! `berth bench store`: write throughput and latency of the store, and
//! optionally of an etcd cluster under the same load.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use berth_testkit::rpc;
use clap::Args;
use serde_json::json;

use berth_client::connect::Connector;
use berth_proto::kv::kv_client::KvClient;
use tonic::transport::Channel;

use super::latency::Samples;

#[derive(Args)]
pub struct StoreArgs {
    /// Concurrent clients, each with its own connection. A client follows
    /// the leader, as berth-client does.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Keep client i on controller i mod N instead of following the
    /// leader: measures the follower path (forwarded writes, read-index
    /// from the leader).
    #[arg(long)]
    pinned: bool,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Read back every Nth write (linearizable) and check its value.
    #[arg(long, default_value_t = 10)]
    read_every: u64,
    /// Write as a controller of the cluster whose data dir this is (its
    /// CA issues the benchmark a controller certificate): on a secure
    /// cluster the raw store is for controllers alone.
    #[arg(long, value_name = "DIR")]
    controller_dir: Option<std::path::PathBuf>,
    /// Also run the load against these etcd endpoints (comma separated).
    #[arg(long)]
    etcd: Option<String>,
    /// Reach etcd over TLS: the CA that signed its certificates (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_ca: Option<std::path::PathBuf>,
    /// The client certificate presented to etcd (PEM), with --etcd-key.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<std::path::PathBuf>,
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
    #[arg(short, long, default_value = "text")]
    output: String,
}

struct Report {
    system: &'static str,
    writes: u64,
    elapsed: Duration,
    latency: Samples,
    reads: u64,
    read_mismatches: u64,
    errors: u64,
}

impl Report {
    fn summarize(&mut self) -> serde_json::Value {
        json!({
            "system": self.system,
            "writes_per_sec": (self.writes as f64 / self.elapsed.as_secs_f64()).round(),
            "p50_ms": self.latency.quantile_ms(0.50),
            "p99_ms": self.latency.quantile_ms(0.99),
            "p999_ms": self.latency.quantile_ms(0.999),
            "writes": self.writes,
            "reads": self.reads,
            "read_mismatches": self.read_mismatches,
            "errors": self.errors,
        })
    }
}

#[derive(Default)]
struct ClientResult {
    latency: Samples,
    writes: u64,
    reads: u64,
    mismatches: u64,
    errors: u64,
}

fn value(client: usize, i: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{client}:{i}:").into_bytes();
    v.resize(size.max(v.len()), b'x');
    v
}

/// The two operations the load needs, for Berth and for etcd alike.
trait LoadClient {
    /// Writes `value`; false if the write failed.
    async fn put(&mut self, key: &str, value: &[u8]) -> bool;
    /// Reads `key` linearizably; None if the read failed.
    async fn get(&mut self, key: &str) -> Option<Option<Vec<u8>>>;
}

const TIMEOUT: Duration = Duration::from_secs(5);

enum BerthClient {
    Following(Connector),
    Pinned(KvClient<Channel>),
}

impl BerthClient {
    async fn kv(&self) -> Option<KvClient<Channel>> {
        match self {
            Self::Following(conn) => conn.channel().await.ok().map(KvClient::new),
            Self::Pinned(kv) => Some(kv.clone()),
        }
    }

    async fn note<T>(&self, result: Result<T, tonic::Status>) -> Option<T> {
        match (result, self) {
            (Ok(v), _) => Some(v),
            (Err(s), Self::Following(conn)) => {
                conn.failed(&s).await;
                None
            }
            (Err(_), Self::Pinned(_)) => None,
        }
    }
}

impl LoadClient for BerthClient {
    async fn put(&mut self, key: &str, value: &[u8]) -> bool {
        let Some(mut kv) = self.kv().await else {
            return false;
        };
        let result = rpc::put(&mut kv, key, value, TIMEOUT).await;
        self.note(result).await.is_some()
    }

    async fn get(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        let mut kv = self.kv().await?;
        let result = rpc::get(&mut kv, key, false, TIMEOUT).await;
        let kv = self.note(result).await?;
        Some(kv.map(|kv| kv.value))
    }
}

#[cfg(feature = "etcd")]
struct EtcdClient(etcd_client::Client);

#[cfg(feature = "etcd")]
impl LoadClient for EtcdClient {
    async fn put(&mut self, key: &str, value: &[u8]) -> bool {
        self.0.put(key, value, None).await.is_ok()
    }

    async fn get(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        let resp = self.0.get(key, None).await.ok()?;
        Some(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

/// One client's loop: write, and read back every `read_every`th write.
async fn drive(
    mut c: impl LoadClient,
    client: usize,
    args: Arc<StoreArgs>,
    until: Instant,
) -> ClientResult {
    let mut r = ClientResult::default();
    let mut i = 0u64;
    while Instant::now() < until {
        let key = format!("bench/{client}/{}", i % 1000);
        let v = value(client, i, args.value_size);
        let started = Instant::now();
        if !c.put(&key, &v).await {
            r.errors += 1;
            continue;
        }
        r.latency.record(started.elapsed());
        r.writes += 1;
        if args.read_every > 0 && i.is_multiple_of(args.read_every) {
            match c.get(&key).await {
                Some(Some(got)) if got == v => r.reads += 1,
                Some(_) => r.mismatches += 1,
                None => r.errors += 1,
            }
        }
        i += 1;
    }
    r
}

async fn berth_client(
    addrs: Vec<String>,
    transport: berth_client::Transport,
    client: usize,
    args: Arc<StoreArgs>,
    until: Instant,
) -> ClientResult {
    let connected = if args.pinned {
        let addr = &addrs[client % addrs.len()];
        rpc::kv(&transport, addr).await.map(BerthClient::Pinned)
    } else {
        match Connector::new(addrs, transport) {
            Ok(conn) if conn.channel().await.is_ok() => Some(BerthClient::Following(conn)),
            _ => None,
        }
    };
    match connected {
        Some(c) => drive(c, client, args, until).await,
        None => ClientResult {
            errors: 1,
            ..ClientResult::default()
        },
    }
}

/// How to reach etcd: over TLS with a client certificate when
/// --etcd-ca, --etcd-cert and --etcd-key name one.
#[cfg(feature = "etcd")]
fn etcd_options(args: &StoreArgs) -> anyhow::Result<Option<etcd_client::ConnectOptions>> {
    use anyhow::Context as _;
    let (Some(ca), Some(cert), Some(key)) = (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).with_context(|| format!("read {}", path.display()))
    };
    // OpenSSL rather than tonic's rustls: turning on tonic's TLS would
    // make it refuse the https endpoints Berth's own connector serves.
    let tls = etcd_client::OpenSslClientConfig::default()
        .ca_cert_pem(&read(ca)?)
        .client_cert_pem_and_key(&read(cert)?, &read(key)?);
    Ok(Some(
        etcd_client::ConnectOptions::new().with_openssl_tls(tls),
    ))
}

#[cfg(feature = "etcd")]
async fn etcd_client(
    endpoints: Vec<String>,
    options: Option<etcd_client::ConnectOptions>,
    client: usize,
    args: Arc<StoreArgs>,
    until: Instant,
) -> ClientResult {
    match etcd_client::Client::connect(endpoints, options).await {
        Ok(c) => drive(EtcdClient(c), client, args, until).await,
        Err(_) => ClientResult {
            errors: 1,
            ..ClientResult::default()
        },
    }
}

#[cfg(feature = "etcd")]
async fn etcd_load(etcd: &str, args: &Arc<StoreArgs>) -> anyhow::Result<Report> {
    let endpoints: Vec<String> = etcd.split(',').map(|e| e.trim().to_string()).collect();
    let options = etcd_options(args)?;
    let started = Instant::now();
    let until = started + args.duration;
    let handles = (0..args.clients)
        .map(|c| {
            tokio::spawn(etcd_client(
                endpoints.clone(),
                options.clone(),
                c,
                args.clone(),
                until,
            ))
        })
        .collect();
    Ok(collect("etcd", handles, started).await)
}

const NO_ETCD: &str = "this berth was built without etcd support: build it with `cargo build --release --features berth/etcd` to compare with etcd";

#[cfg(not(feature = "etcd"))]
async fn etcd_load(_: &str, _: &Arc<StoreArgs>) -> anyhow::Result<Report> {
    bail!(NO_ETCD)
}

async fn collect(
    system: &'static str,
    handles: Vec<tokio::task::JoinHandle<ClientResult>>,
    started: Instant,
) -> Report {
    let mut report = Report {
        system,
        writes: 0,
        elapsed: Duration::ZERO,
        latency: Samples::default(),
        reads: 0,
        read_mismatches: 0,
        errors: 0,
    };
    for h in handles {
        if let Ok(r) = h.await {
            report.writes += r.writes;
            report.reads += r.reads;
            report.read_mismatches += r.mismatches;
            report.errors += r.errors;
            report.latency.extend(r.latency);
        }
    }
    report.elapsed = started.elapsed();
    report
}

pub async fn run(args: StoreArgs, target: &crate::verbs::Ctx) -> anyhow::Result<()> {
    let addrs = &target.addrs[..];
    if args.clients == 0 || addrs.is_empty() {
        bail!("--clients must be at least 1 and --server must name a controller");
    }
    if args.etcd.is_some() && !cfg!(feature = "etcd") {
        bail!(NO_ETCD);
    }
    let transport = match &args.controller_dir {
        Some(dir) => berth_testkit::tls::controller_transport(dir)
            .map_err(|e| anyhow::anyhow!("a controller identity from {}: {e}", dir.display()))?,
        None => target.transport.clone(),
    };
    let args = Arc::new(args);
    let mut reports = Vec::new();

    let started = Instant::now();
    let until = started + args.duration;
    let handles = (0..args.clients)
        .map(|c| {
            tokio::spawn(berth_client(
                addrs.to_vec(),
                transport.clone(),
                c,
                args.clone(),
                until,
            ))
        })
        .collect();
    reports.push(collect("berth", handles, started).await);

    if let Some(etcd) = &args.etcd {
        reports.push(etcd_load(etcd, &args).await?);
    }

    for r in &mut reports {
        let v = r.summarize();
        if args.output == "json" {
            println!("{v}");
        } else {
            println!(
                "{}: {} writes/s, p50 {} ms, p99 {} ms, p99.9 {} ms ({} errors, {} read mismatches)",
                r.system, v["writes_per_sec"], v["p50_ms"], v["p99_ms"], v["p999_ms"], r.errors, r.read_mismatches
            );
        }
    }
    if reports.iter().any(|r| r.writes == 0) {
        bail!("no write succeeded: is the cluster up?");
    }
    Ok(())
}
