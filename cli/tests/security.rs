//! A secure cluster from the outside: who is refused, how joining works,
//! what survives the loss of the controller that made the CA, and
//! certificates renewed while everything keeps running.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_client::Transport;
use berth_proto::cluster as cpb;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::kv as kpb;
use berth_proto::kv::kv_client::KvClient;
use berth_proto::raft::raft_client::RaftClient;
use berth_testkit::eventually;
use berth_testkit::objects::get_req;
use berth_testkit::rpc;
use berth_testkit::Agent;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use tonic::transport::Channel;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn cluster_of(root: &Path, n: u64, flags: ServerFlags) -> Cluster {
    let cluster = Cluster::start(
        &berth_testkit::berth_binary(),
        root,
        n,
        ClusterOptions::for_tests(flags),
    );
    let ids: Vec<u64> = (1..=n).collect();
    cluster
        .wait_for_leader(&ids, T)
        .await
        .expect("the cluster elects a leader");
    cluster
}

/// The cluster's CA, as its admin credentials hold it.
fn ca_pem(cluster: &Cluster) -> String {
    berth_client::credentials::load(&cluster.admin_conf(), None)
        .unwrap()
        .ca_pem
}

async fn channel(transport: &Transport, addr: &str) -> Result<Channel, String> {
    berth_client::connect::connect(&[addr.to_string()], transport)
        .await
        .map(|(_, ch)| ch)
        .map_err(|e| e.to_string())
}

