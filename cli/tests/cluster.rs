//! End-to-end tests of the replicated store: three (or four) controllers as
//! real `berth server` processes on 127.0.0.1 with real RocksDB data dirs,
//! broken with SIGKILL, SIGSTOP and wiped data dirs.

use berth_client::Transport;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use berth_client::connect::Connector;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::cluster::WatchLeaderRequest;
use berth_proto::kv::kv_client::KvClient;
use berth_testkit::eventually;
use berth_testkit::flags::Membership;
use berth_testkit::flags::ServerCommand;
use berth_testkit::rpc;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(5);

/// `n` controllers with `flags` that bootstrap one cluster (not waited
/// for).
fn start(root: &std::path::Path, n: u64, flags: ServerFlags) -> Cluster {
    let binary = berth_testkit::berth_binary();
    Cluster::start(&binary, root, n, ClusterOptions::for_tests(flags))
}

async fn leader_of(cluster: &Cluster, among: &[u64]) -> u64 {
    cluster
        .wait_for_leader(among, Duration::from_secs(20))
        .await
        .expect("the controllers agree on a leader")
}

/// SIGKILLs `leader` of three controllers and returns the one the other
/// two elect in its place.
async fn kill_leader(cluster: &mut Cluster, leader: u64) -> u64 {
    cluster.kill(leader);
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    cluster
        .wait_for_leader_other_than(&survivors, Some(leader), Duration::from_secs(20))
        .await
        .expect("the survivors elect a new leader")
}

/// Acknowledged writes, key -> value.
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writers that put unique keys through every address in turn until
/// stopped, recording what was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    acked: Acked,
}

