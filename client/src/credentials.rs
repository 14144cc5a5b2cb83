//! Credentials files (kubeconfig's shape, see `berth-pki`) turned into a
//! way to reach the cluster: the file named by `--config`, else
//! `$BERTH_CONFIG`, else `~/.berth/config`.

use std::path::Path;
use std::path::PathBuf;

use berth_pki::Credentials;
use berth_pki::Issued;
use berth_tls::CertSlot;
use berth_tls::Transport;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no credentials: pass --config FILE, set $BERTH_CONFIG, or write ~/.berth/config (`berth dev` does; a controller writes DIR/admin.conf; `berth user create` makes one), or --insecure for a cluster run --insecure")]
    Missing,
    #[error("cannot read credentials {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}")]
    Invalid {
        path: String,
        source: berth_pki::PkiError,
    },
    #[error("{path}")]
    Tls {
        path: String,
        source: berth_tls::TlsError,
    },
}

/// Where the credentials are: `explicit`, else `$BERTH_CONFIG`, else
/// `~/.berth/config`, if that exists.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("BERTH_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = default_path()?;
    home.exists().then_some(home)
}

/// `~/.berth/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".berth").join("config"))
}

pub fn read(path: &Path) -> Result<Credentials, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Credentials::from_yaml(&text).map_err(|source| CredentialsError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

/// A loaded context: the controllers' addresses and how to reach them.
pub struct Loaded {
    pub servers: Vec<String>,
    pub transport: Transport,
    /// The certificate it presents, for renewal.
    pub slot: std::sync::Arc<CertSlot>,
    pub ca_pem: String,
}

/// The context `context` (the current one when None) of the file at
/// `path`.
pub fn load(path: &Path, context: Option<&str>) -> Result<Loaded, CredentialsError> {
    let invalid = |source| CredentialsError::Invalid {
        path: path.display().to_string(),
        source,
    };
    let tls = |source| CredentialsError::Tls {
        path: path.display().to_string(),
        source,
    };
    let resolved = read(path)?.resolve(context).map_err(invalid)?;
    let slot = CertSlot::new(&Issued {
        cert_pem: resolved.cert_pem,
        key_pem: resolved.key_pem,
    })
    .map_err(tls)?;
    let config = berth_tls::client_config(&resolved.ca_pem, Some(slot.clone())).map_err(tls)?;
    Ok(Loaded {
        servers: resolved.servers,
        transport: Transport::Tls(config),
        slot,
        ca_pem: resolved.ca_pem,
    })
}
