//! End-to-end tests of scheduling against three real controllers: the
//! state machine's bind rules, fencing of a paused scheduler, two
//! schedulers active at once, and unschedulable pods.

use std::collections::HashMap;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_testkit::eventually;
use berth_testkit::objects::get_req;
use berth_testkit::objects::node;
use berth_testkit::objects::pod;
use berth_testkit::Cluster;
use berth_testkit::Scheduler;
use berth_testkit::SchedulerFlags;
use berth_testkit::ServerFlags;
use nix::sys::signal::Signal;
use tonic::transport::Channel;
use tonic::Code;

fn no_scheduler() -> ServerFlags {
    ServerFlags {
        no_scheduler: true,
        ..Default::default()
    }
}

/// A Ready node with `cpu` cores and room for `pods` pods.
fn sized_node(name: &str, cpu: &str, pods: &str) -> pb::Node {
    node(name)
        .allocatable(&[("cpu", cpu), ("pods", pods)])
        .build()
}

/// A pod in `default` that asks for `cpu`.
fn cpu_pod(name: &str, cpu: &str) -> pb::Pod {
    pod(name).requests(&[("cpu", cpu)]).build()
}

async fn pods(ch: &Channel) -> Vec<pb::Pod> {
    let req = pb::ListRequest {
        namespace: "default".into(),
        ..Default::default()
    };
    pb::Pod::list(ch.clone(), req).await.expect("list pods").0
}

async fn bound(ch: &Channel) -> usize {
    pods(ch)
        .await
        .iter()
        .filter(|p| !p.node_name().is_empty())
        .count()
}

fn bind(name: &str, node: &str, epoch: u64) -> pb::BindRequest {
    pb::BindRequest {
        namespace: "default".into(),
        name: name.into(),
        node_name: node.into(),
        epoch,
    }
}

async fn lease(ch: &Channel) -> Option<pb::Lease> {
    pb::Lease::get(ch.clone(), get_req("berth-system", "berth-scheduler"))
        .await
        .ok()
}

/// A standalone scheduler `id` with `flags`.
fn scheduler(
    cluster: &Cluster,
    root: &std::path::Path,
    id: &str,
    flags: SchedulerFlags,
) -> Scheduler {
    let flags = SchedulerFlags {
        id: Some(id.into()),
        ..flags
    };
    Scheduler::start(cluster, root, flags).expect("start berth scheduler")
}

