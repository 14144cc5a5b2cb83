//! End-to-end test of the docker runtime against three real controllers
//! and this machine's Docker Engine, with an image built here (`docker
//! import` of a busybox rootfs): no registry is involved. Skipped, saying
//! so, when no engine answers.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_testkit::eventually;
use berth_testkit::flags::Runtime;
use berth_testkit::objects;
use berth_testkit::objects::delete_req;
use berth_testkit::objects::get_req;
use berth_testkit::unique;
use berth_testkit::Agent;
use berth_testkit::Cluster;
use berth_testkit::ServerFlags;
use tonic::transport::Channel;

const IMAGE: &str = "berth-test/busybox:3";
const T: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pod `name` of `image` that says hello and sleeps, within half a CPU
/// and 64Mi.
fn pod(name: &str, image: &str) -> pb::Pod {
    let main = objects::container("main")
        .image(image)
        .command(&["/bin/sh", "-c"])
        .args(&["echo hello from $HOSTNAME; exec sleep 3600"])
        .limits(&[("cpu", "500m"), ("memory", "64Mi")]);
    objects::pod(name).container(main).grace_period(1).build()
}

/// Pod `files`, which prints its Secret, emptyDir and ConfigMap files
/// every second.
fn files_pod() -> pb::Pod {
    let mount = |name: &str, path: &str| pb::VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let main = objects::container("main")
        .image(IMAGE)
        .command(&["/bin/sh", "-c"])
        .args(&["echo made > /scratch/note; while true; do echo $(cat /creds/password) $(cat /scratch/note) $(cat /config/mode); sleep 1; done"]);
    let mut main = main.build();
    main.volume_mounts = vec![
        mount("config", "/config"),
        mount("creds", "/creds"),
        mount("scratch", "/scratch"),
    ];
    let mut p = objects::pod("files").container(main).build();
    p.spec.as_mut().unwrap().volumes = vec![
        pb::Volume {
            name: "config".into(),
            config_map: Some(pb::ConfigMapVolumeSource {
                name: "docker-config".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Volume {
            name: "creds".into(),
            secret: Some(pb::SecretVolumeSource {
                secret_name: "docker-secret".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        pb::Volume {
            name: "scratch".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    p
}

async fn get_pod(ch: &Channel, name: &str) -> pb::Pod {
    pb::Pod::get(ch.clone(), get_req("default", name))
        .await
        .unwrap()
}

fn container(p: &pb::Pod) -> pb::ContainerStatus {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.first().cloned())
        .unwrap_or_default()
}

/// Engine fields of a container, by `docker inspect --format`.
fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, id])
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docker_runtime_runs_adopts_and_removes_containers() {
    if docker(&["info"]).is_none() {
        eprintln!("SKIPPED: no Docker Engine answers here (start dockerd to run this test)");
        return;
    }
    berth_testkit::images::busybox_image(IMAGE).expect("build the test image");
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), ServerFlags::default()).await;
    let flags = berth_testkit::AgentFlags {
        runtime: Runtime::Docker,
        ..Agent::flags(&cluster, root.path(), &unique("docker"))
    };
    let mut agent =
        Agent::start_with(&cluster, root.path(), flags, None).expect("start berth agent");
    let ch = cluster.channel().await;
    pb::Pod::create(ch.clone(), pod("web", IMAGE))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), pod("ghost", "berth-test/no-such-image:1"))
        .await
        .unwrap();

    eventually("the pod runs in a container", T, || async {
        get_pod(&ch, "web")
            .await
            .status
            .is_some_and(|s| s.phase == "Running")
    })
    .await;
    let id = container(&get_pod(&ch, "web").await).container_id;
    let engine_id = id.strip_prefix("docker://").expect("a docker container id");
    let labels = inspect(engine_id, "{{json .Config.Labels}}");
    let labels: BTreeMap<String, String> = serde_json::from_str(&labels).unwrap();
    let uid = get_pod(&ch, "web").await.meta().unwrap().uid.clone();
    assert_eq!(labels["berth.pod.uid"], uid);
    assert_eq!(labels["berth.container"], "main");
    assert_eq!(labels["berth.node"], agent.name);
    assert_eq!(
        inspect(engine_id, "{{.HostConfig.Memory}}"),
        (64 << 20).to_string()
    );
    assert_eq!(inspect(engine_id, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(engine_id, "{{.State.Running}}"), "true");

    let logs = cluster.cli().args(["logs", "web"]).output().unwrap();
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello from web\n");

    // Volumes are binds: a ConfigMap's files (updated in place), a
    // Secret's, and an emptyDir.
    let config = objects::configmap("docker-config").data("mode", "fast");
    pb::ConfigMap::create(ch.clone(), config.build())
        .await
        .unwrap();
    let secret = objects::secret("docker-secret").string_data("password", "s3cret");
    pb::Secret::create(ch.clone(), secret.build())
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), files_pod()).await.unwrap();
    let logs_of = |name: &str| {
        let out = cluster.cli().args(["logs", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("the container reads its volumes", T, || async {
        logs_of("files").starts_with("s3cret made fast\n")
    })
    .await;
    let changed = objects::configmap("docker-config").data("mode", "safe");
    pb::ConfigMap::update(ch.clone(), changed.build())
        .await
        .unwrap();
    eventually("the ConfigMap changes in the container", T, || async {
        logs_of("files").contains("s3cret made safe\n")
    })
    .await;

    // Who the container runs as, what it may do, and its hooks.
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // The hooks write as the container's user.
    std::os::unix::fs::chown(&out, Some(1000), Some(3000)).unwrap();
    cluster.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: who}}
spec:
  terminationGracePeriodSeconds: 10
  securityContext: {{runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000]}}
  containers:
  - name: main
    image: {IMAGE}
    command: [/bin/sh, -c, "id -u; id -g; id -G; grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status; touch /x 2>/dev/null || echo read-only; trap 'echo term >> /out/log; exit 0' TERM; while true; do sleep 0.1; done"]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [NET_RAW]}}
    lifecycle:
      postStart: {{exec: {{command: [/bin/sh, -c, "echo started > /out/post"]}}}}
      preStop: {{exec: {{command: [/bin/sh, -c, "echo prestop >> /out/log"]}}}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: {out}, type: Directory}}}}
