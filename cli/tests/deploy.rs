//! deploy/: the examples are valid manifests, the systemd units pass
//! `systemd-analyze verify`, and the compose cluster built from the image
//! that deploy/build-image.sh makes really runs: three controllers and two
//! agents come up on this machine's Docker Engine, run an example
//! deployment, take a change with one controller stopped, and leave no
//! container, network or volume behind. Each part says why it skipped when
//! this machine lacks what it needs.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_testkit::eventually;
use berth_testkit::free_port;
use berth_testkit::objects::list_req;
use berth_testkit::unique;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_berth");
const T: Duration = Duration::from_secs(90);

/// Runs `cmd` to its end and returns its output; panics with its stderr
/// if it failed.
fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn examples_are_valid_manifests() {
    let mut seen = 0;
    for entry in std::fs::read_dir(deploy_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let objects =
            berth_api::manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!objects.is_empty(), "{} holds no object", path.display());
        seen += 1;
    }
    assert!(
        seen >= 5,
        "expected the examples of every feature, found {seen}"
    );
}

#[test]
fn systemd_units_pass_verify() {
    if !succeeds("systemd-analyze", &["--version"]) {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for unit in ["berth-server.service", "berth-agent.service"] {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
        // verify checks that ExecStart's binary exists: point it at this
        // build's instead of the installed path.
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/berth", BIN)).unwrap();
        units.push(path.display().to_string());
    }
    run_ok(Command::new("systemd-analyze").arg("verify").args(&units));
}

/// docker-compose (Debian's) or the `docker compose` plugin.
fn compose_command() -> Option<Vec<String>> {
    if succeeds("docker-compose", &["version"]) {
        return Some(vec!["docker-compose".into()]);
    }
    succeeds("docker", &["compose", "version"]).then(|| vec!["docker".into(), "compose".into()])
}

/// One compose project of the test; `down -v` on drop, also after a failure.
struct Project {
    command: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let compose_file = deploy_dir().join("compose.yaml");
        let out = Command::new(&self.command[0])
            .args(&self.command[1..])
            .args(["-p", &self.name, "-f"])
            .arg(&compose_file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What Docker still has of the project: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for what in [
            &["ps", "-a", "-q", "--filter"][..],
            &["network", "ls", "-q", "--filter"][..],
            &["volume", "ls", "-q", "--filter"][..],
        ] {
            let out = Command::new("docker")
                .args(what)
                .arg(&label)
                .output()
                .unwrap();
            left.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(|id| format!("{} {id}", what[0])),
            );
        }
        left
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(logs) = self.run(&["logs", "--tail=30"]) {
                eprintln!("{logs}");
            }
        }
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

async fn connect(addrs: &[String], admin: &Path) -> Channel {
    let transport = berth_client::credentials::load(admin, None)
        .expect("the admin credentials load")
        .transport;
    berth::client::connect(addrs, &transport)
        .await
        .expect("connect")
        .1
}

async fn running_pods(ch: &Channel, app: &str) -> usize {
    let req = list_req("default", &format!("app={app}"));
    let Ok((pods, _)) = pb::Pod::list(ch.clone(), req).await else {
        return 0;
    };
    pods.iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase == "Running" && !s.pod_ip.is_empty())
        })
        .count()
}

