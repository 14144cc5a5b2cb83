//! Controllers as real `berth server` processes with their own data dirs,
//! broken on purpose (SIGKILL, SIGSTOP, a wiped data dir). Used by
//! `berth bench` and the end-to-end tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use berth_api::pb;
use berth_client::objects::ClientKind;
use berth_client::Transport;
use nix::sys::signal::Signal;
use tonic::transport::Channel;

use crate::flags::Membership;
use crate::flags::ServerCommand;
use crate::flags::ServerFlags;
use crate::process::Process;
use crate::rpc;

/// How a cluster's controllers are started.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub flags: ServerFlags,
    /// Where controllers' logs go; the cluster's root dir when None.
    pub log_dir: Option<PathBuf>,
    /// The address controllers listen on; 127.0.0.1 when None (a test
    /// fabric of network namespaces gives one of its own).
    pub host: Option<String>,
}

impl ClusterOptions {
    /// `flags`, logging where `BERTH_TEST_LOGS` says (to keep them after a
    /// run) or beside the data.
    pub fn for_tests(flags: ServerFlags) -> Self {
        Self {
            flags,
            log_dir: std::env::var_os("BERTH_TEST_LOGS").map(Into::into),
            host: None,
        }
    }
}

pub struct Controller {
    pub command: ServerCommand,
    pub process: Process,
}

impl Controller {
    pub fn addr(&self) -> &str {
        &self.command.listen
    }
}

pub struct Cluster {
    binary: PathBuf,
    root: PathBuf,
    options: ClusterOptions,
    /// `--token` of its `--peers` bootstrap.
    secret: String,
    /// The admin's and a controller's transports, made once: every
    /// controller's CA is the cluster's, so they outlive a wiped controller.
    admin: OnceLock<Transport>,
    controller: OnceLock<Transport>,
    pub controllers: BTreeMap<u64, Controller>,
}

