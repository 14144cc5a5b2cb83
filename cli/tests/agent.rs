//! End-to-end tests of node agents on the process runtime against three
//! real controllers: deployments of real processes that scale and roll
//! out, OOM kills and crash back-off, an agent restart that adopts its
//! pods, and a lost node whose pods are replaced elsewhere.
//!
//! The containers write their own pid to a file named after their pod, so
//! the tests check processes with the OS, not only with the API.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_testkit::eventually;
use berth_testkit::objects;
use berth_testkit::objects::container;
use berth_testkit::objects::deployment;
use berth_testkit::objects::get_req;
use berth_testkit::objects::is_ready;
use berth_testkit::objects::list_req;
use berth_testkit::objects::phase;
use berth_testkit::objects::pod;
use berth_testkit::unique;
use berth_testkit::Agent;
use berth_testkit::Cluster;
use berth_testkit::ServerFlags;
use tonic::transport::Channel;

/// Controllers that judge nodes quickly.
fn fast_nodes() -> ServerFlags {
    ServerFlags {
        node_grace_period: Some(Duration::from_secs(2)),
        pod_eviction_timeout: Some(Duration::from_secs(3)),
        ..Default::default()
    }
}

const T: Duration = Duration::from_secs(30);

/// A cluster of fast-judging controllers, a channel to it, and a directory
/// where containers record their pids. Fields drop in order: the
/// controllers stop before their directory goes.
struct Env {
    cluster: Cluster,
    ch: Channel,
    pids: std::path::PathBuf,
    root: tempfile::TempDir,
}

async fn env() -> Env {
    let root = tempfile::tempdir().unwrap();
    let pids = root.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let cluster = Cluster::ready(root.path(), fast_nodes()).await;
    let ch = cluster.channel().await;
    Env {
        cluster,
        ch,
        pids,
        root,
    }
}

impl Env {
    fn agent(&self, prefix: &str) -> Agent {
        Agent::start(&self.cluster, self.root.path(), &unique(prefix))
    }
}

/// A container that records its pid in `pids/<pod name>`, then sleeps;
/// ready at once. (`$$$$` reaches the shell as `$$`: in a command, `$$`
/// is Kubernetes' escape for `$`.)
fn sleeper(pids: &Path, version: &str) -> pb::Container {
    container("main")
        .shell(&format!(
            "echo $$$$ > {}/$HOSTNAME; exec sleep 3600",
            pids.display()
        ))
        .env("VERSION", version)
        .requests(&[("cpu", "100m"), ("memory", "16Mi")])
        .limits(&[("memory", "64Mi")])
        .readiness_exec(&["/bin/true"], 1)
        .build()
}

/// Deployment `name` of `replicas` sleepers that stop within 2 s.
fn sleepers(name: &str, replicas: i32, pids: &Path, version: &str) -> pb::Deployment {
    deployment(name)
        .replicas(replicas)
        .container(sleeper(pids, version))
        .grace_period(2)
        .rolling("1", "1")
        .build()
}

async fn pods_of(ch: &Channel, app: &str) -> Vec<pb::Pod> {
    let req = list_req("default", &format!("app={app}"));
    pb::Pod::list(ch.clone(), req).await.expect("list pods").0
}

/// The pid a pod's container recorded, if that process lives.
fn pid_of(pids: &Path, pod: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pids.join(pod))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("sleep")
        .then_some(pid)
}

/// Waits until exactly `n` pods of `app` are Running and ready, each with
/// its own live process; returns their names.
async fn running(ch: &Channel, app: &str, pids: &Path, n: usize) -> BTreeSet<String> {
    eventually(&format!("{n} pods of {app} run"), T, || async {
        let pods = pods_of(ch, app).await;
        pods.len() == n
            && pods
                .iter()
                .all(|p| is_ready(p) && pid_of(pids, p.name()).is_some())
    })
    .await;
    pods_of(ch, app)
        .await
        .iter()
        .map(|p| p.name().to_string())
        .collect()
}

