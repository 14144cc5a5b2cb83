//! The audit log: one JSON line per call that changes the cluster (and
//! per call refused before it reached a service), saying who made it, from
//! where, what it asked for, how it ended and when. Each controller writes
//! the calls it served, in its data dir unless told (`--audit-log`),
//! rotated by size.
//!
//! Lines carry no request or object bodies, so a Secret's value never
//! reaches the log. Calls wait for their line to be queued, not written:
//! a writer thread gathers lines for 20 ms, appends and flushes them at
//! once and rotates, so the API never waits on the disk, yet no answered
//! mutation goes unrecorded while the controller runs.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use berth_pki::Identity;
use berth_tls::Peer;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::security::authorizer::Caller;

/// Lines queued for the writer before calls wait for it.
const QUEUE: usize = 16_384;
/// How long the writer lets lines gather before it writes them: at most
/// this much of the log is in memory only (Kubernetes' batching audit
/// backend waits up to a second).
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// Names the log's metrics with their help text.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "berth_controller_audit_lines_total",
        "Lines written to the audit log"
    );
    metrics::describe_counter!(
        "berth_controller_audit_write_errors_total",
        "Bursts of audit lines that could not be written (the disk is full or the file is gone)"
    );
    metrics::describe_counter!(
        "berth_controller_audit_rotations_total",
        "Times the audit log reached its size limit and was rotated"
    );
}

/// Where the log goes and how much of it is kept.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// The live file is rotated once it reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` the newest); older ones are deleted.
    pub max_backups: usize,
}

impl AuditConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
    pub const DEFAULT_MAX_BACKUPS: usize = 10;

    /// `DIR/audit.log`, 100 MiB a file, ten kept.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("audit.log"),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_backups: Self::DEFAULT_MAX_BACKUPS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source} (choose another place with --audit-log PATH)")]
pub struct AuditError {
    path: String,
    source: std::io::Error,
}

/// Who made a call: the identity its certificate names, and the address it
/// came from.
#[derive(Debug, Clone)]
pub struct Who {
    pub caller: Caller,
    pub source: Option<std::net::SocketAddr>,
}

impl Who {
    /// The maker of `req`; UNAUTHENTICATED without a certificate.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        Ok(Self {
            caller: Caller::of(req)?,
            source: req.extensions().get::<Peer>().and_then(|p| p.addr),
        })
    }

    fn from_peer(peer: Option<&Peer>) -> Self {
        // An insecure server's peers carry no identity.
        let caller = peer
            .and_then(|p| p.identity.as_deref())
            .map_or(Caller::Anyone, Caller::from);
        Self {
            caller,
            source: peer.and_then(|p| p.addr),
        }
    }

    /// The user name and groups, as Kubernetes' audit events name them.
    fn user(&self) -> (String, Vec<String>) {
        match &self.caller {
            Caller::Anyone => (
                "system:anonymous".into(),
                vec!["system:unauthenticated".into()],
            ),
            Caller::Controller(id) => (Identity::Controller(*id).name(), Vec::new()),
            Caller::Node(name) => {
                let node = Identity::Node(name.clone());
                (node.name(), node.groups())
            }
            Caller::User(user) => (user.name.clone(), user.groups.clone()),
        }
    }
}

/// One call, as the log records it.
#[derive(Debug, Serialize)]
struct Line<'a> {
    time: String,
    controller: u64,
    user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    verb: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subresource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    /// The gRPC status code's name: Ok, PermissionDenied, AlreadyExists...
    code: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

/// What a call did, for its line.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    pub verb: &'a str,
    /// A kind (`Pod`) for the object API, a service (`berth.cluster.v1.Cluster`)
    /// for the rest.
    pub kind: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Sends lines to the writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    controller: u64,
    lines: mpsc::Sender<String>,
}

impl AuditLog {
    /// Opens (or creates, 0600) the log and starts its writer, a thread
    /// of its own: writes block, and a thread serves any runtime.
    pub fn open(config: &AuditConfig, controller: u64) -> Result<Self, AuditError> {
        let file = File::open(config)?;
        let (lines, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || file.write_forever(rx))
            .map_err(|source| AuditError {
                path: config.path.display().to_string(),
                source,
            })?;
        Ok(Self { controller, lines })
    }

    /// Records `action` by `who` and how it ended.
    pub async fn record(&self, who: &Who, action: Action<'_>, outcome: Result<(), &tonic::Status>) {
        let (user, groups) = who.user();
        let (code, message) = match outcome {
            Ok(()) => (tonic::Code::Ok, ""),
            Err(s) => (s.code(), s.message()),
        };
        let line = Line {
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            controller: self.controller,
            user,
            groups,
            source: who.source.map(|a| a.to_string()),
            verb: action.verb,
            kind: action.kind,
            subresource: action.subresource,
            namespace: action.namespace,
            name: action.name,
            code: format!("{code:?}"),
            message,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        // Only a writer that died on a panic has gone: nothing to tell
        // the caller, whose call is done.
        let _ = self.lines.send(text).await;
    }

    /// Records a call outside the object API, or one the authz layer
    /// refused before a service saw it: named by its method, and made by
    /// whoever holds the connection.
    pub async fn record_method(
        &self,
        peer: Option<&Peer>,
        path: &str,
        outcome: Result<(), &tonic::Status>,
    ) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let action = Action {
            verb: method,
            kind: service,
            subresource: "",
            namespace: "",
            name: "",
        };
        self.record(&Who::from_peer(peer), action, outcome).await;
    }
}

