//! The deployment controller. A Deployment owns its pods directly (there
//! is no ReplicaSet kind): each pod carries the `pod-template-hash` label
//! of the template it was made from and a controller ownerReference. A
//! reconcile of one deployment, level-triggered on every change of it or
//! of its pods and every few seconds:
//!
//! - deletes its failed pods (a lost node's, say), so that they are
//!   replaced;
//! - RollingUpdate: creates pods of the current template while the total
//!   stays within replicas + maxSurge, and deletes pods of older templates
//!   while the available ones stay at least replicas - maxUnavailable
//!   (old pods that are not available go first, as they count for nothing);
//! - Recreate: deletes every old pod, then creates the new ones;
//! - scales to `replicas`, removing the least useful pods first (unbound,
//!   then not ready, then the youngest);
//! - writes the status (replicas, updated, ready, available, unavailable,
//!   observedGeneration, conditions Available and Progressing).
//!
//! Its own creates and deletes are recorded in the shared pod cache ahead
//! of their watch events, so that the next reconcile does not repeat them.
//! A write that fails ends the reconcile; the runtime tries it again after
//! a back-off.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use berth_api::pb;
use berth_api::time::now_rfc3339;
use berth_api::Object;
use berth_api::Reason;
use berth_client::connect::Connector;
use berth_client::controller::Action;
use berth_client::controller::Controller;
use berth_client::election::LeaderState;
use berth_client::objects::deployments;
use berth_client::reflector;
use berth_client::ClientKind;
use rand::Rng;

use super::written;
use super::Caches;
use super::Context as Ctx;
use super::Error;
use super::LazyCaches;

const NAME: &str = "deployments";
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const RESYNC: Duration = Duration::from_secs(5);

pub async fn run(conn: Connector, caches: LazyCaches, mut leader: LeaderState) {
    let Some(caches) = caches.when_active(&mut leader).await else {
        return;
    };
    Controller::new(NAME, caches.deployments.clone())
        .owns(caches.pods.clone())
        .resync_every(RESYNC)
        .gated_by(leader)
        .run(reconcile, Arc::new(Ctx { conn, caches }))
        .await
}