async fn set_replicas(ch: &Channel, name: &str, replicas: i32) {
    let mut d = pb::Deployment::get(ch.clone(), get_req("default", name))
        .await
        .unwrap();
    d.spec.get_or_insert_default().replicas = Some(replicas);
    d.meta_mut().resource_version.clear();
    pb::Deployment::update(ch.clone(), d).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_run_real_processes_that_scale_and_roll_out() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch, pids) = (&env.cluster, env.ch.clone(), env.pids.clone());
    let agent = env.agent("node");

    pb::Deployment::create(ch.clone(), sleepers("web", 3, &pids, "v1"))
        .await
        .unwrap();
    let first = running(&ch, "web", &pids, 3).await;
    // Each process sits in its own container cgroup, under its pod's.
    for name in &first {
        let pid = pid_of(&pids, name).unwrap();
        let pod = pb::Pod::get(ch.clone(), get_req("default", name))
            .await
            .unwrap();
        let uid = pod.meta().unwrap().uid.clone();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let memory = cgroups
            .lines()
            .find(|l| l.contains(":memory:") || l.starts_with("0::"))
            .unwrap();
        assert!(
            memory.ends_with(&format!("/berth/{}/{uid}/main", agent.name)),
            "{memory}"
        );
    }

    set_replicas(&ch, "web", 5).await;
    let five = running(&ch, "web", &pids, 5).await;
    assert!(first.is_subset(&five));
    set_replicas(&ch, "web", 2).await;
    let two = running(&ch, "web", &pids, 2).await;
    let removed: Vec<&String> = five.difference(&two).collect();
    assert_eq!(removed.len(), 3);
    eventually("the removed pods' processes end", T, || async {
        removed.iter().all(|p| pid_of(&pids, p).is_none())
    })
    .await;

    // A new template rolls out with maxUnavailable 1 of 4: at every moment
    // at least 3 pods are ready.
    set_replicas(&ch, "web", 4).await;
    let old = running(&ch, "web", &pids, 4).await;
    let mut d = pb::Deployment::get(ch.clone(), get_req("default", "web"))
        .await
        .unwrap();
    let spec = d.spec.get_or_insert_default();
    spec.template
        .get_or_insert_default()
        .spec
        .get_or_insert_default()
        .containers = vec![sleeper(&pids, "v2")];
    d.meta_mut().resource_version.clear();
    pb::Deployment::update(ch.clone(), d).await.unwrap();
    let deadline = std::time::Instant::now() + T;
    let mut least_ready = usize::MAX;
    loop {
        let pods = pods_of(&ch, "web").await;
        least_ready = least_ready.min(pods.iter().filter(|p| is_ready(p)).count());
        let done = pods.len() == 4 && pods.iter().all(|p| is_ready(p) && !old.contains(p.name()));
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not finish: {}",
            agent.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        least_ready >= 3,
        "only {least_ready} pods were ready during the rollout"
    );
    let d = pb::Deployment::get(ch.clone(), get_req("default", "web"))
        .await
        .unwrap();
    eventually(
        "the deployment's status shows the rollout done",
        T,
        || async {
            let d = pb::Deployment::get(ch.clone(), get_req("default", "web"))
                .await
                .unwrap();
            let s = d.status.clone().unwrap_or_default();
            s.observed_generation == d.meta().unwrap().generation
                && (
                    s.replicas,
                    s.updated_replicas,
                    s.ready_replicas,
                    s.available_replicas,
                ) == (4, 4, 4, 4)
        },
    )
    .await;
    assert!(d.meta().unwrap().generation >= 2);
    eventually("the old template's processes end", T, || async {
        old.iter().all(|p| pid_of(&pids, p).is_none())
    })
    .await;
    let out = cluster
        .cli()
        .args(["rollout", "status", "deployment", "web"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));

    // Deleting the deployment takes its pods and their processes with it.
    pb::Deployment::delete(
        ch.clone(),
        pb::DeleteRequest {
            namespace: "default".into(),
            name: "web".into(),
            resource_version: String::new(),
        },
    )
    .await
    .unwrap();
    eventually(
        "the deployment's pods and processes are gone",
        T,
        || async { pods_of(&ch, "web").await.is_empty() && agent.live_processes().is_empty() },
    )
    .await;
}

/// Pod `name` (labelled `app=NAME`) that runs `argv` once under
/// `restart` policy, within `memory_limit` if given.
fn bare_pod(name: &str, restart: &str, argv: &[&str], memory_limit: Option<&str>) -> pb::Pod {
    let main = container("main").command(argv);
    let main = match memory_limit {
        Some(m) => main.limits(&[("memory", m)]),
        None => main,
    };
    pod(name)
        .labels(&[("app", name)])
        .restart_policy(restart)
        .container(main)
        .build()
}