/// Codes of a public, a Raft, a KV and a membership call made as the
/// holder of `transport`.
async fn codes(transport: &Transport, addr: &str) -> Vec<Option<Code>> {
    let ch = channel(transport, addr).await.expect("a TLS connection");
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
    let list = pb::Namespace::list(ch.clone(), Default::default()).await;
    let raft = RaftClient::new(ch.clone())
        .vote(berth_proto::raft::RaftMessage::default())
        .await;
    let kv = KvClient::new(ch.clone())
        .range(kpb::RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await;
    let remove = ClusterClient::new(ch)
        .remove_member(cpb::RemoveMemberRequest { id: 99 })
        .await;
    vec![
        code(list.map(drop)),
        code(raft.map(drop)),
        code(kv.map(drop)),
        code(remove.map(drop)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_get_what_their_identity_allows_and_strangers_nothing() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = cluster_of(root.path(), 1, ServerFlags::default()).await;
    let addr = cluster.addr(1);
    let denied = Some(Code::PermissionDenied);

    // Plain TCP is not spoken at all.
    let plain = channel(&Transport::Insecure, &addr).await;
    if let Ok(ch) = plain {
        let r = pb::Namespace::list(ch, Default::default()).await;
        assert!(r.is_err(), "a plaintext call was answered");
    }
    // TLS without a certificate: only joining is open.
    let anonymous = Transport::Tls(berth_tls::client_config(&ca_pem(&cluster), None).unwrap());
    let unauthenticated = Some(Code::Unauthenticated);
    assert_eq!(codes(&anonymous, &addr).await, vec![unauthenticated; 4]);
    let message = pb::Namespace::list(
        channel(&anonymous, &addr).await.unwrap(),
        Default::default(),
    )
    .await
    .unwrap_err()
    .message()
    .to_string();
    assert!(message.contains("needs a client certificate"), "{message}");

    // An administrator (system:masters) may change membership but is no
    // controller: Raft and the raw store are refused.
    let admin = codes(&cluster.transport(), &addr).await;
    assert_eq!(admin[0], None);
    assert_eq!(&admin[1..3], &[denied, denied]);
    assert_ne!(admin[3], denied, "cluster-admin may remove members");
    // A plain user reads the API, and nothing internal.
    let (alice_conf, alice) = cluster.user(root.path(), "alice", &["dev"]);
    assert_eq!(codes(&alice, &addr).await[1..], [denied, denied, denied]);
    let out = cluster
        .cli_as(&alice_conf)
        .args(["token", "create", "--role", "agent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("forbidden: alice cannot call"),
        "{}",
        stderr(&out)
    );
    // A user cannot take a controller's or node's name.
    let out = cluster
        .cli()
        .args(["user", "create", "system:node:n1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reserved name"), "{}", stderr(&out));

    // Another cluster's credentials are refused at the handshake.
    let other_root = tempfile::tempdir().unwrap();
    let other = cluster_of(other_root.path(), 1, ServerFlags::default()).await;
    let err = channel(&other.transport(), &addr).await.unwrap_err();
    assert!(err.contains("refused TLS"), "{err}");
    let out = std::process::Command::new(cluster.binary())
        .arg("--config")
        .arg(other.admin_conf())
        .args(["--server", &addr, "get", "namespaces"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("another cluster"), "{}", stderr(&out));
}

async fn node_ready(cluster: &Cluster, name: &str) {
    let ch = cluster.channel().await;
    eventually(&format!("node {name} is Ready"), T, || {
        let ch = ch.clone();
        async move {
            pb::Node::get(ch, get_req("", name))
                .await
                .is_ok_and(|n| berth_api::resources::node_is_ready(&n))
        }
    })
    .await;
}

fn agent_with_token(cluster: &Cluster, root: &Path, name: &str, token: &str) -> Agent {
    let mut flags = Agent::flags(cluster, root, name);
    flags.token = Some(token.into());
    Agent::start_with(cluster, root, flags, None).unwrap()
}

fn agent_log(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_join_with_a_live_token_only() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = cluster_of(root.path(), 1, ServerFlags::default()).await;

    let good = cluster.join_token("agent");
    assert!(good.starts_with("BERTH1-"), "{good}");
    let _n1 = agent_with_token(&cluster, root.path(), "n1", &good);
    node_ready(&cluster, "n1").await;
    let conf = std::fs::read_to_string(root.path().join("n1/agent.conf")).unwrap();
    assert!(conf.contains("system:node:n1"), "{conf}");
    // Its log server takes only clients with a certificate of the cluster.
    let node = pb::Node::get(cluster.channel().await, get_req("", "n1"))
        .await
        .unwrap();
    let port = node
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .unwrap()
        .port;
    let logs = format!("127.0.0.1:{port}");
    let ca = ca_pem(&cluster);
    let of_agents = |slot| berth_tls::agent_client_config(&ca, slot).unwrap();
    assert!(tls_handshake(of_agents(None), &logs).await.is_err());
    let admin = berth_client::credentials::load(&cluster.admin_conf(), None).unwrap();
    assert!(tls_handshake(of_agents(Some(admin.slot.clone())), &logs)
        .await
        .is_ok());
    // A client of controllers will not take the node for one, though the
    // cluster's CA signed its certificate for this address.
    let of_controllers = berth_tls::client_config(&ca, Some(admin.slot)).unwrap();
    let err = tls_handshake(of_controllers, &logs).await.unwrap_err();
    assert!(
        err.contains("system:node:n1's, not a controller's"),
        "{err}"
    );
    let plain = berth_testkit::rpc::metric(&logs, "berth_agent_pods").await;
    assert_eq!(plain, 0.0, "the log port answered plain HTTP");

    // Refused: an expired token, a revoked one, a controller token, and a
    // token whose CA hash is another cluster's.
    let out = cluster
        .cli()
        .args(["token", "create", "--role", "agent", "--ttl", "1s"])
        .output()
        .unwrap();
    let expired = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let revoked = cluster.join_token("agent");
    let id = revoked
        .split('-')
        .nth(2)
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let out = cluster
        .cli()
        .args(["token", "revoke", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = cluster.cli().args(["token", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(!listed.contains(id), "{listed}");
    let controller = cluster.join_token("controller");
    let ours = good.split('-').nth(1).unwrap();
    let foreign = good.replace(ours, &"0".repeat(64));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cases = [
        ("expired", expired.as_str(), "expired"),
        ("revoked", revoked.as_str(), "unknown or was revoked"),
        ("wrongrole", controller.as_str(), "is for role controller"),
        ("foreign", foreign.as_str(), "the token pins"),
    ];
    for (name, token, why) in cases {
        let mut agent = agent_with_token(&cluster, root.path(), name, token);
        eventually(&format!("agent {name} gives up"), T, || {
            let exited = !agent.process.is_running();
            async move { exited }
        })
        .await;
        let log = agent_log(root.path(), name);
        assert!(log.contains(why), "{name}: {log}");
        assert!(!root.path().join(name).join("agent.conf").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_outlives_the_controller_that_made_its_ca() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = cluster_of(root.path(), 1, ServerFlags::default()).await;
    cluster.add_joining(2, 1);
    cluster.add_joining(3, 1);
    eventually("three voters", Duration::from_secs(60), || async {
        let status = rpc::status(&cluster.transport(), &cluster.addr(1)).await;
        status.is_some_and(|s| s.members.iter().filter(|m| m.voter).count() == 3)
    })
    .await;
    // The joiners got the CA: they issue too.
    for id in [2, 3] {
        assert!(cluster.data_dir(id).join("tls/ca.key").exists());
    }
    let secret = berth_testkit::objects::secret("db").string_data("password", "sesame");
    pb::Secret::create(cluster.channel_to(1).await, secret.build())
        .await
        .unwrap();
    cluster.kill(1);
    cluster.wipe(1);
    cluster
        .wait_for_leader(&[2, 3], T)
        .await
        .expect("the other two elect a leader");
    // And the keyring: a Secret sealed by the first opens on the others.
    for id in [2, 3] {
        let db = pb::Secret::get(cluster.channel_to(id).await, get_req("default", "db"))
            .await
            .unwrap();
        assert_eq!(db.data["password"], "c2VzYW1l");
    }
    let _n1 = Agent::start(&cluster, root.path(), "n1");
    node_ready(&cluster, "n1").await;
}

/// A TLS handshake with `addr` as a client of `config`, and one read: a
/// server that requires a client certificate refuses at the read.
async fn tls_handshake(
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    addr: &str,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::rustls;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /containerLogs/default/none/c HTTP/1.1\r\nHost: n1\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 12];
    tls.read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The serving certificate's expiry, as a client sees it.
async fn served_not_after(ca_pem: &str, addr: &str) -> std::time::SystemTime {
    use tokio_rustls::rustls;
    let config = berth_tls::client_config(ca_pem, None).unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let tcp = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(&der)
    );
    berth_pki::not_after(&pem).unwrap()
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    text.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_are_renewed_without_a_restart() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(12);
    let flags = ServerFlags {
        cert_ttl: Some(ttl),
        ..Default::default()
    };
    let cluster = cluster_of(root.path(), 1, flags).await;
    let ca = ca_pem(&cluster);
    let addr = cluster.addr(1);
    let first = served_not_after(&ca, &addr).await;
    let _n1 = Agent::start(&cluster, root.path(), "n1");
    node_ready(&cluster, "n1").await;
    let conf = root.path().join("n1/agent.conf");
    let joined = std::fs::read_to_string(&conf).unwrap();

    // Past the first certificates' expiry: the controller serves a newer
    // one, the agent has written its renewed one, and both still work.
    tokio::time::sleep(ttl + Duration::from_secs(3)).await;
    let now_served = served_not_after(&ca, &addr).await;
    assert!(now_served > first, "{now_served:?} is not after {first:?}");
    assert_ne!(std::fs::read_to_string(&conf).unwrap(), joined);
    let renewals = rpc::metric(
        &cluster.metrics_addr(1),
        "berth_controller_certificate_renewals_total",
    )
    .await;
    assert!(renewals >= 1.0, "{renewals}");
    node_ready(&cluster, "n1").await;
    let ch = cluster.channel().await;
    pb::Namespace::list(ch, Default::default()).await.unwrap();
}

/// The audit log's lines, oldest first, across its rotated files.
fn audit_lines(log: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = (1..=3)
        .rev()
        .map(|n| log.with_extension(format!("log.{n}")))
        .collect();
    files.push(log.to_path_buf());
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_and_every_refusal_is_in_the_audit_log() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("audit/controller.log");
    let flags = ServerFlags {
        passthrough: ["--audit-log", &log.display().to_string()]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let cluster = cluster_of(root.path(), 1, flags).await;
    let admin = cluster.channel().await;
    let cm = berth_testkit::objects::configmap("audited").build();
    pb::ConfigMap::create(admin.clone(), cm).await.unwrap();
    let value = uuid::Uuid::new_v4().simple().to_string();
    let secret = berth_testkit::objects::secret("db").string_data("password", &value);
    pb::Secret::create(admin.clone(), secret.build())
        .await
        .unwrap();
    let (_, nobody) = cluster.user(root.path(), "nobody", &["team"]);
    let err = pb::ConfigMap::delete(
        channel(&nobody, &cluster.addr(1)).await.unwrap(),
        berth_testkit::objects::delete_req("default", "audited"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let anonymous = Transport::Tls(berth_tls::client_config(&ca_pem(&cluster), None).unwrap());
    let cm = berth_testkit::objects::configmap("planted").build();
    let err = pb::ConfigMap::create(channel(&anonymous, &cluster.addr(1)).await.unwrap(), cm)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    cluster.join_token("agent");

    let has = |lines: &[serde_json::Value], want: &[(&str, &str)]| {
        lines
            .iter()
            .any(|l| want.iter().all(|(k, v)| l[*k].as_str() == Some(*v)))
    };
    let expected: [&[(&str, &str)]; 6] = [
        &[
            ("user", "admin"),
            ("verb", "create"),
            ("kind", "ConfigMap"),
            ("namespace", "default"),
            ("name", "audited"),
            ("code", "Ok"),
        ],
        &[
            ("user", "admin"),
            ("kind", "Secret"),
            ("name", "db"),
            ("code", "Ok"),
        ],
        // Who was refused, and why.
        &[
            ("user", "nobody"),
            ("verb", "delete"),
            ("name", "audited"),
            ("code", "PermissionDenied"),
        ],
        &[
            ("user", "system:anonymous"),
            ("kind", "berth.v1.ConfigMaps"),
            ("verb", "Create"),
            ("code", "Unauthenticated"),
        ],
        // Security's own changes: a user's certificate, a token.
        &[
            ("user", "admin"),
            ("kind", "berth.security.v1.Users"),
            ("verb", "Issue"),
            ("code", "Ok"),
        ],
        &[
            ("user", "admin"),
            ("kind", "berth.security.v1.Tokens"),
            ("verb", "Create"),
            ("code", "Ok"),
        ],
    ];
    eventually("every call is in the audit log", T, || {
        let lines = audit_lines(&log);
        let all = expected.iter().all(|want| has(&lines, want));
        async move { all }
    })
    .await;
    let lines = audit_lines(&log);
    let nobody = lines.iter().find(|l| l["user"] == "nobody").unwrap();
    assert_eq!(nobody["groups"][0], "team");
    assert_eq!(
        nobody["message"],
        "forbidden: nobody cannot delete configmaps in namespace default"
    );
    assert!(nobody["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(nobody["controller"], 1);
    // No reads, and no values.
    assert!(!has(&lines, &[("verb", "get")]) && !has(&lines, &[("verb", "list")]));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&value), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_and_streams_per_connection_are_limited() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let flags = ServerFlags {
        no_scheduler: true,
        no_reconcilers: true,
        passthrough: [
            "--max-connections",
            "4",
            "--max-streams-per-connection",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let cluster = cluster_of(root.path(), 1, flags).await;
    let addr = cluster.addr(1);

    // Two streams on a connection: a third call waits for one to end.
    let ch = channel(&cluster.transport(), &addr).await.unwrap();
    let watch = || pb::Namespace::watch(ch.clone(), Default::default());
    let first = watch().await.unwrap();
    let _second = watch().await.unwrap();
    let third = tokio::time::timeout(
        Duration::from_secs(1),
        pb::Namespace::get(ch.clone(), get_req("", "default")),
    )
    .await;
    assert!(third.is_err(), "a third stream was opened: {third:?}");
    drop(first);
    tokio::time::timeout(T, pb::Namespace::get(ch.clone(), get_req("", "default")))
        .await
        .expect("the call goes ahead once a stream ends")
        .unwrap();

    // Four connections at most: more are closed as they arrive.
    let mut open = vec![ch];
    let mut refused = 0;
    for _ in 0..4 {
        match channel(&cluster.transport(), &addr).await {
            Ok(ch) => open.push(ch),
            Err(e) => {
                refused += 1;
                assert!(!e.is_empty());
            }
        }
    }
    assert!(refused >= 1 && open.len() <= 4, "{} open", open.len());
    drop(open);
    eventually("a connection is accepted again", T, || {
        let transport = cluster.transport();
        let addr = addr.clone();
        async move { channel(&transport, &addr).await.is_ok() }
    })
    .await;
}
