//! Pod volumes end to end, on the process runtime of a real agent against
//! three real controllers, from a manifest as a Kubernetes user writes it:
//! a ConfigMap's and a Secret's keys as files (the Secret on a tmpfs), a
//! mounted ConfigMap updated in place, an emptyDir an init container fills
//! for the container, the pod's labels as a file, a hostPath, a subPath; a
//! missing ConfigMap holds the pod in ContainerCreating until it exists;
//! an emptyDir over its sizeLimit gets its pod evicted. Mount paths the
//! node lacks (`/work`, `/etc/berth-test`) never appear on the node.

use std::path::Path;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_testkit::eventually;
use berth_testkit::objects;
use berth_testkit::objects::get_req;
use berth_testkit::objects::phase;
use berth_testkit::unique;
use berth_testkit::Agent;
use berth_testkit::Cluster;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

fn apply(cluster: &Cluster, dir: &Path, name: &str, manifest: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let out = cluster
        .cli()
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn pod(ch: &Channel, name: &str) -> pb::Pod {
    pb::Pod::get(ch.clone(), get_req("default", name))
        .await
        .unwrap()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Whether a tmpfs is mounted at `path` in the node's mount namespace.
fn tmpfs_at(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&path.as_str()) && l.contains(" - tmpfs ")
    })
}

const SCRIPT: &str = r#"
cat /berth-test-work/state/ready > /out/init
cat /etc/berth-test/config/mode > /out/mode
stat -L -c %a /etc/berth-test/config/mode > /out/mode-perm
cat /var/run/berth-test/creds/db/password > /out/password
stat -L -c %a /var/run/berth-test/creds/db/password > /out/password-perm
stat -f -c %T /var/run/berth-test/creds > /out/creds-fs
cat /etc/podinfo/labels > /out/labels
cat /etc/berth-test/app.conf > /out/subpath
if touch /etc/berth-test/config/new 2>/dev/null; then echo rw; else echo ro; fi > /out/config-rw
ls /usr/bin/env > /out/node-files
while true; do
  cat /etc/berth-test/config/mode > /out/mode.tmp && mv /out/mode.tmp /out/mode.now
  sleep 0.2
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_bring_config_secrets_and_shared_files_to_containers() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), Default::default()).await;
    let ch = cluster.channel().await;
    let agent = Agent::start(&cluster, root.path(), &unique("node"));
    let out = root.path().join("out");
    let config = objects::configmap("app-config")
        .data("mode", "fast")
        .data("nested.conf", "a=1");
    pb::ConfigMap::create(ch.clone(), config.build())
        .await
        .unwrap();
    let secret = objects::secret("db").string_data("password", "s3cret");
    pb::Secret::create(ch.clone(), secret.build())
        .await
        .unwrap();
    for p in ["/berth-test-work", "/etc/berth-test", "/run/berth-test"] {
        assert!(
            !Path::new(p).exists(),
            "{p} exists on this node before the test"
        );
    }
    let script = serde_json::to_string(SCRIPT).unwrap();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols, tier: back}}