fn container_status(p: &pb::Pod) -> pb::ContainerStatus {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.first().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_limits_end_in_oom_kills_and_crashes_back_off() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");

    // 200 MiB against a 32 MiB limit.
    let hog = bare_pod(
        "hog",
        "Never",
        &[
            "/usr/bin/python3",
            "-c",
            "x = bytearray(200 << 20); import time; time.sleep(60)",
        ],
        Some("32Mi"),
    );
    pb::Pod::create(ch.clone(), hog).await.unwrap();
    let crasher = bare_pod(
        "crasher",
        "Always",
        &["/bin/sh", "-c", "echo boom; exit 3"],
        None,
    );
    pb::Pod::create(ch.clone(), crasher).await.unwrap();

    eventually("the hog is OOMKilled", T, || async {
        let p = pb::Pod::get(ch.clone(), get_req("default", "hog"))
            .await
            .unwrap();
        let t = container_status(&p).state.and_then(|s| s.terminated);
        phase(&p) == "Failed" && t.is_some_and(|t| t.reason == "OOMKilled" && t.exit_code == 137)
    })
    .await;
    let saw_backoff = std::sync::atomic::AtomicBool::new(false);
    let saw_backoff = &saw_backoff;
    let ch = &ch;
    eventually("the crasher restarts with back-off", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "crasher"))
            .await
            .unwrap();
        let c = container_status(&p);
        let waiting = c.state.and_then(|s| s.waiting).map(|w| w.reason);
        if waiting.as_deref() == Some("CrashLoopBackOff") {
            saw_backoff.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let last = c.last_state.and_then(|s| s.terminated);
        saw_backoff.load(std::sync::atomic::Ordering::Relaxed)
            && c.restart_count >= 2
            && phase(&p) == "Running"
            && last.is_some_and(|t| t.exit_code == 3 && t.reason == "Error")
    })
    .await;
    let out = cluster.cli().args(["logs", "crasher"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "boom\n");

    // Logs are for those the cluster allows `get pods/log` on the pod:
    // through a controller, and straight from the agent too.
    let creds = tempfile::tempdir().unwrap();
    let (stranger, _) = cluster.user(creds.path(), "stranger", &[]);
    let out = cluster
        .cli_as(&stranger)
        .args(["logs", "crasher"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden: stranger cannot get pods/log in namespace default"),
        "{err}"
    );
    let (status, text) = agent_logs(ch, &stranger, "crasher").await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(
        text.trim(),
        "forbidden: stranger cannot get pods/log in namespace default"
    );
    let (reader, _) = cluster.user(creds.path(), "reader", &["readers"]);
    let binding = objects::role_binding(
        "default",
        "readers-view",
        objects::group("readers"),
        "ClusterRole",
        "view",
    );
    pb::RoleBinding::create(ch.clone(), binding).await.unwrap();
    let out = cluster
        .cli_as(&reader)
        .args(["logs", "crasher"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "boom\n");
    assert_eq!(
        agent_logs(ch, &reader, "crasher").await,
        (200, "boom\n".into())
    );
    drop(agent);
}

/// The environment as the kubelet makes it: every key of a ConfigMap
/// (prefixed) and of a Secret, the pod's fields, a limit in a unit, `$(X)`
/// expanded in values and in the command; a missing ConfigMap keeps the
/// container waiting with the kubelet's reason and message until it
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_maps_secrets_and_the_pod_make_the_environment() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let settings = objects::configmap("settings")
        .data("MODE", "fast")
        .data("LEVEL", "3");
    pb::ConfigMap::create(ch.clone(), settings.build())
        .await
        .unwrap();
    let creds = objects::secret("creds").string_data("password", "p4ss w0rd");
    pb::Secret::create(ch.clone(), creds.build()).await.unwrap();
    let memory = pb::EnvVarSource {
        resource_field_ref: Some(pb::ResourceFieldSelector {
            resource: "limits.memory".into(),
            divisor: "1Mi".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let main = container("main")
        .shell("echo \"$(POD) mode=$CFG_MODE level=$CFG_LEVEL pass=$password node=$NODE ip=$IP mem=$MEM url=$URL later=$LATER\"")
        .limits(&[("memory", "64Mi")])
        .env_from("CFG_", objects::EnvFrom::ConfigMap("settings"))
        .env_from("", objects::EnvFrom::Secret("creds"))
        .env_from_source("POD", objects::pod_field("metadata.name"))
        .env_from_source("NODE", objects::pod_field("spec.nodeName"))
        .env_from_source("IP", objects::pod_field("status.podIP"))
        .env_from_source("MEM", memory)
        .env("URL", "http://$(IP)/$(CFG_MODE)/$$(IP)")
        .env_from_source("LATER", objects::config_map_key("later", "greeting"));
    let envpod = pod("envpod").restart_policy("Never").container(main);
    pb::Pod::create(ch.clone(), envpod.build()).await.unwrap();

    let ch = &ch;
    eventually("the container waits for its ConfigMap", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "envpod"))
            .await
            .unwrap();
        let waiting = container_status(&p).state.and_then(|s| s.waiting);
        waiting.is_some_and(|w| {
            w.reason == "CreateContainerConfigError" && w.message == "configmap \"later\" not found"
        })
    })
    .await;
    let later = objects::configmap("later").data("greeting", "hello");
    pb::ConfigMap::create(ch.clone(), later.build())
        .await
        .unwrap();
    eventually("the container runs once it exists", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "envpod"))
            .await
            .unwrap();
        phase(&p) == "Succeeded"
    })
    .await;
    let p = pb::Pod::get(ch.clone(), get_req("default", "envpod"))
        .await
        .unwrap();
    let out = cluster.cli().args(["logs", "envpod"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "envpod mode=fast level=3 pass=p4ss w0rd node={} ip=127.0.0.1 mem=64 url=http://127.0.0.1/fast/$(IP) later=hello\n",
            p.node_name()
        )
    );
    drop(agent);
}

