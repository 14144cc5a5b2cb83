//! The clients of a run, each recording every operation it makes through
//! the public gRPC API: registers (ConfigMaps read, written and
//! compare-and-set on resourceVersion) by clients that each stay with one
//! controller, as Jepsen's do, so that a controller serving stale reads is
//! seen; and creates and deletes of ConfigMaps, Nodes and Services and a
//! deployment's scale changes through clients that move on when their
//! controller fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_api::pb;
use berth_client::connect::Connector;
use berth_client::ClientKind;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

use crate::history::OpKind;
use crate::history::Outcome;
use crate::history::Pending;
use crate::history::Recorder;

/// Everything the run makes lives here.
pub const NAMESPACE: &str = "chaos";
/// The deployment whose replicas the run changes and checks.
pub const DEPLOYMENT: &str = "web";
/// The value every register starts with.
pub const INITIAL: i64 = 0;

/// How long a client waits for one call before it counts it as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

pub fn register_name(i: usize) -> String {
    format!("reg-{i}")
}

/// How a failed call ended: a refusal means it did not happen; anything
/// else (a timeout, a broken connection, no quorum) may have happened.
pub fn outcome_of(status: &Status) -> Outcome {
    let refused_before_sending =
        status.code() == Code::Unavailable && format!("{status:?}").contains("Connection refused");
    match status.code() {
        Code::Aborted
        | Code::AlreadyExists
        | Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::PermissionDenied => Outcome::Fail,
        _ if refused_before_sending => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// A call with the client's deadline; a missed deadline is CANCELLED.
async fn call<T>(fut: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(Status::cancelled("no answer within the client's deadline")),
    }
}

fn short(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Records a call that ended in `status`.
fn failed(recorder: &Recorder, pending: Pending, status: &Status) -> Outcome {
    recorder
        .complete(pending, outcome_of(status), None, Some(short(status)))
        .outcome
}

fn register(name: &str, value: i64, resource_version: &str) -> pb::ConfigMap {
    pb::ConfigMap {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            namespace: NAMESPACE.into(),
            resource_version: resource_version.into(),
            ..Default::default()
        }),
        data: [("value".to_string(), value.to_string())].into(),
        ..Default::default()
    }
}

fn register_value(cm: &pb::ConfigMap) -> Option<i64> {
    cm.data.get("value")?.parse().ok()
}

fn get_request(name: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: NAMESPACE.into(),
        name: name.into(),
        serializable: false,
    }
}

/// Sets out the run's namespace, registers and deployment (retrying until
/// the cluster takes them).
pub async fn prepare(
    conn: &Connector,
    registers: usize,
    deployment: pb::Deployment,
) -> Result<(), Status> {
    let ns = pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: NAMESPACE.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    create_once(conn, ns).await?;
    for i in 0..registers {
        create_once(conn, register(&register_name(i), INITIAL, "")).await?;
    }
    create_once(conn, deployment).await
}

