//! Runs controllers as real `berth server` processes on 127.0.0.1 with
//! their own data dirs, and breaks them on purpose (SIGKILL, SIGSTOP,
//! wiping a data dir). Used by `berth bench failover` and the tests.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use berth_proto::cluster as cpb;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::kv as kpb;
use berth_proto::kv::kv_client::KvClient;
use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::client::endpoint;

/// Extra `berth server` flags every controller of a harness gets.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub extra_args: Vec<String>,
    /// Where controllers' logs go; the cluster's root dir when None.
    pub log_dir: Option<PathBuf>,
    /// The address controllers listen on; 127.0.0.1 when None (a test
    /// fabric of network namespaces gives one of its own).
    pub host: Option<String>,
}

pub struct Controller {
    pub id: u64,
    pub addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// The flag that made it a member: `--peers ...` or `--join ...`.
    membership_args: Vec<String>,
}

pub struct Cluster {
    binary: PathBuf,
    root: PathBuf,
    options: Options,
    pub controllers: BTreeMap<u64, Controller>,
}

/// A free port on 127.0.0.1, below Linux's ephemeral range (32768 and up by
/// default): a port the kernel hands out for binding can be handed out
/// again as the source port of an outgoing connection before the
/// controller binds it, and a controller that cannot listen never joins.
/// Checked free by binding; tests start few enough processes for a race
/// with another binder to be rare.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// `free_port` on another local address.
pub fn free_port_on(host: &str) -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {host} between 20000 and 32000")
}