/// `berth get pods NAME`'s STATUS column.
fn status_column(cluster: &Cluster, name: &str) -> String {
    let out = cluster.cli().args(["get", "pods", name]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = text.lines().nth(1).unwrap_or_default();
    row.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// Init containers run one at a time, in order, each to success, before
/// the containers start; their output is read with `logs -c`; a failed one
/// fails a pod that never restarts and is retried with back-off in one
/// that does, and `get pods` says so as kubectl does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn init_containers_run_in_order_before_the_containers() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let steps = env.root.path().join("steps");
    let steps = steps.display();
    let ordered = pod("ordered").init_containers(vec![
        container("first")
            .shell(&format!("sleep 1; echo first | tee -a {steps}"))
            .build(),
        container("second")
            .shell(&format!("echo second >> {steps}"))
            .build(),
    ]);
    let main = container("main").shell(&format!(
        "echo main >> {steps}; cat {steps}; exec sleep 3600"
    ));
    pb::Pod::create(ch.clone(), ordered.container(main).build())
        .await
        .unwrap();
    let stuck = pod("stuck")
        .init_containers(vec![container("wait").build()])
        .build();
    pb::Pod::create(ch.clone(), stuck).await.unwrap();
    let failing = |name: &str, policy: &str| {
        pod(name)
            .restart_policy(policy)
            .init_containers(vec![container("setup").shell("exit 3").build()])
            .build()
    };
    pb::Pod::create(ch.clone(), failing("once", "Never"))
        .await
        .unwrap();
    pb::Pod::create(ch.clone(), failing("again", "Always"))
        .await
        .unwrap();

    let ch = &ch;
    let get = |name: &'static str| async move {
        pb::Pod::get(ch.clone(), get_req("default", name))
            .await
            .unwrap()
    };
    eventually("the ordered pod runs, initialized", T, || async {
        let p = get("ordered").await;
        let initialized = p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Initialized" && c.status == "True")
        });
        phase(&p) == "Running" && initialized
    })
    .await;
    let logs = |args: &[&str]| {
        let out = cluster.cli().arg("logs").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("the container saw both steps before its own", T, || async {
        logs(&["ordered"]) == "first\nsecond\nmain\n"
    })
    .await;
    assert_eq!(logs(&["ordered", "-c", "first"]), "first\n");
    let p = get("ordered").await;
    let init = &p.status.as_ref().unwrap().init_container_statuses;
    assert_eq!(init.len(), 2);
    assert!(init.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.reason == "Completed")
    }));
    assert_eq!(status_column(cluster, "ordered"), "Running");

    eventually(
        "a pod whose init container runs shows Init:0/1",
        T,
        || async { status_column(cluster, "stuck") == "Init:0/1" },
    )
    .await;
    eventually(
        "a pod that never restarts fails with its init container",
        T,
        || async {
            phase(&get("once").await) == "Failed" && status_column(cluster, "once") == "Init:Error"
        },
    )
    .await;
    let once = get("once").await;
    let main = container_status(&once);
    let waiting = main.state.and_then(|s| s.waiting).map(|w| w.reason);
    assert_eq!(waiting.as_deref(), Some("PodInitializing"), "never started");
    eventually(
        "an init container that fails is retried with back-off",
        T,
        || async {
            let p = get("again").await;
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.init_container_statuses.first())
                .map_or(0, |s| s.restart_count);
            phase(&p) == "Pending"
                && restarts >= 1
                && status_column(cluster, "again") == "Init:CrashLoopBackOff"
        },
    )
    .await;
    drop(agent);
}