"#,
        out = out.display()
    ));
    eventually("the pod of a user runs", T, || async {
        get_pod(&ch, "who")
            .await
            .status
            .is_some_and(|s| s.phase == "Running")
    })
    .await;
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    assert_eq!(read("post"), "started\n", "postStart ended before Running");
    eventually("the container has said who it is", T, || async {
        logs_of("who").lines().count() == 6
    })
    .await;
    let said = logs_of("who");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(&lines[..3], ["1000", "3000", "3000 4000"], "{said}");
    let bounding = lines[3].strip_prefix("CapBnd:").map(str::trim);
    let bounding = u64::from_str_radix(bounding.unwrap_or_default(), 16).unwrap();
    assert_eq!(bounding & (1 << 13), 0, "NET_RAW was dropped: {said}");
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    assert_eq!(lines[5], "read-only", "{said}");
    pb::Pod::delete(ch.clone(), delete_req("default", "who"))
        .await
        .unwrap();
    eventually("the pod of a user is stopped", T, || async {
        read("log").ends_with("term\n")
    })
    .await;
    assert_eq!(read("log"), "prestop\nterm\n", "preStop ran before SIGTERM");

    // A missing image is a clear status, not a hang.
    eventually("the missing image is reported", T, || async {
        let c = container(&get_pod(&ch, "ghost").await);
        c.state
            .and_then(|s| s.waiting)
            .is_some_and(|w| w.reason == "ErrImagePull" && w.message.contains("no-such-image"))
    })
    .await;

    // A restarted agent keeps the running container.
    agent.kill();
    agent.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = get_pod(&ch, "web").await;
    assert_eq!(container(&p).container_id, id);
    assert_eq!(container(&p).restart_count, 0);
    assert_eq!(inspect(engine_id, "{{.State.Running}}"), "true");

    // Deleting the pod removes its container.
    for name in ["web", "ghost", "files"] {
        pb::Pod::delete(ch.clone(), delete_req("default", name))
            .await
            .unwrap();
    }
    eventually("the container is removed", T, || async {
        docker(&["inspect", engine_id]).is_none()
    })
    .await;
}