spec:
  restartPolicy: Never
  initContainers:
  - name: prepare
    command: [/bin/sh, -c, "echo prepared > /berth-test-work/state/ready"]
    volumeMounts: [{{name: work, mountPath: /berth-test-work/state}}]
  containers:
  - name: main
    command: [/bin/sh, -c, {script}]
    readinessProbe:
      exec: {{command: [cat, /etc/berth-test/config/mode]}}
      periodSeconds: 1
    volumeMounts:
    - {{name: config, mountPath: /etc/berth-test/config}}
    - {{name: creds, mountPath: /var/run/berth-test/creds}}
    - {{name: work, mountPath: /berth-test-work/state}}
    - {{name: info, mountPath: /etc/podinfo}}
    - {{name: out, mountPath: /out}}
    - {{name: config, mountPath: /etc/berth-test/app.conf, subPath: nested.conf}}
  volumes:
  - {{name: config, configMap: {{name: app-config, defaultMode: 0440}}}}
  - name: creds
    secret:
      secretName: db
      items: [{{key: password, path: db/password, mode: 0400}}]
  - {{name: work, emptyDir: {{}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
  - {{name: out, hostPath: {{path: {out}, type: DirectoryOrCreate}}}}
"#,
        out = out.display()
    );
    apply(&cluster, root.path(), "vols", &manifest);
    let ch = &ch;
    eventually("the pod is ready", T, || async move {
        berth_testkit::objects::is_ready(&pod(ch, "vols").await)
    })
    .await;
    let out = &out;
    eventually("the container has looked at its files", T, || async move {
        !read(out, "mode.now").is_empty()
    })
    .await;
    assert_eq!(
        read(out, "init"),
        "prepared\n",
        "the init container's emptyDir is shared"
    );
    assert_eq!(read(out, "mode"), "fast");
    assert_eq!(read(out, "mode-perm"), "440\n");
    assert_eq!(read(out, "password"), "s3cret");
    assert_eq!(read(out, "password-perm"), "400\n");
    assert_eq!(read(out, "creds-fs"), "tmpfs\n");
    assert_eq!(read(out, "labels"), "app=\"vols\"\ntier=\"back\"");
    assert_eq!(read(out, "subpath"), "a=1");
    assert_eq!(
        read(out, "config-rw"),
        "ro\n",
        "a ConfigMap volume is read-only"
    );
    assert_eq!(
        read(out, "node-files"),
        "/usr/bin/env\n",
        "the node's files stay visible"
    );
    for p in ["/berth-test-work", "/etc/berth-test", "/run/berth-test"] {
        assert!(!Path::new(p).exists(), "{p} leaked onto the node");
    }
    // On the node, the Secret's files are on a tmpfs, never on disk.
    let uid = pod(ch, "vols").await.metadata.unwrap().uid;
    let volumes = agent.data_dir.join("volumes").join(&agent.name).join(&uid);
    assert!(
        tmpfs_at(&volumes.join("creds")),
        "the secret volume is a tmpfs"
    );
    assert!(!tmpfs_at(&volumes.join("config")));

    let changed = objects::configmap("app-config")
        .data("mode", "safe")
        .data("nested.conf", "a=1");
    pb::ConfigMap::update(ch.clone(), changed.build())
        .await
        .unwrap();
    eventually("the mounted ConfigMap changes in place", T, || async move {
        read(out, "mode.now") == "safe"
    })
    .await;

    pb::Pod::delete(ch.clone(), objects::delete_req("default", "vols"))
        .await
        .unwrap();
    let volumes = &volumes;
    eventually("the pod's volumes go with it", T, || async move {
        !volumes.exists() && !tmpfs_at(&volumes.join("creds"))
    })
    .await;
    assert_eq!(
        read(out, "init"),
        "prepared\n",
        "a hostPath outlives the pod"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_config_map_holds_the_pod_and_a_full_empty_dir_evicts_it() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), Default::default()).await;
    let ch = cluster.channel().await;
    let agent = Agent::start(&cluster, root.path(), &unique("node"));
    apply(
        &cluster,
        root.path(),
        "late",
        r#"apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  containers:
  - name: main
    command: [/bin/sh, -c, "cat /config/greeting; sleep 600"]
    volumeMounts: [{name: late, mountPath: /config}]
  volumes:
  - {name: late, configMap: {name: late}}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Always
  containers:
  - name: main
    command: [/bin/sh, -c, "dd if=/dev/zero of=/cache/fill bs=1M count=3; sleep 600"]
    volumeMounts: [{name: cache, mountPath: /cache}]
  volumes:
  - {name: cache, emptyDir: {sizeLimit: 1Mi}}
"#,
    );
    let ch = &ch;
    eventually("the pod waits for its ConfigMap", T, || async move {
        let p = pod(ch, "late").await;
        let waiting = p
            .status
            .and_then(|s| s.container_statuses.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.waiting);
        waiting.is_some_and(|w| {
            w.reason == "ContainerCreating"
                && w.message
                    == "MountVolume.SetUp failed for volume \"late\" : configmap \"late\" not found"
        })
    })
    .await;
    let late = objects::configmap("late").data("greeting", "hello");
    pb::ConfigMap::create(ch.clone(), late.build())
        .await
        .unwrap();
    eventually("the pod runs once its ConfigMap exists", T, || async move {
        phase(&pod(ch, "late").await) == "Running"
    })
    .await;

    eventually("the pod over its sizeLimit is evicted", T, || async move {
        let p = pod(ch, "hog").await;
        let status = p.status.unwrap_or_default();
        status.phase == "Failed"
            && status.reason == "Evicted"
            && status.message == "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". "
    })
    .await;
    let p = pod(ch, "hog").await;
    let status = p.status.unwrap();
    let state = status.container_statuses[0].state.clone().unwrap();
    assert!(
        state.terminated.is_some(),
        "its container was stopped: {status:?}"
    );
    assert!(
        agent.live_processes().len() == 1,
        "only the other pod's container runs"
    );
    drop(agent);
}