/// Who a container runs as, on the process runtime: the user, group and
/// groups `id` shows; no_new_privs; a dropped capability gone from the
/// bounding set; fsGroup owning an emptyDir and making a Secret's files
/// readable to the user; runAsNonRoot refusing a container that would run
/// as root, and a privileged one refused on a node that does not allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_contexts_decide_who_a_container_runs_as() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let secret = objects::secret("who-secret").string_data("password", "s3cret");
    pb::Secret::create(ch.clone(), secret.build())
        .await
        .unwrap();
    cluster.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: who}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}
  containers:
  - name: main
    command: [/bin/sh, -c, "id -u; id -g; id -G; grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status; stat -c '%g %a' /data; touch /data/f; stat -c %g /data/f; cat /creds/password; echo"]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [NET_RAW]}
    volumeMounts: [{name: data, mountPath: /data}, {name: creds, mountPath: /creds}]
  volumes:
  - {name: data, emptyDir: {}}
  - {name: creds, secret: {secretName: who-secret, defaultMode: 0400}}
---
apiVersion: v1
kind: Pod
metadata: {name: rootless}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: main, command: [/bin/sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: mighty}
spec:
  containers:
  - {name: main, command: [/bin/sleep, "600"], securityContext: {privileged: true}}
"#,
    );
    let ch = &ch;
    eventually("the pod has run", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "who"))
            .await
            .unwrap();
        matches!(phase(&p), "Succeeded" | "Failed")
    })
    .await;
    let who = pb::Pod::get(ch.clone(), get_req("default", "who"))
        .await
        .unwrap();
    assert_eq!(phase(&who), "Succeeded", "{:?}", who.status);
    let logs = cluster.cli().args(["logs", "who"]).output().unwrap();
    let text = String::from_utf8_lossy(&logs.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(&lines[..2], ["1000", "3000"], "{text}");
    let groups: BTreeSet<&str> = lines[2].split_whitespace().collect();
    assert_eq!(groups, BTreeSet::from(["2000", "3000", "4000"]), "{text}");
    let bounding = lines[3].strip_prefix("CapBnd:").map(str::trim);
    let bounding = u64::from_str_radix(bounding.unwrap_or_default(), 16).unwrap();
    assert_eq!(bounding & (1 << 13), 0, "NET_RAW was dropped: {text}");
    assert_ne!(bounding & (1 << 12), 0, "NET_ADMIN was not: {text}");
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    assert_eq!(
        lines[5], "2000 2777",
        "the emptyDir is the fsGroup's: {text}"
    );
    assert_eq!(
        lines[6], "2000",
        "what is made in it is the fsGroup's: {text}"
    );
    assert_eq!(
        lines[7], "s3cret",
        "the fsGroup may read the Secret's files: {text}"
    );

    for (name, start) in [
        (
            "rootless",
            "container has runAsNonRoot and image will run as root (pod: \"rootless_default(",
        ),
        ("mighty", "privileged containers are not allowed on node"),
    ] {
        eventually(&format!("{name} is refused"), T, || async move {
            let p = pb::Pod::get(ch.clone(), get_req("default", name))
                .await
                .unwrap();
            let waiting = container_status(&p).state.and_then(|s| s.waiting);
            waiting.is_some_and(|w| {
                w.reason == "CreateContainerConfigError" && w.message.starts_with(start)
            })
        })
        .await;
    }
    assert!(
        agent.live_processes().is_empty(),
        "neither refused container runs"
    );
    drop(agent);
}