impl Cluster {
    /// Starts `n` controllers that bootstrap one cluster.
    pub fn start(binary: &Path, root: &Path, n: u64, options: Options) -> Self {
        let mut controllers = BTreeMap::new();
        for id in 1..=n {
            controllers.insert(id, Self::controller(root, id, &options));
        }
        let peers = controllers
            .values()
            .map(|c| format!("{}={}", c.id, c.addr))
            .collect::<Vec<_>>()
            .join(",");
        for c in controllers.values_mut() {
            c.membership_args = vec!["--peers".into(), peers.clone()];
        }
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            options,
            controllers,
        };
        let ids: Vec<u64> = cluster.controllers.keys().copied().collect();
        for id in ids {
            cluster.spawn(id);
        }
        cluster
    }

    fn controller(root: &Path, id: u64, options: &Options) -> Controller {
        let host = options.host.as_deref().unwrap_or("127.0.0.1");
        Controller {
            id,
            addr: format!("{host}:{}", free_port_on(host)),
            metrics_addr: format!("{host}:{}", free_port_on(host)),
            data_dir: root.join(format!("controller-{id}")),
            child: None,
            membership_args: Vec::new(),
        }
    }

    /// Adds controller `id` that joins through `via` (not started yet as a
    /// member; `berth server --join`).
    pub fn add_joining(&mut self, id: u64, via: u64) {
        let via_addr = self.controllers[&via].addr.clone();
        let mut c = Self::controller(&self.root, id, &self.options);
        c.membership_args = vec!["--join".into(), via_addr];
        self.controllers.insert(id, c);
        self.spawn(id);
    }

    pub fn spawn(&mut self, id: u64) {
        let log_path = self.log_path(id);
        let c = self.controllers.get_mut(&id).expect("known controller");
        assert!(c.child.is_none(), "controller {id} is already running");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--listen", &c.addr])
            .args(["--metrics-listen", &c.metrics_addr])
            .arg("--data-dir")
            .arg(&c.data_dir)
            .args(&c.membership_args)
            .args(&self.options.extra_args)
            .stdin(Stdio::null());
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).expect("create the log dir");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open a controller log");
        cmd.stdout(log.try_clone().expect("dup log")).stderr(log);
        c.child = Some(cmd.spawn().expect("start berth server"));
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.options
            .log_dir
            .as_deref()
            .unwrap_or(&self.root)
            .join(format!("controller-{id}.log"))
    }

    /// Prints the end of every controller's log, so that a failed test in
    /// CI says what the controllers were doing.
    fn print_log_tails(&self) {
        const LINES: usize = 40;
        for id in self.controllers.keys() {
            let path = self.log_path(*id);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LINES)..];
            eprintln!("--- last {} lines of {}", tail.len(), path.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }

    pub fn signal(&mut self, id: u64, signal: Signal) {
        if let Some(child) = &self.controllers[&id].child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// SIGKILLs controller `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let c = self.controllers.get_mut(&id).expect("known controller");
        if let Some(mut child) = c.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let c = self.controllers.get_mut(&id).expect("known controller");
        match &mut c.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn wipe(&mut self, id: u64) {
        let dir = self.controllers[&id].data_dir.clone();
        let _ = std::fs::remove_dir_all(dir);
    }

    pub fn addrs(&self) -> Vec<String> {
        self.controllers.values().map(|c| c.addr.clone()).collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.controllers[&id].addr.clone()
    }

    /// Waits until a leader is known to controller `via` (any running one
    /// when None) and every listed controller agrees on it.
    pub async fn wait_for_leader(&self, among: &[u64], timeout: Duration) -> Option<u64> {
        self.wait_for_leader_other_than(among, None, timeout).await
    }

    /// Like `wait_for_leader`, but ignores `old` (a leader just killed,
    /// which the others still believe in until their election timeout).
    pub async fn wait_for_leader_other_than(
        &self,
        among: &[u64],
        old: Option<u64>,
        timeout: Duration,
    ) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for id in among {
                match status(&self.addr(*id)).await {
                    Some(s) => leaders.push(s.leader),
                    None => leaders.push(None),
                }
            }
            if let Some(Some(l)) = leaders.first() {
                if Some(*l) != old && leaders.iter().all(|x| *x == Some(*l)) {
                    return Some(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        for c in self.controllers.values_mut() {
            if let Some(mut child) = c.child.take() {
                // A stopped process only dies of SIGKILL once continued.
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

async fn channel(addr: &str) -> Option<Channel> {
    endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .ok()
}

pub async fn status(addr: &str) -> Option<cpb::StatusResponse> {
    let ch = channel(addr).await?;
    let mut req = tonic::Request::new(cpb::StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    ClusterClient::new(ch)
        .status(req)
        .await
        .ok()
        .map(|r| r.into_inner())
}

pub async fn kv(addr: &str) -> Option<KvClient<Channel>> {
    Some(KvClient::new(channel(addr).await?))
}

/// One put with a deadline.
pub async fn put(
    client: &mut KvClient<Channel>,
    key: &str,
    value: &[u8],
    timeout: Duration,
) -> Result<u64, tonic::Status> {
    let mut req = tonic::Request::new(kpb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        precondition: None,
    });
    req.set_timeout(timeout);
    Ok(client.put(req).await?.into_inner().revision)
}

/// One read of a key, linearizable unless `serializable`.
pub async fn get(
    client: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
    timeout: Duration,
) -> Result<Option<kpb::KeyValue>, tonic::Status> {
    let mut req = tonic::Request::new(kpb::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    });
    req.set_timeout(timeout);
    Ok(client.range(req).await?.into_inner().kvs.into_iter().next())
}

/// Makes sure the Docker Engine has image `tag`: a rootfs of Debian's
/// busybox-static (`/bin/busybox`, with relative applet links), brought in
/// with `docker import`. No registry is involved.
pub fn busybox_image(tag: &str) -> Result<(), String> {
    import_busybox(tag, &[])
}

/// A pause image for the docker runtime's pod sandboxes (`--pause-image`):
/// busybox, waiting forever.
pub fn pause_image(tag: &str) -> Result<(), String> {
    import_busybox(tag, &["--change", r#"CMD ["/bin/sleep", "2147483647"]"#])
}

/// `busybox_image`, with `docker import` options (`--change ...`).
fn import_busybox(tag: &str, options: &[&str]) -> Result<(), String> {
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if docker(&["image", "inspect", tag]) {
        return Ok(());
    }
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("copy /bin/busybox (install Debian's busybox-static): {e}"))?;
    let applets = [
        "sh", "sleep", "echo", "cat", "true", "false", "ls", "env", "mktemp", "httpd", "wget",
        "nslookup",
    ];
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run tar: {e}"))?;
    let imported = Command::new("docker")
        .arg("import")
        .args(options)
        .args(["-", tag])
        .stdin(tar.stdout.take().ok_or("tar has no stdout")?)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("run docker import: {e}"))?;
    let tarred = tar.wait().map_err(|e| e.to_string())?;
    if !(imported.success() && tarred.success()) {
        return Err(format!("docker import of {tag} failed"));
    }
    Ok(())
}

/// Removes every container a docker-runtime agent of node `node` made
/// (they carry the label `berth.node=NODE`), running or not.
pub fn remove_docker_containers(node: &str) {
    let label = format!("label=berth.node={node}");
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