/// A stable hash of the pod template (its encoding is deterministic: maps
/// are ordered), as the `pod-template-hash` label.
pub fn template_hash(template: &pb::PodTemplateSpec) -> String {
    use prost::Message;
    // FNV-1a: stable across versions and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.encode_to_vec() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(10);
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

/// maxSurge or maxUnavailable as a count: "N" or "P%" of replicas, a
/// percentage rounded up for surge and down for unavailability.
pub fn resolve(value: &str, default: &str, replicas: i32, round_up: bool) -> i32 {
    let v = if value.is_empty() { default } else { value };
    match v.strip_suffix('%').map(str::parse::<i64>) {
        Some(Ok(p)) => {
            let scaled = i64::from(replicas) * p;
            let n = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            n.clamp(0, i64::from(i32::MAX)) as i32
        }
        _ => v.parse::<i32>().unwrap_or(0).max(0),
    }
}

pub(crate) fn is_ready(pod: &pb::Pod) -> bool {
    ready_since(pod).is_some()
}

fn ready_since(pod: &pb::Pod) -> Option<SystemTime> {
    let status = pod.status.as_ref()?;
    if status.phase != "Running" {
        return None;
    }
    let c = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready" && c.status == "True")?;
    Some(humantime::parse_rfc3339(&c.last_transition_time).unwrap_or(SystemTime::UNIX_EPOCH))
}

fn is_available(pod: &pb::Pod, min_ready: Duration) -> bool {
    ready_since(pod).is_some_and(|t| t.elapsed().unwrap_or_default() >= min_ready)
}

/// Lower sorts first: the pods to remove first when scaling down.
fn removal_rank(pod: &pb::Pod) -> (bool, bool, std::cmp::Reverse<String>) {
    let bound = pod.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
    let created = pod
        .metadata
        .as_ref()
        .map(|m| m.creation_timestamp.clone())
        .unwrap_or_default();
    (bound, is_ready(pod), std::cmp::Reverse(created))
}

fn new_pod(d: &pb::Deployment, hash: &str) -> pb::Pod {
    let meta = d.metadata.clone().unwrap_or_default();
    let template = d
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let suffix: String = {
        const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::rng();
        (0..5)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    let mut labels = tmeta.labels;
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            name: format!("{}-{hash}-{suffix}", meta.name),
            namespace: meta.namespace.clone(),
            labels,
            annotations: tmeta.annotations,
            owner_references: vec![pb::OwnerReference {
                api_version: <pb::Deployment as Object>::INFO.api_version.into(),
                kind: <pb::Deployment as Object>::INFO.kind.into(),
                name: meta.name,
                uid: meta.uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            ..Default::default()
        }),
        spec: template.spec,
        ..Default::default()
    }
}

async fn create(ctx: &Ctx, pod: pb::Pod) -> Result<(), Error> {
    let what = || format!("pod {}", reflector::key(&pod));
    let result = pb::Pod::create(ctx.conn.channel().await?, pod.clone()).await;
    let created = written(NAME, "create", what, result)?;
    ctx.caches.pods.assume(created);
    Ok(())
}

async fn delete(ctx: &Ctx, pod: &pb::Pod) -> Result<(), Error> {
    let m = pod.metadata.clone().unwrap_or_default();
    let req = pb::DeleteRequest {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        resource_version: String::new(),
    };
    let result = pb::Pod::delete(ctx.conn.channel().await?, req).await;
    match written(
        NAME,
        "delete",
        || format!("pod {}", reflector::key(pod)),
        result,
    ) {
        Err(e) if e.reason() != Some(Reason::NotFound) => return Err(e),
        _ => {}
    }
    ctx.caches.pods.forget(&reflector::key(pod));
    Ok(())
}

/// What a reconcile found and did, for the status.
struct Counts {
    active: i32,
    updated: i32,
    ready: i32,
    available: i32,
}

async fn reconcile(d: Arc<pb::Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let caches = &ctx.caches;
    let meta = d.metadata.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let hash = template_hash(&spec.template.clone().unwrap_or_default());
    let min_ready = Duration::from_secs(spec.min_ready_seconds.max(0) as u64);
    let owned = |caches: &Caches| -> Vec<Arc<pb::Pod>> {
        caches
            .pods
            .all()
            .into_iter()
            .filter(|p| {
                p.metadata.as_ref().is_some_and(|m| {
                    m.namespace == meta.namespace
                        && m.owner_references
                            .iter()
                            .any(|o| o.uid == meta.uid && o.controller == Some(true))
                })
            })
            .collect()
    };
    let pods = owned(caches);
    for p in pods
        .iter()
        .filter(|p| berth_api::resources::pod_is_terminal(p))
    {
        delete(&ctx, p).await?;
    }
    let is_new = |p: &pb::Pod| {
        p.metadata
            .as_ref()
            .and_then(|m| m.labels.get(TEMPLATE_HASH_LABEL))
            .is_some_and(|h| *h == hash)
    };
    let live: Vec<Arc<pb::Pod>> = pods
        .into_iter()
        .filter(|p| !berth_api::resources::pod_is_terminal(p))
        .collect();
    let (mut new, mut old): (Vec<_>, Vec<_>) = live.into_iter().partition(|p| is_new(p));
    if !spec.paused {
        let recreate = spec
            .strategy
            .as_ref()
            .is_some_and(|s| s.r#type == "Recreate");
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let mut surge = resolve(&rolling.max_surge, "25%", replicas, true);
        let unavailable = resolve(&rolling.max_unavailable, "25%", replicas, false);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        if recreate {
            // The API deletes at once; the agents stop the old containers
            // within their grace periods.
            for p in old.drain(..) {
                delete(&ctx, &p).await?;
            }
            surge = 0;
        }
        let room = replicas + surge - (new.len() + old.len()) as i32;
        let wanted_new = (new.len() as i32 + room.max(0)).min(replicas);
        for _ in new.len() as i32..wanted_new {
            create(&ctx, new_pod(&d, &hash)).await?;
        }
        if !old.is_empty() {
            scale_down_old(&ctx, &new, &mut old, replicas, unavailable, min_ready).await?;
        } else if new.len() as i32 > replicas {
            new.sort_by_key(|p| removal_rank(p));
            let extra = new.len() - replicas as usize;
            for p in new.drain(..extra) {
                delete(&ctx, &p).await?;
            }
        }
    }
    let now_owned = owned(caches);
    let live: Vec<&Arc<pb::Pod>> = now_owned
        .iter()
        .filter(|p| !berth_api::resources::pod_is_terminal(p))
        .collect();
    let counts = Counts {
        active: live.len() as i32,
        updated: live.iter().filter(|p| is_new(p)).count() as i32,
        ready: live.iter().filter(|p| is_ready(p)).count() as i32,
        available: live.iter().filter(|p| is_available(p, min_ready)).count() as i32,
    };
    write_status(&ctx, &d, replicas, counts).await?;
    // A pod ready but not yet available for minReadySeconds becomes
    // available without a change to look at.
    let next_available = live
        .iter()
        .filter_map(|p| ready_since(p))
        .filter_map(|since| min_ready.checked_sub(since.elapsed().unwrap_or_default()))
        .filter(|left| !left.is_zero())
        .min();
    Ok(next_available.map_or(Action::AwaitChange, Action::Requeue))
}

async fn scale_down_old(
    ctx: &Ctx,
    new: &[Arc<pb::Pod>],
    old: &mut Vec<Arc<pb::Pod>>,
    replicas: i32,
    max_unavailable: i32,
    min_ready: Duration,
) -> Result<(), Error> {
    let (unavailable_old, available_old): (Vec<_>, Vec<_>) =
        old.drain(..).partition(|p| !is_available(p, min_ready));
    for p in &unavailable_old {
        delete(ctx, p).await?;
    }
    let available_new = new.iter().filter(|p| is_available(p, min_ready)).count() as i32;
    let min_available = replicas - max_unavailable;
    let removable = (available_new + available_old.len() as i32 - min_available).max(0) as usize;
    let mut available_old = available_old;
    available_old.sort_by_key(|p| removal_rank(p));
    for p in available_old.iter().take(removable) {
        delete(ctx, p).await?;
    }
    Ok(())
}

async fn write_status(
    ctx: &Ctx,
    d: &pb::Deployment,
    replicas: i32,
    c: Counts,
) -> Result<(), Error> {
    let meta = d.metadata.clone().unwrap_or_default();
    let old = d.status.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let max_unavailable = resolve(&rolling.max_unavailable, "25%", replicas, false);
    let complete = c.updated == replicas && c.active == replicas && c.available == replicas;
    let available = c.available >= replicas - max_unavailable;
    let cond = |kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let kept = old
            .conditions
            .iter()
            .find(|x| x.r#type == kind && x.status == status && x.reason == reason);
        let now = now_rfc3339();
        pb::Condition {
            r#type: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: kept.map_or(now.clone(), |k| k.last_transition_time.clone()),
            last_update_time: kept.map_or(now, |k| k.last_update_time.clone()),
            ..Default::default()
        }
    };
    let status = pb::DeploymentStatus {
        observed_generation: meta.generation,
        replicas: c.active,
        updated_replicas: c.updated,
        ready_replicas: c.ready,
        available_replicas: c.available,
        unavailable_replicas: (replicas - c.available).max(0),
        conditions: vec![
            if available {
                cond(
                    "Available",
                    true,
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                )
            } else {
                cond(
                    "Available",
                    false,
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                )
            },
            if complete {
                cond(
                    "Progressing",
                    true,
                    "NewReplicaSetAvailable",
                    format!("Deployment {:?} has successfully progressed.", meta.name),
                )
            } else {
                cond(
                    "Progressing",
                    true,
                    "ReplicaSetUpdated",
                    format!("Deployment {:?} is progressing.", meta.name),
                )
            },
        ],
    };
    if d.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut next = d.clone();
    next.status = Some(status);
    let result = deployments::update_status(ctx.conn.channel().await?, next).await;
    match written(
        NAME,
        "update_status",
        || format!("deployment {}", reflector::key(d)),
        result,
    ) {
        // A newer deployment is on its way through the watch.
        Err(e) if e.reason() == Some(Reason::Conflict) => Ok(()),
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailability_resolve_as_in_kubernetes() {
        let table = [
            ("", "25%", 10, true, 3),
            ("", "25%", 10, false, 2),
            ("25%", "", 1, true, 1),
            ("25%", "", 1, false, 0),
            ("2", "25%", 10, true, 2),
            ("0", "25%", 10, false, 0),
            ("100%", "", 3, false, 3),
            ("junk", "", 3, false, 0),
        ];
        for (value, default, replicas, up, want) in table {
            assert_eq!(
                resolve(value, default, replicas, up),
                want,
                "{value:?} of {replicas}"
            );
        }
    }

    #[test]
    fn template_hashes_are_stable_and_follow_the_template() {
        let mut t = pb::PodTemplateSpec::default();
        t.metadata
            .get_or_insert_default()
            .labels
            .insert("app".into(), "web".into());
        t.metadata
            .get_or_insert_default()
            .labels
            .insert("tier".into(), "front".into());
        let a = template_hash(&t);
        assert_eq!(a, template_hash(&t.clone()));
        assert_eq!(a.len(), 10);
        t.spec.get_or_insert_default().restart_policy = "Always".into();
        assert_ne!(a, template_hash(&t));
    }

    #[test]
    fn scale_down_removes_unbound_then_unready_then_youngest() {
        let pod = |name: &str, node: &str, ready: bool, created: &str| pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                creation_timestamp: created.into(),
                ..Default::default()
            }),
            spec: Some(pb::PodSpec {
                node_name: node.into(),
                ..Default::default()
            }),
            status: ready.then(|| pb::PodStatus {
                phase: "Running".into(),
                conditions: vec![pb::Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pods = [
            pod("ready-old", "n1", true, "2026-01-01T00:00:00Z"),
            pod("ready-young", "n1", true, "2026-01-02T00:00:00Z"),
            pod("unready", "n1", false, "2026-01-01T00:00:00Z"),
            pod("unbound", "", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(removal_rank);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.as_ref().unwrap().name.clone())
            .collect();
        assert_eq!(names, ["unbound", "unready", "ready-young", "ready-old"]);
    }
}