/// A startup probe runs first and alone: a liveness probe that always
/// fails is held back (no restart) until the startup probe succeeds, and
/// then restarts the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_startup_probe_holds_back_liveness() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let ch = env.ch.clone();
    let agent = env.agent("node");
    let flag = env.root.path().join("started");
    let flag_arg = flag.display().to_string();
    let main = container("main")
        .startup_exec(&["/usr/bin/test", "-e", &flag_arg], 600)
        .liveness_exec(&["/bin/false"], 1);
    pb::Pod::create(ch.clone(), pod("slow").container(main).build())
        .await
        .unwrap();
    let ch = &ch;
    let main_status = || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "slow"))
            .await
            .unwrap();
        container_status(&p)
    };
    eventually("the container runs, not started yet", T, || async {
        let s = main_status().await;
        s.state.is_some_and(|st| st.running.is_some()) && s.started == Some(false)
    })
    .await;
    // Several liveness periods: without the startup probe's hold it would
    // have been killed by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = main_status().await;
    assert_eq!(
        (s.restart_count, s.started, s.ready),
        (0, Some(false), false)
    );
    std::fs::write(&flag, "").unwrap();
    eventually(
        "once started, the failing liveness probe restarts it",
        T,
        || async { main_status().await.restart_count >= 1 },
    )
    .await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_adopts_its_running_pods() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (ch, pids) = (env.ch.clone(), env.pids.clone());
    let mut agent = env.agent("node");
    pb::Deployment::create(ch.clone(), sleepers("web", 3, &pids, "v1"))
        .await
        .unwrap();
    let names = running(&ch, "web", &pids, 3).await;
    let before: BTreeMap<String, i32> = names
        .iter()
        .map(|n| (n.clone(), pid_of(&pids, n).unwrap()))
        .collect();

    agent.kill();
    // While the agent is down one pod is deleted (scale to 2).
    set_replicas(&ch, "web", 2).await;
    eventually("the deployment drops a pod", T, || async {
        pods_of(&ch, "web").await.len() == 2
    })
    .await;
    let kept: BTreeSet<String> = pods_of(&ch, "web")
        .await
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    for pid in before.values() {
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "process {pid} died with the agent"
        );
    }
    agent.spawn();
    eventually("the deleted pod's process is stopped", T, || async {
        before
            .iter()
            .filter(|(n, _)| !kept.contains(*n))
            .all(|(n, _)| pid_of(&pids, n).is_none())
    })
    .await;
    // Give the new agent a few sync passes to do anything wrong.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in pods_of(&ch, "web").await {
        assert!(is_ready(&p), "{} is not ready after adoption", p.name());
        assert_eq!(
            container_status(&p).restart_count,
            0,
            "{} restarted",
            p.name()
        );
        assert_eq!(
            pid_of(&pids, p.name()),
            Some(before[p.name()]),
            "{} has a new process",
            p.name()
        );
    }
    assert_eq!(agent.live_processes().len(), 2);
}