impl Cluster {
    /// Starts `n` controllers that bootstrap one cluster.
    pub fn start(binary: &Path, root: &Path, n: u64, options: ClusterOptions) -> Self {
        let host = options.host.clone().unwrap_or("127.0.0.1".into());
        let listen: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, format!("{host}:{}", crate::free_port_on(&host))))
            .collect();
        let peers = Membership::Peers(listen.clone().into_iter().collect());
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            options,
            secret: format!("test-{}", uuid::Uuid::new_v4().simple()),
            admin: OnceLock::new(),
            controller: OnceLock::new(),
            controllers: BTreeMap::new(),
        };
        let secret = (!cluster.is_insecure()).then(|| cluster.secret.clone());
        for (id, addr) in listen {
            cluster.add(id, addr, peers.clone(), secret.clone());
        }
        cluster
    }

    /// Three controllers of the `berth` binary beside the test, once they
    /// have a leader and their built-in namespaces; panics otherwise.
    pub async fn ready(root: &Path, flags: ServerFlags) -> Self {
        Self::ready_with(root, ClusterOptions::for_tests(flags)).await
    }

    /// `ready`, with every option.
    pub async fn ready_with(root: &Path, options: ClusterOptions) -> Self {
        let cluster = Self::start(&crate::berth_binary(), root, 3, options);
        cluster
            .wait_for_leader(&[1, 2, 3], Duration::from_secs(20))
            .await
            .expect("the cluster elects a leader within 20 s");
        let ch = cluster.channel().await;
        crate::eventually(
            "the built-in namespaces exist",
            Duration::from_secs(20),
            || {
                let ch = ch.clone();
                async move {
                    for ns in ["default", berth_api::names::SYSTEM_NAMESPACE] {
                        let req = crate::objects::get_req("", ns);
                        if pb::Namespace::get(ch.clone(), req).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
        cluster
    }

    /// Adds controller `id` listening on `addr` and starts it.
    fn add(&mut self, id: u64, listen: String, membership: Membership, token: Option<String>) {
        let host = listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        let command = ServerCommand {
            token,
            id,
            metrics_listen: Some(format!("{host}:{}", crate::free_port_on(host))),
            listen,
            data_dir: self.root.join(format!("controller-{id}")),
            membership,
            flags: self.options.flags.clone(),
        };
        let log = self
            .options
            .log_dir
            .as_deref()
            .unwrap_or(&self.root)
            .join(format!("controller-{id}.log"));
        let process = Process::new(
            &format!("controller-{id}"),
            &self.binary,
            command.args(),
            log,
        );
        self.controllers.insert(id, Controller { command, process });
        self.spawn(id);
    }

    /// Adds controller `id`, which joins through controller `via`
    /// (`berth server --join`).
    pub fn add_joining(&mut self, id: u64, via: u64) {
        let host = self.options.host.clone().unwrap_or("127.0.0.1".into());
        let listen = format!("{host}:{}", crate::free_port_on(&host));
        let token = (!self.is_insecure()).then(|| self.join_token("controller"));
        let via = Membership::Join(self.addr(via));
        self.add(id, listen, via, token);
    }

    /// Starts controller `id` (again, after a kill).
    pub fn spawn(&mut self, id: u64) {
        let c = self.controllers.get_mut(&id).expect("a known controller");
        assert!(
            !c.process.is_started(),
            "controller {id} is already running"
        );
        c.process.start().expect("start berth server");
    }

    pub fn signal(&self, id: u64, signal: Signal) {
        self.controllers[&id].process.signal(signal);
    }

    /// SIGKILLs controller `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let c = self.controllers.get_mut(&id).expect("a known controller");
        c.process.kill();
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let c = self.controllers.get_mut(&id).expect("a known controller");
        c.process.is_running()
    }

    pub fn wipe(&mut self, id: u64) {
        let _ = std::fs::remove_dir_all(&self.controllers[&id].command.data_dir);
    }

    /// The `berth` binary its controllers run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn addrs(&self) -> Vec<String> {
        self.controllers
            .values()
            .map(|c| c.addr().to_string())
            .collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.controllers[&id].addr().to_string()
    }

    pub fn metrics_addr(&self, id: u64) -> String {
        let c = &self.controllers[&id].command;
        c.metrics_listen
            .clone()
            .expect("a cluster's controllers serve metrics")
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.controllers[&id].command.data_dir
    }

    pub fn is_insecure(&self) -> bool {
        self.options.flags.insecure
    }

    /// The data dir of a controller that wrote its credentials, waiting
    /// up to 30 s for one.
    fn credentials_dir(&self) -> &Path {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dirs = self
                .controllers
                .values()
                .map(|c| c.command.data_dir.as_path());
            if let Some(dir) = crate::tls::written(dirs) {
                return dir;
            }
            assert!(
                Instant::now() < deadline,
                "no controller wrote admin.conf within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin credentials a controller wrote.
    pub fn admin_conf(&self) -> PathBuf {
        self.credentials_dir().join("admin.conf")
    }

    /// How a cluster administrator reaches it.
    pub fn transport(&self) -> Transport {
        if self.is_insecure() {
            return Transport::Insecure;
        }
        self.admin
            .get_or_init(|| {
                crate::tls::admin_transport(self.credentials_dir())
                    .expect("the admin credentials load")
            })
            .clone()
    }

    /// How a controller reaches it: for the internal services (raw KV,
    /// Raft), which are for controllers alone.
    pub fn controller_transport(&self) -> Transport {
        if self.is_insecure() {
            return Transport::Insecure;
        }
        self.controller
            .get_or_init(|| {
                crate::tls::controller_transport(self.credentials_dir())
                    .expect("a controller identity")
            })
            .clone()
    }

    /// A join token for `role` (agent or controller), from the CLI.
    pub fn join_token(&self, role: &str) -> String {
        let out = self
            .cli()
            .args(["token", "create", "--role", role])
            .output()
            .expect("run berth token create");
        assert!(
            out.status.success(),
            "berth token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Credentials for a new user `name` in `groups` (`berth user
    /// create`), written to `dir/NAME.conf`: the file, and how its holder
    /// reaches the cluster.
    pub fn user(&self, dir: &Path, name: &str, groups: &[&str]) -> (PathBuf, Transport) {
        let mut cmd = self.cli();
        cmd.args(["user", "create", name]);
        for g in groups {
            cmd.args(["--group", g]);
        }
        let out = cmd.output().expect("run berth user create");
        assert!(
            out.status.success(),
            "berth user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, &out.stdout).expect("write the user's credentials");
        let transport = berth_client::credentials::load(&path, None)
            .expect("the new user's credentials load")
            .transport;
        (path, transport)
    }

    /// A `berth` CLI command as the holder of the credentials `conf`.
    pub fn cli_as(&self, conf: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--server")
            .arg(self.addrs().join(","))
            .arg("--config")
            .arg(conf);
        cmd
    }

    /// A channel to whichever controller answers first.
    pub async fn channel(&self) -> Channel {
        berth_client::connect::connect(&self.addrs(), &self.transport())
            .await
            .expect("connect to the cluster")
            .1
    }

    /// A channel to controller `id` only (no leader following beyond what
    /// the client does per request).
    pub async fn channel_to(&self, id: u64) -> Channel {
        berth_client::connect::connect(&[self.addr(id)], &self.transport())
            .await
            .expect("connect to the controller")
            .1
    }

    /// A `berth` CLI command aimed at this cluster (`--server` set, and
    /// its admin credentials).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--server").arg(self.addrs().join(","));
        match self.is_insecure() {
            true => cmd.arg("--insecure"),
            false => cmd.arg("--config").arg(self.admin_conf()),
        };
        cmd
    }

    /// Runs `berth ARGS` as `cli` aims it, with `stdin` as its input, to
    /// the end.
    pub fn run_cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run berth");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("berth exits")
    }

    /// `berth apply -f -` of `manifest`, which must succeed.
    pub fn apply(&self, manifest: &str) {
        let out = self.run_cli(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until a leader is known to every listed controller and they
    /// agree on it.
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
        let transport = self.transport();
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for id in among {
                let status = rpc::status(&transport, &self.addr(*id)).await;
                leaders.push(status.and_then(|s| s.leader));
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