/// The live file and its rotation.
struct File {
    config: AuditConfig,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl File {
    fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let failed = |source| AuditError {
            path: config.path.display().to_string(),
            source,
        };
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            berth_raft::identity::create_private_dir(dir).map_err(failed)?;
        }
        let file = Self::open_append(&config.path).map_err(failed)?;
        let size = file.metadata().map_err(failed)?.len();
        Ok(Self {
            config: config.clone(),
            out: std::io::BufWriter::new(file),
            size,
        })
    }

    fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
    }

    /// Until every sender is gone: wakes at the first line, lets the
    /// lines of a short window gather, then writes and flushes them at
    /// once, so that a busy controller pays one wake-up and one write per
    /// window, not per call.
    fn write_forever(mut self, mut rx: mpsc::Receiver<String>) {
        let mut burst = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            burst.push(first);
            std::thread::sleep(GATHER);
            while let Ok(line) = rx.try_recv() {
                burst.push(line);
            }
            if let Err(e) = self.write(&burst) {
                tracing::error!(path = %self.config.path.display(), error = %e, "cannot write the audit log");
                metrics::counter!("berth_controller_audit_write_errors_total").increment(1);
            }
            metrics::counter!("berth_controller_audit_lines_total").increment(burst.len() as u64);
            burst.clear();
        }
    }

    fn write(&mut self, lines: &[String]) -> std::io::Result<()> {
        for line in lines {
            self.out.write_all(line.as_bytes())?;
            self.size += line.len() as u64;
            if self.size >= self.config.max_bytes {
                self.rotate()?;
            }
        }
        self.out.flush()
    }

    /// PATH becomes PATH.1, PATH.1 PATH.2, and so on; the oldest beyond
    /// `max_backups` goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let path = &self.config.path;
        let numbered = |n: usize| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.config.max_backups;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.out = std::io::BufWriter::new(Self::open_append(path)?);
        self.size = 0;
        metrics::counter!("berth_controller_audit_rotations_total").increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Who {
        Who {
            caller: Caller::User(berth_rbac::User {
                name: name.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            }),
            source: Some("127.0.0.1:5000".parse().unwrap()),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_call_is_a_line_and_full_files_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            path: dir.path().join("audit/audit.log"),
            max_bytes: 1000,
            max_backups: 2,
        };
        let log = AuditLog::open(&config, 3).unwrap();
        let create = Action {
            verb: "create",
            kind: "Secret",
            subresource: "",
            namespace: "team",
            name: "db",
        };
        log.record(&user("alice", &["dev"]), create, Ok(())).await;
        let denied = tonic::Status::permission_denied("forbidden: bob cannot delete secrets");
        let delete = Action {
            verb: "delete",
            ..create
        };
        log.record(&user("bob", &[]), delete, Err(&denied)).await;
        let path = config.path.clone();
        wait_until(|| lines(&path).len() == 2).await;
        let got = lines(&path);
        assert_eq!(got[0]["user"], "alice");
        assert_eq!(got[0]["groups"][0], "dev");
        assert_eq!(got[0]["source"], "127.0.0.1:5000");
        assert_eq!(got[0]["controller"], 3);
        assert_eq!(
            (
                &got[0]["verb"],
                &got[0]["kind"],
                &got[0]["namespace"],
                &got[0]["name"],
                &got[0]["code"]
            ),
            (
                &"create".into(),
                &"Secret".into(),
                &"team".into(),
                &"db".into(),
                &"Ok".into()
            )
        );
        assert!(got[0].get("message").is_none());
        assert_eq!(got[1]["code"], "PermissionDenied");
        assert_eq!(got[1]["message"], "forbidden: bob cannot delete secrets");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        // About 200 bytes a line: 30 lines fill several files, of which
        // the live one and two rotated are kept.
        for _ in 0..30 {
            log.record(&user("alice", &[]), create, Ok(())).await;
        }
        let rotated = |n: usize| dir.path().join(format!("audit/audit.log.{n}"));
        wait_until(|| rotated(2).exists()).await;
        assert!(!rotated(3).exists(), "only two rotated files are kept");
        for n in [1, 2] {
            let size = std::fs::metadata(rotated(n)).unwrap().len();
            assert!((1000..1400).contains(&size), "{n}: {size}");
            assert!(lines(&rotated(n)).iter().all(|l| l["verb"] == "create"));
        }
    }

    /// Polls `done` for up to ten seconds.
    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("timed out");
    }
}
