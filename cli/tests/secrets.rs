//! Secrets from the outside: written as Kubernetes' manifests have them
//! (stringData, base64 data), shown as kubectl shows them, readable
//! through every controller, and encrypted at rest: no data dir of any
//! controller holds a value in the clear, in the Raft log, RocksDB's files
//! or a snapshot.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use berth::objects::ClientKind;
use berth_api::pb;
use berth_testkit::eventually;
use berth_testkit::objects;
use berth_testkit::objects::get_req;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn ok(cluster: &Cluster, args: &[&str], stdin: &str) -> String {
    let o = cluster.run_cli(args, stdin);
    assert!(
        o.status.success(),
        "berth {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secrets_value_is_in_no_data_dir_yet_every_controller_reads_it() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    // Snapshots every few entries, so that one holds the Secret too.
    let flags = ServerFlags {
        snapshot_logs: Some(8),
        ..Default::default()
    };
    let mut cluster = Cluster::start(
        &berth_testkit::berth_binary(),
        root.path(),
        3,
        ClusterOptions::for_tests(flags),
    );
    cluster
        .wait_for_leader(&[1, 2, 3], T)
        .await
        .expect("the cluster elects a leader");
    // Values no other byte of the data dirs could hold by chance.
    let plain = uuid::Uuid::new_v4().simple().to_string();
    let encoded = uuid::Uuid::new_v4().simple().to_string();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let manifests = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData:\n  password: {plain}\ndata:\n  token: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: control}}\ndata:\n  marker: {marker}\n",
        b64(&encoded)
    );
    ok(&cluster, &["apply", "-f", "-"], &manifests);

    // As kubectl shows it: base64 in -o yaml, sizes in describe.
    let yaml = ok(&cluster, &["get", "secret", "db", "-o", "yaml"], "");
    assert!(
        yaml.contains(&format!("password: {}", b64(&plain))),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("token: {}", b64(&encoded))),
        "{yaml}"
    );
    assert!(yaml.contains("type: Opaque"), "{yaml}");
    assert!(
        !yaml.contains("stringData") && !yaml.contains(&plain),
        "{yaml}"
    );
    let described = ok(&cluster, &["describe", "secret", "db"], "");
    assert!(described.contains("password: 32 bytes"), "{described}");
    assert!(!described.contains(&b64(&plain)), "{described}");
    let table = ok(&cluster, &["get", "secrets"], "");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..3] == ["db", "Opaque", "2"]),
        "{table}"
    );

    // Each controller opens it from its own copy.
    for id in [1, 2, 3] {
        let ch = cluster.channel_to(id).await;
        eventually(&format!("controller {id} reads it"), T, || {
            let ch = ch.clone();
            let want = b64(&plain);
            async move {
                let mut req = get_req("default", "db");
                req.serializable = true;
                pb::Secret::get(ch, req)
                    .await
                    .is_ok_and(|s| s.data.get("password") == Some(&want))
            }
        })
        .await;
    }
    // More writes, for snapshots past the Secret's entry.
    let admin = cluster.channel().await;
    for i in 0..20 {
        let cm = objects::configmap(&format!("filler-{i}")).build();
        pb::ConfigMap::create(admin.clone(), cm).await.unwrap();
    }
    // A clean stop, so that RocksDB writes its tables too.
    for id in [1, 2, 3] {
        cluster.signal(id, Signal::SIGTERM);
    }
    eventually("the controllers stop", T, || {
        let stopped = [1, 2, 3].iter().all(|id| !cluster.is_running(*id));
        async move { stopped }
    })
    .await;

    let keyrings: Vec<Vec<u8>> = [1, 2, 3]
        .iter()
        .map(|id| {
            let path = cluster.data_dir(*id).join("tls/encryption.keys");
            let mode = std::fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert!(
        keyrings.iter().all(|k| *k == keyrings[0]),
        "one keyring, shared"
    );
    for id in [1, 2, 3] {
        let dir = cluster.data_dir(id);
        // The scan sees what the store holds: the ConfigMap's value is
        // there in the clear.
        assert!(
            !files_holding(dir, marker.as_bytes()).is_empty(),
            "controller {id}'s store holds the ConfigMap"
        );
        for needle in [&plain, &b64(&plain), &encoded, &b64(&encoded)] {
            let found = files_holding(dir, needle.as_bytes());
            assert!(found.is_empty(), "a Secret's value in the clear: {found:?}");
        }
    }
}