/// Binds the store answered with this result, as a scheduler counted them.
async fn binds(s: &Scheduler, result: &str) -> u64 {
    s.metric(&format!(
        "berth_scheduler_binds_total{{result=\"{result}\"}}"
    ))
    .await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_machine_refuses_binds_that_break_the_rules() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), no_scheduler()).await;
    let ch = cluster.channel().await;
    let binds = |reqs: Vec<pb::BindRequest>, epoch: u64| {
        let ch = ch.clone();
        async move {
            let req = pb::BindBatchRequest { epoch, binds: reqs };
            berth::objects::pods::bind_batch(ch, req)
                .await
                .unwrap()
                .results
        }
    };
    pb::Node::create(ch.clone(), sized_node("n1", "1", "3"))
        .await
        .unwrap();
    let mut not_ready = sized_node("sick", "8", "10");
    not_ready.status.as_mut().unwrap().conditions[0].status = "False".into();
    pb::Node::create(ch.clone(), not_ready).await.unwrap();
    let mut cordoned = sized_node("cordoned", "8", "10");
    cordoned.spec.get_or_insert_default().unschedulable = true;
    pb::Node::create(ch.clone(), cordoned).await.unwrap();
    for (name, cpu) in [
        ("a", "600m"),
        ("b", "600m"),
        ("c", "300m"),
        ("d", "100m"),
        ("e", "0"),
    ] {
        pb::Pod::create(ch.clone(), cpu_pod(name, cpu))
            .await
            .unwrap();
    }
    // Without a lease the epoch is 0. a and b race in one batch: the
    // node's 1 cpu takes exactly one of them.
    let r = binds(vec![bind("a", "n1", 0), bind("b", "n1", 0)], 0).await;
    let oks: Vec<bool> = r.iter().map(|r| r.code == 0).collect();
    assert_eq!(oks.iter().filter(|ok| **ok).count(), 1, "{r:?}");
    let loser = r.iter().find(|r| r.code != 0).unwrap();
    assert_eq!(loser.reason, "insufficient", "{r:?}");
    assert!(loser.message.contains("Insufficient cpu"), "{loser:?}");
    let winner = if oks[0] { "a" } else { "b" };
    let r = binds(
        vec![
            bind(winner, "n1", 0),
            bind("c", "sick", 0),
            bind("c", "cordoned", 0),
            bind("c", "nowhere", 0),
            bind("ghost", "n1", 0),
        ],
        0,
    )
    .await;
    let reasons: Vec<&str> = r.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "already_bound",
            "node_not_ready",
            "node_unschedulable",
            "node_not_found",
            "pod_not_found"
        ],
        "{r:?}"
    );
    // c (300m) and d (100m) fill the cpu; e asks for no cpu but finds the
    // node's three pod slots taken.
    let r = binds(vec![bind("c", "n1", 0), bind("d", "n1", 0)], 0).await;
    assert!(r.iter().all(|r| r.code == 0), "{r:?}");
    let r = binds(vec![bind("e", "n1", 0)], 0).await;
    assert_eq!(r[0].reason, "insufficient", "{r:?}");
    assert!(r[0].message.contains("Too many pods"), "{r:?}");

    // Once a scheduler holds the lease, only its epoch binds.
    let mut l = pb::Lease::default();
    l.meta_mut().name = "berth-scheduler".into();
    l.meta_mut().namespace = "berth-system".into();
    l.spec = Some(pb::LeaseSpec {
        holder_identity: "someone".into(),
        lease_transitions: Some(3),
        ..Default::default()
    });
    pb::Lease::create(ch.clone(), l).await.unwrap();
    pb::Pod::create(ch.clone(), cpu_pod("f", "100m"))
        .await
        .unwrap();
    pb::Node::create(ch.clone(), sized_node("n2", "1", "3"))
        .await
        .unwrap();
    let stale = pb::pods_client::PodsClient::new(ch.clone())
        .bind(bind("f", "n2", 2))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("epoch 2"), "{stale:?}");
    let placed = pb::pods_client::PodsClient::new(ch.clone())
        .bind(bind("f", "n2", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(placed.node_name(), "n2");

    // A lease's epoch never goes down, and a new holder must raise it.
    let mut back = lease(&ch).await.unwrap();
    back.spec.as_mut().unwrap().lease_transitions = Some(2);
    let e = pb::Lease::update(ch.clone(), back).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut sneaky = lease(&ch).await.unwrap();
    sneaky.spec.as_mut().unwrap().holder_identity = "me".into();
    let e = pb::Lease::update(ch.clone(), sneaky).await.unwrap_err();
    assert!(e.message().contains("raise spec.leaseTransitions"), "{e:?}");
    // A bound pod's requests cannot grow behind the node's back.
    let mut grown = pb::Pod::get(ch.clone(), get_req("default", "f"))
        .await
        .unwrap();
    grown.spec.as_mut().unwrap().containers[0].resources = Some(pb::ResourceRequirements {
        requests: [("cpu".to_string(), "4".to_string())].into(),
        limits: Default::default(),
    });
    let e = pb::Pod::update(ch.clone(), grown).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unschedulable_pods_say_why_and_are_placed_when_room_appears() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    // Controllers run their schedulers by default.
    let cluster = Cluster::ready(root.path(), ServerFlags::default()).await;
    let ch = cluster.channel().await;
    pb::Node::create(ch.clone(), sized_node("small-1", "1", "10"))
        .await
        .unwrap();
    pb::Node::create(ch.clone(), sized_node("small-2", "1", "10"))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), cpu_pod("big", "2"))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), cpu_pod("little", "500m"))
        .await
        .unwrap();
    let want = "0/2 nodes are available: 2 Insufficient cpu.";
    eventually(
        "pod big is marked unschedulable",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move {
                let p = pb::Pod::get(ch, get_req("default", "big")).await.unwrap();
                p.status.unwrap_or_default().conditions.iter().any(|c| {
                    c.r#type == "PodScheduled"
                        && c.status == "False"
                        && c.reason == "Unschedulable"
                        && c.message == want
                })
            }
        },
    )
    .await;
    // The pod that fits is not held up behind the one that does not; its
    // bind may land just after big's status, as the two are written apart.
    eventually(
        "pod little is bound to a small node",
        Duration::from_secs(10),
        || {
            let ch = ch.clone();
            async move {
                let p = pb::Pod::get(ch, get_req("default", "little"))
                    .await
                    .unwrap();
                p.node_name().starts_with("small-")
            }
        },
    )
    .await;
    let out = cluster
        .cli()
        .args(["describe", "pod", "big"])
        .output()
        .unwrap();
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(described.contains(want), "{described}");

    pb::Node::create(ch.clone(), sized_node("large", "4", "10"))
        .await
        .unwrap();
    eventually(
        "pod big is placed on the new node",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move {
                let p = pb::Pod::get(ch, get_req("default", "big")).await.unwrap();
                p.node_name() == "large"
            }
        },
    )
    .await;
    let p = pb::Pod::get(ch.clone(), get_req("default", "big"))
        .await
        .unwrap();
    let scheduled = p.status.unwrap().conditions;
    assert!(
        scheduled
            .iter()
            .any(|c| c.r#type == "PodScheduled" && c.status == "True"),
        "{scheduled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_scheduler_past_its_lease_places_nothing() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), no_scheduler()).await;
    let ch = cluster.channel().await;
    let a = scheduler(
        &cluster,
        root.path(),
        "sched-a",
        SchedulerFlags {
            lease_duration: Some(Duration::from_secs(2)),
            renew_interval: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    eventually("sched-a holds the lease", Duration::from_secs(20), || {
        let ch = ch.clone();
        async move {
            lease(&ch)
                .await
                .is_some_and(|l| l.spec.unwrap().holder_identity == "sched-a")
        }
    })
    .await;
    pb::Node::create(ch.clone(), sized_node("n1", "8", "100"))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), cpu_pod("before", "100m"))
        .await
        .unwrap();
    eventually("sched-a places a pod", Duration::from_secs(20), || {
        let ch = ch.clone();
        async move { bound(&ch).await == 1 }
    })
    .await;
    let epoch_a = berth_api::resources::lease_epoch(&lease(&ch).await.unwrap());

    a.process.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another scheduler takes the expired lease over (as sched-b would).
    let mut taken = lease(&ch).await.unwrap();
    let spec = taken.spec.as_mut().unwrap();
    spec.holder_identity = "sched-b".into();
    spec.lease_transitions = Some(epoch_a as i32 + 1);
    pb::Lease::update(ch.clone(), taken).await.unwrap();
    // ... and keeps renewing it, so that sched-a cannot take it back.
    let renewing = {
        let ch = ch.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut l = lease(&ch).await.unwrap();
                l.spec.as_mut().unwrap().renew_time =
                    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
                let _ = pb::Lease::update(ch.clone(), l).await;
            }
        })
    };
    for i in 0..20 {
        pb::Pod::create(ch.clone(), cpu_pod(&format!("p{i}"), "100m"))
            .await
            .unwrap();
    }
    a.process.signal(Signal::SIGCONT);
    // sched-a wakes with 20 pending pods and its old epoch.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        bound(&ch).await,
        1,
        "the paused scheduler placed pods after losing its lease"
    );
    assert_eq!(binds(&a, "ok").await, 1);
    // Whatever it sends with its old epoch is refused by the state machine.
    let stale = pb::pods_client::PodsClient::new(ch.clone())
        .bind(bind("p0", "n1", epoch_a))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("lost its lease"), "{stale:?}");
    assert_eq!(bound(&ch).await, 1);
    // Once sched-b stops renewing, sched-a takes the lease back, with a new
    // epoch, and places the pods.
    renewing.abort();
    eventually(
        "sched-a places the pods after taking the lease back",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move { bound(&ch).await == 21 }
        },
    )
    .await;
    let l = lease(&ch).await.unwrap();
    assert_eq!(berth_api::resources::lease_epoch(&l), epoch_a + 2);
    assert_eq!(l.spec.unwrap().holder_identity, "sched-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_active_schedulers_never_overcommit_or_place_a_pod_twice() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), no_scheduler()).await;
    let ch = cluster.channel().await;
    // 10 nodes with room for 5 pods of 200m each: 50 places for 80 pods.
    for i in 0..10 {
        pb::Node::create(ch.clone(), sized_node(&format!("n{i}"), "1", "10"))
            .await
            .unwrap();
    }
    let force = SchedulerFlags {
        force_active: true,
        ..Default::default()
    };
    let one = scheduler(&cluster, root.path(), "one", force.clone());
    let two = scheduler(&cluster, root.path(), "two", force);
    // Both are active and watching once both have tried a pod that fits
    // nowhere; the pods created after that reach both at once.
    let mut probe = cpu_pod("probe", "100m");
    probe.spec.as_mut().unwrap().node_selector =
        [("fits".to_string(), "nowhere".to_string())].into();
    pb::Pod::create(ch.clone(), probe).await.unwrap();
    let unschedulable = "berth_scheduler_attempts_total{result=\"unschedulable\"}";
    eventually(
        "both schedulers are active",
        Duration::from_secs(20),
        || async { one.metric(unschedulable).await > 0.0 && two.metric(unschedulable).await > 0.0 },
    )
    .await;
    // Record every placement as the store reports it.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let conn = berth_client::connect::Connector::new(cluster.addrs(), cluster.transport()).unwrap();
    let scope = berth_client::watcher::Scope {
        namespace: "default".into(),
        ..Default::default()
    };
    let watcher = tokio::spawn(berth_client::watcher::run::<pb::Pod>(conn, scope, tx));
    let creates: Vec<_> = (0..80)
        .map(|i| pb::Pod::create(ch.clone(), cpu_pod(&format!("p{i}"), "200m")))
        .collect();
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    eventually("50 pods are placed", Duration::from_secs(30), || {
        let ch = ch.clone();
        async move { bound(&ch).await == 50 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut placed: HashMap<String, String> = HashMap::new();
    while let Ok(change) = rx.try_recv() {
        let items = match change {
            berth_client::watcher::Change::Listed(items) => items,
            berth_client::watcher::Change::Applied(p) => vec![p],
            berth_client::watcher::Change::Deleted(_) => continue,
        };
        for p in items.into_iter().filter(|p| !p.node_name().is_empty()) {
            let was = placed.insert(p.name().to_string(), p.node_name().to_string());
            assert!(was.is_none_or(|n| n == p.node_name()), "{} moved", p.name());
        }
    }
    watcher.abort();
    assert_eq!(placed.len(), 50);
    let mut per_node: HashMap<&str, u32> = HashMap::new();
    for n in placed.values() {
        *per_node.entry(n).or_default() += 1;
    }
    assert!(per_node.values().all(|&n| n == 5), "{per_node:?}");
    assert_eq!(bound(&ch).await, 50, "nothing more was placed");
    let (ok1, ok2) = (binds(&one, "ok").await, binds(&two, "ok").await);
    assert_eq!(ok1 + ok2, 50);
    let refused = binds(&one, "already_bound").await
        + binds(&two, "already_bound").await
        + binds(&one, "insufficient").await
        + binds(&two, "insufficient").await;
    assert!(
        refused > 0,
        "both schedulers raced for the same pods ({ok1} + {ok2} placed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_needs_no_more_than_the_system_kube_scheduler_role() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), no_scheduler()).await;
    let ch = cluster.channel().await;
    pb::Node::create(ch.clone(), sized_node("n1", "1", "10"))
        .await
        .unwrap();
    // Kubernetes' name for it, which the built-in binding names.
    let (conf, transport) = cluster.user(root.path(), "system:kube-scheduler", &[]);
    let flags = SchedulerFlags {
        credentials: Some(conf),
        ..Default::default()
    };
    let _scheduler = scheduler(&cluster, root.path(), "least-privilege", flags);
    pb::Pod::create(ch.clone(), cpu_pod("fits", "500m"))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), cpu_pod("big", "2"))
        .await
        .unwrap();
    eventually(
        "the pod that fits is bound",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move { bound(&ch).await == 1 }
        },
    )
    .await;
    eventually(
        "the one that does not says why",
        Duration::from_secs(20),
        || {
            let ch = ch.clone();
            async move {
                let p = pb::Pod::get(ch, get_req("default", "big")).await.unwrap();
                p.status
                    .unwrap_or_default()
                    .conditions
                    .iter()
                    .any(|c| c.reason == "Unschedulable")
            }
        },
    )
    .await;
    // And it is a scheduler, nothing more: it makes no pods.
    let own = berth_client::connect::connect(&cluster.addrs(), &transport)
        .await
        .unwrap()
        .1;
    let err = pb::Pod::create(own, cpu_pod("planted", "100m"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}