async fn node_ready(ch: &Channel, name: &str) -> Option<String> {
    let n = pb::Node::get(ch.clone(), get_req("", name)).await.ok()?;
    n.status?
        .conditions
        .into_iter()
        .find(|c| c.r#type == "Ready")
        .map(|c| c.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_goes_not_ready_and_its_pods_move() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (ch, pids) = (env.ch.clone(), env.pids.clone());
    let mut lost = env.agent("lost");
    eventually("the first node is ready", T, || async {
        node_ready(&ch, &lost.name).await.as_deref() == Some("True")
    })
    .await;
    pb::Deployment::create(ch.clone(), sleepers("web", 2, &pids, "v1"))
        .await
        .unwrap();
    running(&ch, "web", &pids, 2).await;
    let survivor = env.agent("survivor");
    eventually("the second node is ready", T, || async {
        node_ready(&ch, &survivor.name).await.as_deref() == Some("True")
    })
    .await;

    lost.kill();
    eventually("the lost node is marked NotReady", T, || async {
        node_ready(&ch, &lost.name).await.as_deref() == Some("False")
    })
    .await;
    eventually("its pods are replaced on the other node", T, || async {
        let pods = pods_of(&ch, "web").await;
        pods.len() == 2
            && pods.iter().all(|p| {
                is_ready(p)
                    && p.spec.as_ref().unwrap().node_name == survivor.name
                    && pid_of(&pids, p.name()).is_some()
            })
    })
    .await;
    // The lost node's processes still run (its agent is gone, not its
    // host); dropping `lost` kills them.
    drop(lost);
}

/// The logs of pod `name`'s container `main` straight from its node's
/// agent, as the holder of the credentials `conf`: the status and the body.
async fn agent_logs(ch: &Channel, conf: &std::path::Path, name: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let creds = berth_client::credentials::load(conf, None).unwrap();
    let transport = berth_client::Transport::Tls(
        berth_tls::agent_client_config(&creds.ca_pem, Some(creds.slot)).unwrap(),
    );
    let pod = pb::Pod::get(ch.clone(), get_req("default", name))
        .await
        .unwrap();
    let node = pb::Node::get(ch.clone(), get_req("", pod.node_name()))
        .await
        .unwrap();
    let status = node.status.unwrap();
    let ip = status
        .addresses
        .iter()
        .find(|a| a.r#type == "InternalIP")
        .unwrap()
        .address
        .clone();
    let port = status
        .daemon_endpoints
        .unwrap()
        .kubelet_endpoint
        .unwrap()
        .port as u16;
    let path = format!("/containerLogs/default/{name}/main");
    let agent = berth_pki::Identity::Node(pod.node_name().to_string());
    let resp = berth_tls::http1::get(&transport, &ip, port, &path, Some(&agent))
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Answers every request 200 after appending its path to `log`: the
/// target of an httpGet preStop hook.
async fn drain_endpoint(log: std::path::PathBuf) -> u16 {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            std::io::Write::write_all(&mut f, format!("{path}\n").as_bytes()).unwrap();
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    port
}

/// Lifecycle hooks on the process runtime: a postStart hook ends before
/// the pod is Running; on deletion each container's preStop hook (exec in
/// one, httpGet in the other) runs before its SIGTERM; a failing
/// postStart hook kills its container, which waits to restart with
/// reason PostStartHookError.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_hooks_run_after_the_start_and_before_sigterm() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let out = env.root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let port = drain_endpoint(out.join("web")).await;
    cluster.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    command: [/bin/sh, -c, "trap 'echo term >> /out/main; exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      postStart: {{exec: {{command: [/bin/sh, -c, "sleep 1; echo started > /out/post"]}}}}
      preStop: {{exec: {{command: [/bin/sh, -c, "echo prestop >> /out/main"]}}}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  - name: web
    command: [/bin/sh, -c, "trap 'echo term >> /out/web; exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      preStop: {{httpGet: {{host: 127.0.0.1, port: {port}, path: /drain}}}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: {out}, type: Directory}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: refused}}
spec:
  containers:
  - name: main
    command: [/bin/sleep, "600"]
    lifecycle: {{postStart: {{exec: {{command: [/bin/false]}}}}}}
"#,
            out = out.display()
        ),
    );
    let out_of = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let ch = &ch;
    eventually("the hooked pod runs", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "hooked"))
            .await
            .unwrap();
        phase(&p) == "Running"
    })
    .await;
    assert_eq!(
        out_of("post"),
        "started\n",
        "the postStart hook ended before the pod ran"
    );

    let deleted = cluster
        .cli()
        .args(["delete", "pod", "hooked"])
        .output()
        .unwrap();
    assert!(deleted.status.success());
    eventually("the hooked pod is gone", T, || async move {
        pb::Pod::get(ch.clone(), get_req("default", "hooked"))
            .await
            .is_err()
    })
    .await;
    eventually("both containers saw SIGTERM", T, || async {
        out_of("main").ends_with("term\n") && out_of("web").ends_with("term\n")
    })
    .await;
    assert_eq!(out_of("main"), "prestop\nterm\n");
    assert_eq!(out_of("web"), "/drain\nterm\n");

    eventually("the failed postStart hook shows", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "refused"))
            .await
            .unwrap();
        let s = container_status(&p);
        let waiting = s.state.and_then(|s| s.waiting);
        waiting.is_some_and(|w| {
            w.reason == "PostStartHookError"
                && w.message.starts_with("Exec lifecycle hook ([\"/bin/false\"]) for container \"main\" in pod \"refused_default(")
        }) && s.last_state.is_some_and(|l| l.terminated.is_some())
    })
    .await;
    drop(agent);
}