/// Creates `obj`, retrying transient failures; one that exists already is
/// fine (an earlier attempt made it).
async fn create_once<K: ClientKind + Clone>(conn: &Connector, obj: K) -> Result<(), Status> {
    let mut last = Status::unavailable("not tried");
    for _ in 0..60 {
        let ch = match conn.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                last = Status::unavailable(e.to_string());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match call(K::create(ch, obj.clone())).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => {
                conn.failed(&s).await;
                last = s;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last)
}

/// A register client: stays with controller `addr` for the whole run.
pub struct RegisterClient {
    pub index: usize,
    pub addr: String,
    /// A controller's: the raw KV store is for controllers alone.
    pub transport: berth_client::Transport,
    pub registers: usize,
    pub clients: usize,
    pub seed: u64,
}

impl RegisterClient {
    pub async fn run(self, recorder: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let endpoint = berth_client::connect::endpoint(&self.transport, &self.addr)
            .expect("a HOST:PORT address");
        let channel = self.transport.lazy(endpoint);
        let mut process = self.index as u64;
        let mut next_value = (self.index as i64 + 1) * 1_000_000;
        // What this client last saw in each register: what its cas expects.
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        while !*stop.borrow() {
            let key = register_name(rng.random_range(0..self.registers));
            next_value += 1;
            let expect = seen.get(&key).copied().unwrap_or(INITIAL);
            let choice = rng.random_range(0..4);
            let outcome = match choice {
                0 | 1 => {
                    self.read(&recorder, &channel, process, &key, &mut seen)
                        .await
                }
                2 => {
                    self.write(&recorder, &channel, process, &key, next_value, &mut seen)
                        .await
                }
                _ => {
                    self.cas(
                        &recorder, &channel, process, &key, expect, next_value, &mut seen,
                    )
                    .await
                }
            };
            let pause = match outcome {
                // The old process may still act: a new one takes over, as
                // in Jepsen, after a moment so that a dead controller does
                // not pile up unknowns.
                Outcome::Info => {
                    process += self.clients as u64;
                    rng.random_range(300..800)
                }
                Outcome::Fail => rng.random_range(50..200),
                Outcome::Ok => rng.random_range(10..50),
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn read(
        &self,
        recorder: &Recorder,
        ch: &Channel,
        process: u64,
        key: &str,
        seen: &mut BTreeMap<String, i64>,
    ) -> Outcome {
        let pending = recorder
            .invoke(process, OpKind::Read, key, None)
            .controller(&self.addr);
        match call(pb::ConfigMap::get(ch.clone(), get_request(key))).await {
            Ok(cm) => {
                let value = register_value(&cm);
                if let Some(v) = value {
                    seen.insert(key.to_string(), v);
                }
                recorder.complete(pending, Outcome::Ok, value, None).outcome
            }
            Err(s) => failed(recorder, pending, &s),
        }
    }

    async fn write(
        &self,
        recorder: &Recorder,
        ch: &Channel,
        process: u64,
        key: &str,
        value: i64,
        seen: &mut BTreeMap<String, i64>,
    ) -> Outcome {
        let pending = recorder
            .invoke(process, OpKind::Write, key, Some(value))
            .controller(&self.addr);
        match call(pb::ConfigMap::update(ch.clone(), register(key, value, ""))).await {
            Ok(_) => {
                seen.insert(key.to_string(), value);
                recorder.complete(pending, Outcome::Ok, None, None).outcome
            }
            Err(s) => failed(recorder, pending, &s),
        }
    }

    /// Reads the register, and writes `value` on the revision it read if
    /// it held `expect`: one operation, linearized at the read when it
    /// finds another value, at the write otherwise.
    #[allow(clippy::too_many_arguments)]
    async fn cas(
        &self,
        recorder: &Recorder,
        ch: &Channel,
        process: u64,
        key: &str,
        expect: i64,
        value: i64,
        seen: &mut BTreeMap<String, i64>,
    ) -> Outcome {
        let pending = recorder
            .invoke(process, OpKind::Cas, key, Some(value))
            .expecting(expect)
            .controller(&self.addr);
        let current = match call(pb::ConfigMap::get(ch.clone(), get_request(key))).await {
            Ok(cm) => cm,
            // Nothing was written.
            Err(s) => {
                return recorder
                    .complete(pending, Outcome::Fail, None, Some(short(&s)))
                    .outcome
            }
        };
        let held = register_value(&current);
        if let Some(v) = held {
            seen.insert(key.to_string(), v);
        }
        if held != Some(expect) {
            let why = format!("the register held {held:?}");
            return recorder
                .complete(pending, Outcome::Fail, None, Some(why))
                .outcome;
        }
        let rv = current
            .metadata
            .map(|m| m.resource_version)
            .unwrap_or_default();
        match call(pb::ConfigMap::update(ch.clone(), register(key, value, &rv))).await {
            Ok(_) => {
                seen.insert(key.to_string(), value);
                recorder.complete(pending, Outcome::Ok, None, None).outcome
            }
            Err(s) => failed(recorder, pending, &s),
        }
    }
}

/// A client of creates and deletes (ConfigMaps, and Nodes and Services for
/// address churn) and of the deployment's scale, moving between
/// controllers as they fail.
pub struct ObjectClient {
    pub conn: Connector,
    pub process: u64,
    pub seed: u64,
    /// The deployment's replicas are drawn from this range.
    pub replicas: (i32, i32),
}

impl ObjectClient {
    pub async fn run(self, recorder: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        // Objects whose create may have happened and that no delete tried.
        let mut live: Vec<String> = Vec::new();
        let mut made = 0u64;
        let mut process = self.process;
        while !*stop.borrow() {
            let outcome = if rng.random_range(0..10) == 0 {
                let replicas = rng.random_range(self.replicas.0..=self.replicas.1);
                self.scale(&recorder, process, replicas).await
            } else if live.len() > 2 && rng.random_bool(0.4) {
                let key = live.swap_remove(rng.random_range(0..live.len()));
                self.delete(&recorder, process, &key).await
            } else {
                made += 1;
                let key = match rng.random_range(0..6) {
                    0 => format!("Node/churn-{}-{made}", self.process),
                    1 => format!("Service/svc-{}-{made}", self.process),
                    _ => format!("ConfigMap/obj-{}-{made}", self.process),
                };
                let outcome = self.create(&recorder, process, &key).await;
                if outcome != Outcome::Fail {
                    live.push(key);
                }
                outcome
            };
            if outcome == Outcome::Info {
                process += 1000;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn finish<T>(
        &self,
        recorder: &Recorder,
        pending: Pending,
        result: Result<T, Status>,
    ) -> Outcome {
        match result {
            Ok(_) => recorder.complete(pending, Outcome::Ok, None, None).outcome,
            Err(s) => {
                self.conn.failed(&s).await;
                failed(recorder, pending, &s)
            }
        }
    }

    async fn channel(&self) -> Result<Channel, Status> {
        self.conn
            .channel()
            .await
            .map_err(|e| Status::unavailable(format!("Connection refused: {e}")))
    }

    async fn create(&self, recorder: &Recorder, process: u64, key: &str) -> Outcome {
        let pending = recorder.invoke(process, OpKind::Create, key, None);
        let (kind, name) = key.split_once('/').expect("Kind/name");
        let meta = Some(pb::ObjectMeta {
            name: name.into(),
            namespace: namespace_of(kind).into(),
            ..Default::default()
        });
        let result = match self.channel().await {
            Err(s) => Err(s),
            Ok(ch) => match kind {
                "Node" => call(pb::Node::create(
                    ch,
                    pb::Node {
                        metadata: meta,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
                "Service" => call(pb::Service::create(ch, service(meta))).await.map(drop),
                _ => call(pb::ConfigMap::create(
                    ch,
                    pb::ConfigMap {
                        metadata: meta,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            },
        };
        self.finish(recorder, pending, result).await
    }

    async fn delete(&self, recorder: &Recorder, process: u64, key: &str) -> Outcome {
        let pending = recorder.invoke(process, OpKind::Delete, key, None);
        let (kind, name) = key.split_once('/').expect("Kind/name");
        let req = pb::DeleteRequest {
            namespace: namespace_of(kind).into(),
            name: name.into(),
            resource_version: String::new(),
        };
        let result = match self.channel().await {
            Err(s) => Err(s),
            Ok(ch) => match kind {
                "Node" => call(pb::Node::delete(ch, req)).await.map(drop),
                "Service" => call(pb::Service::delete(ch, req)).await.map(drop),
                _ => call(pb::ConfigMap::delete(ch, req)).await.map(drop),
            },
        };
        self.finish(recorder, pending, result).await
    }

    async fn scale(&self, recorder: &Recorder, process: u64, replicas: i32) -> Outcome {
        let key = format!("Deployment/{DEPLOYMENT}");
        let pending = recorder.invoke(process, OpKind::Scale, &key, Some(replicas.into()));
        let result = async {
            let ch = self.channel().await?;
            let mut d = call(pb::Deployment::get(ch.clone(), get_request(DEPLOYMENT))).await?;
            if let Some(spec) = d.spec.as_mut() {
                spec.replicas = Some(replicas);
            }
            if let Some(m) = d.metadata.as_mut() {
                m.resource_version.clear();
            }
            call(pb::Deployment::update(ch, d)).await
        }
        .await;
        self.finish(recorder, pending, result).await
    }
}

/// Nodes belong to no namespace.
fn namespace_of(kind: &str) -> &'static str {
    match kind {
        "Node" => "",
        _ => NAMESPACE,
    }
}

fn service(metadata: Option<pb::ObjectMeta>) -> pb::Service {
    pb::Service {
        metadata,
        spec: Some(pb::ServiceSpec {
            selector: [("app".to_string(), DEPLOYMENT.to_string())].into(),
            ports: vec![pb::ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
