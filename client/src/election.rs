//! Leader election through a Lease: the scheduler's
//! (`berth-system/berth-scheduler`) and each reconciler's.
//!
//! The holder renews the lease every `renew_interval`. A candidate that
//! sees the lease unchanged for its whole duration (timed by its own
//! clock, as Kubernetes does, so clocks need not agree) takes it over,
//! raising `spec.leaseTransitions`: that number is the epoch. The
//! scheduler's binds carry it and the state machine refuses an older one,
//! so a former holder that was paused or cut off cannot place a pod,
//! whatever it believes; its own belief ends `renew_deadline` after its
//! last successful renewal, which only saves it wasted writes.

use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::resources::lease_epoch;
use berth_api::Object;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;
use tonic::Status;

use crate::connect::Connector;
use crate::ClientKind;

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub lease_namespace: String,
    pub lease_name: String,
    /// This candidate's name in the lease.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Act without holding the lease, with whatever epoch it has: only for
    /// tests that show the state machine keeps two active schedulers from
    /// overcommitting or double-placing.
    pub force_active: bool,
}

impl ElectionConfig {
    pub fn new(lease_namespace: &str, lease_name: &str, identity: String) -> Self {
        Self {
            lease_namespace: lease_namespace.into(),
            lease_name: lease_name.into(),
            identity,
            lease_duration: Duration::from_secs(5),
            renew_interval: Duration::from_secs(1),
            force_active: false,
        }
    }

    /// How long after a renewal was sent the holder still acts as holder.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// The right to bind, while `Instant::now() < valid_until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub epoch: u64,
    pub valid_until: Instant,
}

impl Leadership {
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

pub type LeaderState = watch::Receiver<Option<Leadership>>;

/// Runs the election until `tx` has no receivers.
pub async fn run(conn: Connector, config: ElectionConfig, tx: watch::Sender<Option<Leadership>>) {
    let mut observed: Option<(String, Instant)> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let started = Instant::now();
        let result = if config.force_active {
            forced(&conn, &config).await.map(|epoch| {
                Some(Leadership {
                    epoch,
                    valid_until: started + Duration::from_secs(24 * 3600),
                })
            })
        } else {
            attempt(&conn, &config, &mut observed).await.map(|epoch| {
                epoch.map(|epoch| Leadership {
                    epoch,
                    valid_until: started + config.renew_deadline(),
                })
            })
        };
        match result {
            Ok(state) => {
                let was = *tx.borrow();
                if was.map(|l| l.epoch) != state.map(|l| l.epoch) {
                    match state {
                        Some(l) => {
                            tracing::info!(lease = %config.lease_name, identity = %config.identity, epoch = l.epoch, "holding the lease: active")
                        }
                        None if was.is_some() => {
                            tracing::warn!(lease = %config.lease_name, identity = %config.identity, "lost the lease; standing by")
                        }
                        None => {}
                    }
                }
                tx.send_replace(state);
            }
            Err(status) => {
                conn.failed(&status).await;
                tracing::debug!(error = %status.message(), "lease not renewed; retrying");
            }
        }
        tokio::time::sleep(config.renew_interval).await;
    }
}

/// The lease's current epoch, for a candidate forced active.
async fn forced(conn: &Connector, config: &ElectionConfig) -> Result<u64, Status> {
    Ok(get_lease(conn, config)
        .await?
        .as_ref()
        .map_or(0, lease_epoch))
}

async fn get_lease(conn: &Connector, config: &ElectionConfig) -> Result<Option<pb::Lease>, Status> {
    let ch = channel(conn).await?;
    let req = pb::GetRequest {
        namespace: config.lease_namespace.clone(),
        name: config.lease_name.clone(),
        serializable: false,
    };
    match pb::Lease::get(ch, req).await {
        Ok(lease) => Ok(Some(lease)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

async fn channel(conn: &Connector) -> Result<tonic::transport::Channel, Status> {
    conn.channel()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// One round: creates, renews or takes over the lease if it may. Returns
/// the epoch held, or None while another holder's lease runs.
async fn attempt(
    conn: &Connector,
    config: &ElectionConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<Option<u64>, Status> {
    let Some(lease) = get_lease(conn, config).await? else {
        let mut lease = pb::Lease::default();
        lease.meta_mut().name = config.lease_name.clone();
        lease.meta_mut().namespace = config.lease_namespace.clone();
        lease.spec = Some(pb::LeaseSpec {
            holder_identity: config.identity.clone(),
            lease_duration_seconds: Some(config.lease_duration.as_secs().max(1) as i32),
            acquire_time: now(),
            renew_time: now(),
            lease_transitions: Some(1),
        });
        return match pb::Lease::create(channel(conn).await?, lease).await {
            Ok(created) => Ok(Some(lease_epoch(&created))),
            Err(s) if s.code() == Code::AlreadyExists => Ok(None),
            Err(s) => Err(s),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let rv = lease
        .meta()
        .map(|m| m.resource_version.clone())
        .unwrap_or_default();
    let ours = spec.holder_identity == config.identity;
    let mut expired = || {
        let seen = match observed {
            Some((v, at)) if *v == rv => *at,
            _ => {
                *observed = Some((rv.clone(), Instant::now()));
                Instant::now()
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(config.lease_duration, |s| {
                Duration::from_secs(s.max(1) as u64)
            });
        seen.elapsed() >= duration
    };
    if !ours && !spec.holder_identity.is_empty() && !expired() {
        return Ok(None);
    }
    let mut next = lease.clone();
    let s = next.spec.get_or_insert_default();
    s.renew_time = now();
    s.lease_duration_seconds = Some(config.lease_duration.as_secs().max(1) as i32);
    if !ours {
        s.holder_identity = config.identity.clone();
        s.acquire_time = now();
        s.lease_transitions = Some(lease_epoch(&lease) as i32 + 1);
        tracing::info!(lease = %config.lease_name, identity = %config.identity, former = %spec.holder_identity, "taking over the lease");
    }
    match pb::Lease::update(channel(conn).await?, next).await {
        Ok(updated) => {
            *observed = None;
            Ok(Some(lease_epoch(&updated)))
        }
        // Someone else changed it first: look again next round.
        Err(s) if s.code() == Code::Aborted => Ok(None),
        Err(s) => Err(s),
    }
}
