//! Which cluster a controller's data dir belongs to.
//!
//! The cluster id is chosen when a cluster is bootstrapped and travels on
//! every Raft call as the `berth-cluster-id` header; a controller refuses
//! calls from another cluster, and refuses to start when its peers belong
//! to another one. A data dir that has no cluster id yet adopts the first
//! one it is contacted with, which is how a controller started without
//! `--peers` or `--join` is added with `berth cluster add-member`.

use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;

use serde::Deserialize;
use serde::Serialize;

pub const CLUSTER_ID_HEADER: &str = "berth-cluster-id";

/// Creates data dir `dir` (with its parents) readable by its owner only:
/// it holds the cluster's state, and soon its keys.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
const FILE_NAME: &str = "identity.json";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("could not read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({source}); restore it from a backup or start with an empty data dir"
    )]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "data dir {dir} belongs to controller {stored}, not {requested}: start with --id {stored}, or use an empty data dir"
    )]
    WrongNode {
        dir: String,
        stored: u64,
        requested: u64,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Stored {
    node_id: u64,
    cluster_id: Option<String>,
}

/// The node id and (once known) the cluster id of a data dir.
#[derive(Clone)]
pub struct Identity {
    path: PathBuf,
    node_id: u64,
    cluster_id: Arc<RwLock<Option<String>>>,
    /// The data dir was empty when this process started.
    fresh: bool,
    /// Whether this controller may grant votes; see `set_voting`.
    voting: Arc<AtomicBool>,
}

impl Identity {
    /// Loads the identity of `dir`, creating it for a new data dir.
    pub fn load_or_create(dir: &Path, node_id: u64) -> Result<Self, IdentityError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: shown.clone(),
            source,
        };
        let mut fresh = false;
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Stored>(&bytes).map_err(|source| {
                IdentityError::Corrupt {
                    path: path.display().to_string(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fresh = true;
                Stored {
                    node_id,
                    cluster_id: None,
                }
            }
            Err(e) => return Err(io(e)),
        };
        if stored.node_id != node_id {
            return Err(IdentityError::WrongNode {
                dir: dir.display().to_string(),
                stored: stored.node_id,
                requested: node_id,
            });
        }
        let id = Self {
            path,
            node_id,
            cluster_id: Arc::new(RwLock::new(stored.cluster_id)),
            fresh,
            voting: Arc::new(AtomicBool::new(true)),
        };
        id.save(id.cluster_id()).map_err(io)?;
        Ok(id)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// A controller that lost its data and rejoins must not vote until it
    /// has been removed and added back: it no longer knows whom it voted
    /// for, and a second vote in one term could elect two leaders.
    pub fn set_voting(&self, voting: bool) {
        self.voting.store(voting, Ordering::SeqCst);
    }

    pub fn may_vote(&self) -> bool {
        self.voting.load(Ordering::SeqCst)
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().expect("identity lock").clone()
    }

    /// Records the cluster this data dir belongs to; durable on return.
    pub fn set_cluster_id(&self, cluster_id: &str) -> std::io::Result<()> {
        // Held while saving: concurrent first calls (bootstrap, and Raft
        // calls adopting the caller's cluster) would otherwise race on the
        // temporary file.
        let mut current = self.cluster_id.write().expect("identity lock");
        self.save(Some(cluster_id.to_string()))?;
        *current = Some(cluster_id.to_string());
        Ok(())
    }

    /// Whether a call carrying `presented` may be served; adopts it when
    /// this data dir has no cluster yet and `adopt` allows.
    pub fn admit(&self, presented: Option<&str>, adopt: bool) -> Result<(), String> {
        let current = self.cluster_id();
        match (current.as_deref(), presented) {
            (Some(mine), Some(theirs)) if mine == theirs => Ok(()),
            (Some(mine), Some(theirs)) => Err(format!(
                "this controller belongs to cluster {mine}, the caller to cluster {theirs}"
            )),
            (None, Some(theirs)) if adopt => self
                .set_cluster_id(theirs)
                .map_err(|e| format!("could not record the cluster id: {e}")),
            (None, Some(_)) => Err("this controller has not joined a cluster yet".to_string()),
            (_, None) => Err(format!("the call carries no {CLUSTER_ID_HEADER} header")),
        }
    }

    fn save(&self, cluster_id: Option<String>) -> std::io::Result<()> {
        let stored = Stored {
            node_id: self.node_id,
            cluster_id,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dirs_are_private_to_their_owner_even_when_they_existed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir(&dir).unwrap();
        let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn refuses_another_node_and_another_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path(), 1).unwrap();
        assert!(id.admit(Some("a"), false).is_err());
        id.admit(Some("a"), true).unwrap();
        assert!(id.admit(Some("b"), true).is_err());
        assert!(id.admit(None, true).is_err());
        let again = Identity::load_or_create(dir.path(), 1).unwrap();
        assert_eq!(again.cluster_id().as_deref(), Some("a"));
        assert!(matches!(
            Identity::load_or_create(dir.path(), 2),
            Err(IdentityError::WrongNode { .. })
        ));
    }
}