/// `logs --tail`, `--since`, `--since-time` and `--timestamps` on the
/// process runtime, whose shim stamps each line as it reads it (stdout
/// and stderr are two pipes: lines written apart in time keep their
/// order, as with the CRI's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_take_the_last_lines_from_a_time_with_their_timestamps() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let talker = container("main")
        .shell("echo one; sleep 0.5; echo two >&2; sleep 2; echo three; exec sleep 600")
        .build();
    pb::Pod::create(ch.clone(), pod("talker").container(talker).build())
        .await
        .unwrap();
    let logs = |args: &[&str]| {
        let out = cluster
            .cli()
            .args(["logs", "talker"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    eventually("the pod has said three lines", T, || async {
        logs(&[]).1.lines().count() == 3
    })
    .await;
    assert_eq!(logs(&[]).1, "one\ntwo\nthree\n");
    assert_eq!(logs(&["--tail", "1"]).1, "three\n");
    assert_eq!(logs(&["--tail", "0"]).1, "");
    assert_eq!(logs(&["--since", "1h"]).1, "one\ntwo\nthree\n");

    let (_, stamped, _) = logs(&["--timestamps"]);
    let times: Vec<(std::time::SystemTime, &str)> = stamped
        .lines()
        .map(|l| {
            let (time, text) = l.split_once(' ').expect("a time, then the line");
            (humantime::parse_rfc3339(time).expect(time), text)
        })
        .collect();
    let texts: Vec<&str> = times.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let paused = times[2].0.duration_since(times[1].0).unwrap();
    assert!(paused >= Duration::from_secs(2), "{stamped}");
    let third = stamped.lines().nth(2).unwrap().split(' ').next().unwrap();
    assert_eq!(logs(&["--since-time", third]).1, "three\n");

    let (ok, _, err) = logs(&["--since-time", "yesterday"]);
    assert!(!ok);
    assert!(
        err.contains("sinceTime \"yesterday\" is not an RFC 3339 time"),
        "{err}"
    );
    drop(agent);
}

/// A native sidecar (an init container with restartPolicy Always) on the
/// process runtime: the next init container waits until it has started
/// (its startup probe passed), it runs beside the container, and once the
/// container has finished, the pod succeeds and the sidecar is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_starts_before_the_containers_and_stops_after_them() {
    let _serial = berth_testkit::serial().await;
    let env = env().await;
    let (cluster, ch) = (&env.cluster, env.ch.clone());
    let agent = env.agent("node");
    let out = env.root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    cluster.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: served}}
spec:
  restartPolicy: Never
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: [/bin/sh, -c, "trap 'echo proxy-term >> /out/log; exit 0' TERM; sleep 1; echo proxy-up >> /out/log; while true; do sleep 0.1; done"]
    startupProbe: {{exec: {{command: [/bin/grep, -q, proxy-up, /out/log]}}, periodSeconds: 1}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  - name: setup
    command: [/bin/sh, -c, "echo setup >> /out/log"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  containers:
  - name: main
    command: [/bin/sh, -c, "echo main >> /out/log"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: {out}, type: Directory}}}}
"#,
            out = out.display()
        ),
    );
    let log = || std::fs::read_to_string(out.join("log")).unwrap_or_default();
    let ch = &ch;
    eventually("the pod succeeds and its sidecar stops", T, || async move {
        let p = pb::Pod::get(ch.clone(), get_req("default", "served"))
            .await
            .unwrap();
        phase(&p) == "Succeeded" && log().ends_with("proxy-term\n")
    })
    .await;
    assert_eq!(log(), "proxy-up\nsetup\nmain\nproxy-term\n");
    drop(agent);
}
