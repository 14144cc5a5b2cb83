//! `berth dev` as a user runs it: one process holding the controllers and
//! an agent (here the simulated runtime, so that it needs neither root nor
//! a container engine), applying a manifest it was given once it is up,
//! and stopping cleanly on Ctrl-C. `.ci/dev-smoke` runs the README's own
//! command with the process runtime.

use std::net::TcpListener;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_testkit::eventually;
use berth_testkit::flags::Runtime;
use berth_testkit::objects::get_req;
use berth_testkit::objects::list_req;
use berth_testkit::objects::phase;
use berth_testkit::DevFlags;
use berth_testkit::Process;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(60);

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: busybox, command: [sleep, "3600"]}
"#;

/// The first of three free consecutive ports on 127.0.0.1 (dev's
/// controllers listen on `--port-base` and the two after it).
fn free_port_base() -> u16 {
    loop {
        let base = berth_testkit::free_port();
        let free = (0..3).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_cluster_applies_its_manifests_and_stops_on_ctrl_c() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let manifest = root.path().join("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    let flags = DevFlags {
        data_dir: root.path().join("data"),
        port_base: Some(free_port_base()),
        runtime: Some(Runtime::Sim),
        apply: vec![manifest],
        ..Default::default()
    };
    let mut dev = Process::new(
        "berth dev",
        &berth_testkit::berth_binary(),
        flags.args(),
        root.path().join("dev.log"),
    )
    // dev makes its credentials the current context of ~/.berth/config:
    // a home of the test's own.
    .env("HOME", root.path().to_str().unwrap());
    dev.start().unwrap();
    let admin = root.path().join("data/admin.conf");
    eventually("dev writes its admin credentials", T, || async {
        admin.exists()
    })
    .await;
    let transport = berth_client::credentials::load(&admin, None)
        .unwrap()
        .transport;
    let home = berth_client::credentials::load(&root.path().join(".berth/config"), None);
    assert!(
        home.is_ok(),
        "~/.berth/config has dev's context: {:?}",
        home.err()
    );

    eventually("dev's node is Ready", T, || async {
        let Ok(ch) = berth_client::connect::connect(&flags.addrs(), &transport).await else {
            return false;
        };
        pb::Node::get(ch.1, get_req("", "dev-node-1"))
            .await
            .is_ok_and(|n| berth_api::resources::node_is_ready(&n))
    })
    .await;
    let (_, ch) = berth_client::connect::connect(&flags.addrs(), &transport)
        .await
        .unwrap();
    eventually("the applied deployment's pods run", T, || async {
        let pods = pb::Pod::list(ch.clone(), list_req("default", "app=web"))
            .await
            .map(|l| l.0)
            .unwrap_or_default();
        pods.len() == 2 && pods.iter().all(|p| phase(p) == "Running")
    })
    .await;

    dev.signal(Signal::SIGINT);
    let status = dev.wait_exit(T).await.expect("berth dev stops on Ctrl-C");
    assert!(status.success(), "berth dev exited with {status}");
    let output = std::fs::read_to_string(dev.log_path()).unwrap();
    assert!(
        output.contains("stopping: the pods' containers first"),
        "{}",
        dev.log_tail(20)
    );
}