fn berth(addrs: &[String], admin: &Path, args: &[&str]) {
    run_ok(
        Command::new(BIN)
            .arg("--config")
            .arg(admin)
            .args(["--server", &addrs.join(",")])
            .args(args),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_runs_pods_and_survives_a_stopped_controller() {
    if !succeeds("docker", &["info"]) {
        eprintln!("skipped: no Docker Engine answers (start dockerd)");
        return;
    }
    let Some(command) = compose_command() else {
        eprintln!("skipped: neither docker-compose nor `docker compose` is installed");
        return;
    };
    let name = unique("berthdeploy").replace('-', "");
    let image = format!("berth-test/{name}:dev");
    run_ok(
        Command::new(deploy_dir().join("build-image.sh"))
            .env("BERTH_BIN", BIN)
            .env("TAG", &image),
    );
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut env = vec![
        ("BERTH_IMAGE".to_string(), image.clone()),
        ("BERTH_TOKEN".to_string(), format!("{name}-secret")),
    ];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("BERTH_PORT_{}", i + 1), port.to_string()));
    }
    let mut project = Project { command, name, env };
    // The controllers first; the agents join with a token they make.
    project
        .run(&["up", "-d", "c1", "c2", "c3"])
        .expect("compose up the controllers");
    let in_c1 = [
        "exec",
        "-T",
        "c1",
        "berth",
        "--config",
        "/var/lib/berth/admin.conf",
        "--server",
        "127.0.0.1:7000",
    ];
    let mut token = String::new();
    eventually("the controllers make an agent token", T, || {
        let made = project.run(&[&in_c1[..], &["token", "create", "--role", "agent"]].concat());
        if let Ok(t) = &made {
            token = t.trim().to_string();
        }
        let ok = made.is_ok();
        async move { ok }
    })
    .await;
    project.env.push(("BERTH_AGENT_TOKEN".into(), token));
    project.run(&["up", "-d"]).expect("compose up the agents");
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.conf");
    let conf = project
        .run(&["exec", "-T", "c1", "cat", "/var/lib/berth/admin.conf"])
        .expect("read the admin credentials");
    std::fs::write(&admin, conf).unwrap();

    let ch = connect(&addrs, &admin).await;
    eventually("both agents' nodes are Ready", T, || async {
        let Ok((nodes, _)) = pb::Node::list(ch.clone(), Default::default()).await else {
            return false;
        };
        nodes
            .iter()
            .filter(|n| berth_api::resources::node_is_ready(n))
            .count()
            == 2
    })
    .await;
    let example = deploy_dir().join("examples/web.yaml");
    berth(&addrs, &admin, &["apply", "-f", example.to_str().unwrap()]);
    eventually("the example's 2 pods run with addresses", T, || async {
        running_pods(&ch, "web").await == 2
    })
    .await;

    project.run(&["stop", "-t", "1", "c1"]).expect("stop c1");
    let rest = addrs[1..].to_vec();
    berth(
        &rest,
        &admin,
        &["scale", "deployment", "web", "--replicas", "3"],
    );
    let ch = connect(&rest, &admin).await;
    eventually("3 pods run with one controller stopped", T, || async {
        running_pods(&ch, "web").await == 3
    })
    .await;

    // The agents stop the pods (and remove their cgroups) before they go.
    berth(&rest, &admin, &["delete", "deployment", "web"]);
    eventually("the pods are gone", T, || async {
        let req = pb::ListRequest {
            namespace: "default".into(),
            label_selector: "app=web".into(),
            ..Default::default()
        };
        pb::Pod::list(ch.clone(), req)
            .await
            .is_ok_and(|(pods, _)| pods.is_empty())
    })
    .await;
    // An agent removes a pod's directory after its processes and cgroups:
    // none left means nothing of the pods stays on the host.
    eventually(
        "the agents removed the pods' processes and cgroups",
        T,
        || async {
            ["agent-1", "agent-2"].iter().all(|agent| {
                project
                    .run(&["exec", "-T", agent, "ls", "/var/lib/berth/pods"])
                    .is_ok_and(|listing| listing.trim().is_empty())
            })
        },
    )
    .await;
    project
        .run(&["down", "-v", "--remove-orphans", "-t", "5"])
        .expect("compose down");
    assert_eq!(project.leftovers(), Vec::<String>::new(), "left behind");
    // The agents shared the host's cgroups: their nodes' groups are empty
    // now, and go (rmdir refuses a group still in use).
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for node in ["agent-1", "agent-2"] {
            let _ = std::fs::remove_dir(controller.path().join("berth").join(node));
        }
    }
    let _ = Command::new("docker")
        .args(["image", "rm", &image])
        .output();
}