impl Load {
    fn start(transport: Transport, addrs: Vec<String>, writers: usize, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let handles = (0..writers)
            .map(|w| {
                let (addrs, stop, acked) = (addrs.clone(), stop.clone(), acked.clone());
                let transport = transport.clone();
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    let mut target = w;
                    while !stop.load(Ordering::Relaxed) {
                        let addr = &addrs[target % addrs.len()];
                        let Some(mut kv) = rpc::kv(&transport, addr).await else {
                            target += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let key = format!("{prefix}/{w}/{i}");
                            let value = format!("v{i}");
                            i += 1;
                            match rpc::put(&mut kv, &key, value.as_bytes(), T).await {
                                Ok(_) => {
                                    acked.lock().unwrap().insert(key, value);
                                }
                                Err(_) => {
                                    target += 1;
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            handles,
            acked,
        }
    }

    async fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} writes acknowledged",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every acknowledged write is present at `addr` (linearizable reads).
async fn assert_all_present(cluster: &Cluster, id: u64, acked: &BTreeMap<String, String>) {
    assert!(!acked.is_empty(), "the load acknowledged no write");
    let mut kv = rpc::kv(&cluster.controller_transport(), &cluster.addr(id))
        .await
        .expect("connect");
    for (key, value) in acked {
        let got = rpc::get(&mut kv, key, false, T).await.expect("read");
        let got = got.map(|kv| String::from_utf8(kv.value).unwrap());
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost at controller {id}"
        );
    }
}

/// Waits until controller `addr`'s own state (serializable reads) has
/// every acknowledged write.
async fn assert_caught_up(cluster: &Cluster, id: u64, acked: &BTreeMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let transport = cluster.controller_transport();
    let addr = cluster.addr(id);
    let mut kv = loop {
        if let Some(kv) = rpc::kv(&transport, &addr).await {
            break kv;
        }
        assert!(Instant::now() < deadline, "{addr} never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (key, value) in acked {
        loop {
            let got = rpc::get(&mut kv, key, true, T).await.ok().flatten();
            if got.map(|kv| kv.value) == Some(value.clone().into_bytes()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} did not catch up with {key}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_member_are_readable_from_every_member() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = start(root.path(), 3, ServerFlags::default());
    leader_of(&cluster, &[1, 2, 3]).await;
    let mut acked = BTreeMap::new();
    for id in 1..=3u64 {
        let mut kv = rpc::kv(&cluster.controller_transport(), &cluster.addr(id))
            .await
            .unwrap();
        for i in 0..20 {
            let key = format!("via-{id}/{i}");
            rpc::put(&mut kv, &key, b"x", T)
                .await
                .expect("write through a member");
            acked.insert(key, "x".to_string());
        }
    }
    for id in 1..=3u64 {
        assert_all_present(&cluster, id, &acked).await;
    }
    // Revisions are global and rise with every write.
    let mut kv = rpc::kv(&cluster.controller_transport(), &cluster.addr(2))
        .await
        .unwrap();
    let r1 = rpc::put(&mut kv, "rev", b"1", T).await.unwrap();
    let r2 = rpc::put(&mut kv, "rev", b"2", T).await.unwrap();
    assert_eq!(r2, r1 + 1);
}

/// Writes through `conn` until one is acknowledged and the connection is
/// on `want`, failing after 20 s.
async fn until_connected_to(conn: &Connector, want: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let written = match conn.channel().await {
            Ok(ch) => match rpc::put(&mut KvClient::new(ch), key, b"x", T).await {
                Ok(_) => true,
                Err(s) => {
                    conn.failed(&s).await;
                    false
                }
            },
            Err(_) => false,
        };
        let at = conn.addr().await;
        if written && at.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the client is on {at:?}, not on the leader {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_given_a_follower_moves_to_the_leader_and_follows_it() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path(), 3, ServerFlags::default());
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // A follower announces the leader with the address clients can use.
    let channel = cluster.channel_to(follower).await;
    let mut updates = ClusterClient::new(channel)
        .watch_leader(WatchLeaderRequest {})
        .await
        .expect("watch the leader")
        .into_inner();
    let first = updates.message().await.unwrap().expect("a first update");
    assert_eq!(first.leader, Some(leader));
    assert_eq!(first.addr, cluster.addr(leader));

    // Given only the follower's address, the client ends up on the leader.
    // Its writes go to the raw KV store, which is for controllers.
    let transport = cluster.controller_transport();
    let conn = Connector::new(vec![cluster.addr(follower)], transport).unwrap();
    until_connected_to(&conn, &cluster.addr(leader), "follow/1").await;

    // The leader dies: the follower's stream names the new one, and the
    // client, back on the follower it was given, moves there too.
    let new_leader = kill_leader(&mut cluster, leader).await;
    loop {
        let update = tokio::time::timeout(Duration::from_secs(20), updates.message())
            .await
            .expect("an update within 20 s")
            .expect("the stream stays open")
            .expect("the follower still serves it");
        if update.leader == Some(new_leader) {
            assert_eq!(update.addr, cluster.addr(new_leader));
            break;
        }
    }
    until_connected_to(&conn, &cluster.addr(new_leader), "follow/2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path(), 3, ServerFlags::default());
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    let load = Load::start(cluster.controller_transport(), cluster.addrs(), 8, "kill");
    load.wait_for(200).await;
    let new_leader = kill_leader(&mut cluster, leader).await;
    let before = load.count();
    load.wait_for(before + 200).await;
    cluster.spawn(leader);
    let acked = load.stop().await;
    assert_all_present(&cluster, new_leader, &acked).await;
    assert_caught_up(&cluster, leader, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_rejoins_through_a_snapshot() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let flags = ServerFlags {
        snapshot_logs: Some(100),
        logs_to_keep: Some(10),
        ..Default::default()
    };
    let mut cluster = start(root.path(), 3, flags);
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let load = Load::start(
        cluster.controller_transport(),
        vec![cluster.addr(leader)],
        4,
        "wipe",
    );
    load.wait_for(300).await;
    cluster.kill(follower);
    cluster.wipe(follower);
    let before = load.count();
    // Enough entries for snapshots on the others to purge past the wiped
    // follower's last position.
    load.wait_for(before + 500).await;
    cluster.spawn(follower);
    let after = load.count();
    load.wait_for(after + 100).await;
    let acked = load.stop().await;
    assert_caught_up(&cluster, follower, &acked).await;
    let metrics = cluster.metrics_addr(follower);
    assert!(
        rpc::metric(&metrics, "berth_raft_snapshots_installed_total").await >= 1.0,
        "the wiped follower should have caught up through a snapshot"
    );
    let status = rpc::status(&cluster.transport(), &cluster.addr(leader))
        .await
        .unwrap();
    let voters = status.members.iter().filter(|m| m.voter).count();
    assert_eq!(
        voters, 3,
        "the rejoined follower is a voter again: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_added_and_removed_while_writes_continue() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path(), 3, ServerFlags::default());
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    let load = Load::start(
        cluster.controller_transport(),
        cluster.addrs(),
        4,
        "members",
    );
    load.wait_for(100).await;
    cluster.add_joining(4, leader);
    // Controller 4's own view: it follows a leader in a 4-voter config.
    let four = cluster.addr(4);
    let transport = cluster.transport();
    eventually(
        "controller 4 is a voter",
        Duration::from_secs(60),
        || async {
            let s = rpc::status(&transport, &four).await;
            s.is_some_and(|s| {
                s.leader.is_some() && s.members.iter().filter(|m| m.voter).count() == 4
            })
        },
    )
    .await;
    // Remove the leader itself through the CLI.
    let out = std::process::Command::new(berth_testkit::berth_binary())
        .arg("--config")
        .arg(cluster.admin_conf())
        .args([
            "--server",
            &cluster.addr(4),
            "cluster",
            "remove-member",
            &leader.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "remove-member failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remaining: Vec<u64> = (1..=4).filter(|i| *i != leader).collect();
    let new_leader = cluster
        .wait_for_leader_other_than(&remaining, Some(leader), Duration::from_secs(20))
        .await
        .expect("the remaining controllers elect a new leader");
    let before = load.count();
    load.wait_for(before + 100).await;
    let acked = load.stop().await;
    assert_all_present(&cluster, new_leader, &acked).await;
    assert_caught_up(&cluster, 4, &acked).await;
    let out = std::process::Command::new(berth_testkit::berth_binary())
        .arg("--config")
        .arg(cluster.admin_conf())
        .args([
            "--server",
            &cluster.addr(new_leader),
            "cluster",
            "status",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(
        !ids.contains(&leader) && ids.len() == 3,
        "members after removal: {v}"
    );
    assert_eq!(v["leader"].as_u64(), Some(new_leader));
    cluster.kill(leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_fail_fast_with_unavailable_and_nothing_is_lost() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let flags = ServerFlags {
        request_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let cluster = start(root.path(), 3, flags);
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    let load = Load::start(cluster.controller_transport(), cluster.addrs(), 4, "pause");
    load.wait_for(100).await;
    let acked_before = load.stop().await;
    // Pause the leader and one follower; the last controller has no quorum.
    let paused: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).find(|i| *i != leader))
        .collect();
    let alone = (1..=3).find(|i| !paused.contains(i)).unwrap();
    for id in &paused {
        cluster.signal(*id, Signal::SIGSTOP);
    }
    let mut kv = rpc::kv(&cluster.controller_transport(), &cluster.addr(alone))
        .await
        .unwrap();
    for attempt in 0..3 {
        let started = Instant::now();
        let err = rpc::put(
            &mut kv,
            &format!("noquorum/{attempt}"),
            b"x",
            Duration::from_secs(30),
        )
        .await
        .expect_err("a write without a quorum must fail");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let err = rpc::get(&mut kv, "pause/0/0", false, Duration::from_secs(30))
            .await
            .expect_err("a linearizable read without a quorum must fail");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    for id in &paused {
        cluster.signal(*id, Signal::SIGCONT);
    }
    let load = Load::start(
        cluster.controller_transport(),
        cluster.addrs(),
        4,
        "resumed",
    );
    load.wait_for(100).await;
    let acked_after = load.stop().await;
    let new_leader = leader_of(&cluster, &[1, 2, 3]).await;
    assert_all_present(&cluster, new_leader, &acked_before).await;
    assert_all_present(&cluster, alone, &acked_after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_every_controller_during_writes_loses_no_acknowledged_write() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = start(root.path(), 3, ServerFlags::default());
    leader_of(&cluster, &[1, 2, 3]).await;
    let load = Load::start(cluster.controller_transport(), cluster.addrs(), 8, "all");
    load.wait_for(300).await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    let acked = load.stop().await;
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = leader_of(&cluster, &[1, 2, 3]).await;
    assert_all_present(&cluster, leader, &acked).await;
    for id in 1..=3u64 {
        assert_caught_up(&cluster, id, &acked).await;
    }
}

/// Runs controller 1 of `peers` on `listen` with `dir`, which must refuse
/// to start: its output once it has exited.
async fn server_that_must_exit(
    listen: &str,
    peers: Vec<(u64, String)>,
    dir: &std::path::Path,
) -> std::process::Output {
    let command = ServerCommand {
        id: 1,
        listen: listen.into(),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        membership: Membership::Peers(peers),
        token: None,
        flags: ServerFlags::default(),
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(berth_testkit::berth_binary())
            .args(command.args())
            .output(),
    )
    .await
    .expect("the controller exits instead of serving")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_from_another_cluster_is_refused_at_start() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = start(root.path(), 3, ServerFlags::default());
    leader_of(&cluster, &[1, 2, 3]).await;

    // A one-controller cluster of its own, then stopped.
    let other = tempfile::tempdir().unwrap();
    let mut single = start(other.path(), 1, ServerFlags::default());
    leader_of(&single, &[1]).await;
    let dir = single.data_dir(1).to_path_buf();
    single.kill(1);

    let listen = format!("127.0.0.1:{}", berth_testkit::free_port());
    let peers = vec![
        (1, listen.clone()),
        (2, cluster.addr(2)),
        (3, cluster.addr(3)),
    ];
    let out = server_that_must_exit(&listen, peers, &dir).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Its CA did not issue the peers' certificates.
    assert!(stderr.contains("belongs to another cluster"), "{stderr}");
}

/// Five tries, because the abort this guards against (RocksDB's threads
/// still running as the process left) came about one start in five.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_in_use_is_refused_before_the_data_dir_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    for attempt in 0..5 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let out = server_that_must_exit(&listen, vec![(1, listen.clone())], &dir).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {stderr}");
        assert!(
            stderr.contains(&format!("could not listen on {listen}"))
                && stderr.contains("another process"),
            "{stderr}"
        );
        assert!(!dir.exists(), "the data dir was created: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_with_clear_errors() {
    use berth_proto::kv as pb;
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = start(root.path(), 3, ServerFlags::default());
    leader_of(&cluster, &[1, 2, 3]).await;
    let mut kv = rpc::kv(&cluster.controller_transport(), &cluster.addr(1))
        .await
        .unwrap();

    let err = rpc::put(&mut kv, "", b"x", T).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // API objects are written through the API only, which validates them.
    for key in ["/registry/pods/default/p", "/registry"] {
        let err = rpc::put(&mut kv, key, b"x", T).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("berth.v1 API"), "{err:?}");
    }
    assert!(rpc::put(&mut kv, "/registryish", b"x", T).await.is_ok());
    let big = vec![0u8; 2 << 20];
    let err = rpc::put(&mut kv, "big", &big, T).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let huge = vec![0u8; berth_api::limits::MAX_REQUEST_BYTES + (1 << 20)];
    let err = rpc::put(&mut kv, "huge", &huge, T).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );

    // Create-only and compare-and-set.
    let create = |key: &str, rev: Option<u64>| pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        precondition: Some(pb::Precondition {
            condition: Some(match rev {
                None => pb::precondition::Condition::Absent(true),
                Some(r) => pb::precondition::Condition::ModRevision(r),
            }),
        }),
    };
    let rev = kv
        .put(create("cas", None))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let err = kv.put(create("cas", None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let err = kv.put(create("cas", Some(rev + 100))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(err.message().contains("read it again"), "{}", err.message());
    kv.put(create("cas", Some(rev)))
        .await
        .expect("CAS at the current revision");

    // A failed transaction changes nothing.
    let txn = pb::TxnRequest {
        ops: vec![
            pb::Op {
                op: Some(pb::op::Op::Put(pb::PutRequest {
                    key: b"t1".to_vec(),
                    value: b"1".to_vec(),
                    precondition: None,
                })),
            },
            pb::Op {
                op: Some(pb::op::Op::Put(create("cas", None))),
            },
        ],
    };
    assert_eq!(
        kv.txn(txn).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    assert!(rpc::get(&mut kv, "t1", false, T).await.unwrap().is_none());

    // A watch resumes from a revision and sees every later change in order.
    let first = rpc::put(&mut kv, "w/a", b"1", T).await.unwrap();
    rpc::put(&mut kv, "w/b", b"2", T).await.unwrap();
    let mut watch = rpc::kv(&cluster.controller_transport(), &cluster.addr(2))
        .await
        .unwrap()
        .watch(pb::WatchRequest {
            key: b"w/".to_vec(),
            prefix: true,
            start_revision: first,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    rpc::put(&mut kv, "w/c", b"3", T).await.unwrap();
    let mut keys = Vec::new();
    while keys.len() < 3 {
        let resp = tokio::time::timeout(T, watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        keys.extend(
            resp.events
                .into_iter()
                .map(|e| String::from_utf8(e.kv.unwrap().key).unwrap()),
        );
    }
    assert_eq!(keys, vec!["w/a", "w/b", "w/c"]);
}
