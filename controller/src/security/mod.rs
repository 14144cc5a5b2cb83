//! The controller's half of the cluster's security: it obtains the CA and
//! the keyring that seals Secrets before it serves (makes them when it
//! creates the cluster, else gets them from a controller that proves the
//! shared bootstrap secret or matches a join token), issues itself a certificate for the addresses it listens
//! on and renews it in place, writes `admin.conf`, serves certificates and
//! tokens (`service`), refuses callers what their identity may not do
//! (`authz`), and decides each call of the object API with RBAC
//! (`authorizer`, from a `policy` kept current from the store), which
//! `access` also answers for `berth auth can-i`.

pub mod access;
pub mod authorizer;
pub mod authz;
pub mod policy;
pub mod service;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use berth_pki::Ca;
use berth_pki::Credentials;
use berth_pki::Identity;
use berth_pki::Issued;
use berth_pki::Keyring;
use berth_proto::security::Role;
use berth_retry::Backoff;
use berth_tls::join::Secret;
use berth_tls::Acceptor;
use berth_tls::CertSlot;
use berth_tls::Transport;

use crate::config::ServerConfig;

/// Controllers' and nodes' certificates live this long unless told (as
/// Docker Swarm's).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The admin credentials every controller writes.
const ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
pub const ADMIN_USER: &str = "admin";
pub use berth_rbac::MASTERS_GROUP;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] berth_pki::PkiError),
    #[error(transparent)]
    Tls(#[from] berth_tls::TlsError),
    #[error(transparent)]
    Join(#[from] berth_tls::join::JoinError),
    #[error(transparent)]
    Keyring(#[from] berth_pki::SealError),
    #[error("{0}")]
    Flags(String),
}

/// What serving and reaching peers take from the cluster's PKI.
pub struct Security {
    pub acceptor: Acceptor,
    /// How this controller reaches other controllers.
    pub transport: Transport,
    /// How it reaches agents' log servers: only a node may answer.
    pub agents: Transport,
    /// None when `--insecure`.
    pub authority: Option<Arc<Authority>>,
}

impl Security {
    /// What seals Secrets at rest: None when `--insecure`.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.authority.as_ref().map(|a| a.keyring.clone())
    }
}

/// The CA this controller holds and the certificate it presents.
pub struct Authority {
    pub ca: Ca,
    /// Every controller holds it, as it holds the CA's key.
    pub keyring: Arc<Keyring>,
    pub slot: Arc<CertSlot>,
    pub cert_ttl: Duration,
    /// `--token` of a `--peers` bootstrap: what joining controllers prove.
    pub bootstrap_secret: Option<String>,
    id: u64,
    addresses: Vec<String>,
}

impl Authority {
    fn issue_own(&self) -> Result<Issued, berth_pki::PkiError> {
        self.ca.issue(
            &Identity::Controller(self.id),
            &self.addresses,
            self.cert_ttl,
        )
    }

    /// Renews this controller's certificate when a third of its life is
    /// left, for as long as the process runs; open connections keep the
    /// old one, new handshakes get the new one.
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            let wait = berth_tls::renew_after(self.slot.not_after());
            tokio::time::sleep(wait).await;
            match self.issue_own().map(|issued| self.slot.replace(&issued)) {
                Ok(Ok(())) => {
                    metrics::counter!("berth_controller_certificate_renewals_total").increment(1);
                    tracing::info!("renewed this controller's certificate");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "could not load a renewed certificate"),
                Err(e) => {
                    tracing::error!(error = %e, "could not renew this controller's certificate")
                }
            }
            if let Ok(left) = self.slot.not_after().duration_since(SystemTime::now()) {
                metrics::gauge!("berth_controller_certificate_expiry_seconds")
                    .set(left.as_secs_f64());
            }
        }
    }
}

fn tls_dir(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("tls")
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecurityError {
    let path = path.display().to_string();
    move |source| SecurityError::Io { what, path, source }
}

/// Writes `contents` readable by the owner only, replacing `path` whole.
pub fn write_private(path: &Path, contents: &str) -> Result<(), SecurityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error("write", &tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("replace", path))
}

/// What every controller of a cluster holds alike, outside the store.
struct ClusterKeys {
    ca: Ca,
    keyring: Keyring,
}

const KEYRING_FILE: &str = "encryption.keys";

fn read_text(path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(io_error("read", path))
}

/// The keys kept in `dir`, if this controller has them. A data dir from
/// before Secrets were encrypted has no keyring: a cluster created with
/// this controller alone in --peers makes it, since no other could hold
/// one; any other must have the others' (a second keyring would leave
/// Secrets that some controllers cannot read), so it is asked for.
fn load_keys(dir: &Path, config: &ServerConfig) -> Result<Option<ClusterKeys>, SecurityError> {
    let (cert, key, ring) = (
        dir.join("ca.crt"),
        dir.join("ca.key"),
        dir.join(KEYRING_FILE),
    );
    if !cert.exists() {
        return Ok(None);
    }
    let ca = Ca::from_pem(&read_text(&cert)?, &read_text(&key)?)?;
    let keyring = if ring.exists() {
        Keyring::parse(&read_text(&ring)?)?
    } else if config.join.is_none()
        && matches!(config.peers.as_slice(), [(id, _)] if *id == config.id)
    {
        tracing::info!(path = %ring.display(), "making the keyring that encrypts Secrets");
        let keyring = Keyring::generate()?;
        write_private(&ring, &keyring.to_text())?;
        keyring
    } else {
        return Err(SecurityError::Flags(format!(
            "{} is missing while this controller holds the cluster's CA: copy it from another controller of the cluster (it is the same file on each), mode 0600; a data dir from before Secrets were encrypted has none anywhere: for a `berth dev` cluster, remove its data dir to start afresh",
            ring.display()
        )));
    };
    Ok(Some(ClusterKeys { ca, keyring }))
}

fn save_keys(dir: &Path, keys: &ClusterKeys) -> Result<(), SecurityError> {
    berth_raft::identity::create_private_dir(dir).map_err(io_error("create", dir))?;
    write_private(&dir.join(KEYRING_FILE), &keys.keyring.to_text())?;
    write_private(&dir.join("ca.key"), &keys.ca.key_pem())?;
    write_private(&dir.join("ca.crt"), keys.ca.cert_pem())
}

/// A new cluster's keys.
fn generate_keys(config: &ServerConfig) -> Result<ClusterKeys, SecurityError> {
    Ok(ClusterKeys {
        ca: Ca::generate(&config.id.to_string())?,
        keyring: Keyring::generate()?,
    })
}

/// The names in this controller's certificate: the host it advertises,
/// the address it listens on, loopback (local clients), and `--tls-san`.
fn cert_addresses(config: &ServerConfig) -> Vec<String> {
    let mut names = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    };
    add(host_of(&config.advertise));
    if !config.listen.ip().is_unspecified() {
        add(config.listen.ip().to_string());
    }
    add("127.0.0.1".into());
    add("localhost".into());
    config.tls_sans.iter().cloned().for_each(add);
    names
}

/// HOST of HOST:PORT (brackets of an IPv6 host removed).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Every address a client of this cluster may try, this controller's
/// first.
pub fn cluster_addrs(config: &ServerConfig) -> Vec<String> {
    let mut addrs = config.addrs_self_first();
    if let Some(join) = config.join.as_ref().filter(|j| !addrs.contains(j)) {
        addrs.push(join.clone());
    }
    addrs
}

/// Gets this controller its CA and certificate (or, `--insecure`, none).
pub async fn prepare(config: &ServerConfig) -> Result<Security, SecurityError> {
    if config.insecure {
        tracing::warn!("--insecure: this controller speaks plain TCP and lets ANY caller do ANYTHING; for benchmarks against peers without TLS only");
        return Ok(Security {
            acceptor: Acceptor::Insecure,
            transport: Transport::Insecure,
            agents: Transport::Insecure,
            authority: None,
        });
    }
    let dir = tls_dir(config);
    let ClusterKeys { ca, keyring } = match load_keys(&dir, config)? {
        Some(keys) => keys,
        None => {
            let keys = obtain_keys(config).await?;
            save_keys(&dir, &keys)?;
            keys
        }
    };
    let addresses = cert_addresses(config);
    let own = ca.issue(
        &Identity::Controller(config.id),
        &addresses,
        config.cert_ttl,
    )?;
    let authority = Arc::new(Authority {
        slot: CertSlot::new(&own)?,
        ca,
        keyring: Arc::new(keyring),
        cert_ttl: config.cert_ttl,
        bootstrap_secret: config.token.clone(),
        id: config.id,
        addresses,
    });
    write_admin_credentials(config, &authority.ca)?;
    let ca_pem = authority.ca.cert_pem();
    let security = Security {
        acceptor: Acceptor::Tls(berth_tls::server_config(ca_pem, authority.slot.clone())?),
        transport: Transport::Tls(berth_tls::client_config(
            ca_pem,
            Some(authority.slot.clone()),
        )?),
        agents: Transport::Tls(berth_tls::agent_client_config(
            ca_pem,
            Some(authority.slot.clone()),
        )?),
        authority: Some(authority.clone()),
    };
    tokio::spawn(authority.renew_forever());
    Ok(security)
}

/// `DIR/admin.conf`: a cluster-admin's credentials (group
/// system:masters), rewritten at every start.
fn write_admin_credentials(config: &ServerConfig, ca: &Ca) -> Result<(), SecurityError> {
    let admin = Identity::User {
        name: ADMIN_USER.into(),
        groups: vec![MASTERS_GROUP.into()],
    };
    let issued = ca.issue(&admin, &[], ADMIN_TTL)?;
    let creds = Credentials::new(
        "berth",
        &cluster_addrs(config),
        ca.cert_pem(),
        ADMIN_USER,
        &issued,
    );
    write_private(&config.data_dir.join("admin.conf"), &creds.to_yaml())
}

/// The keys of a controller that has none yet: made here when this one
/// creates the cluster, else fetched from a controller that proves what
/// this one was given.
async fn obtain_keys(config: &ServerConfig) -> Result<ClusterKeys, SecurityError> {
    let secret = match &config.token {
        Some(text) => Some(Secret::parse(text)?),
        None => None,
    };
    if let Some(target) = &config.join {
        let secret = secret.ok_or_else(|| {
            SecurityError::Flags(
                "--join needs --token: ask the cluster for one with `berth token create --role controller`".into(),
            )
        })?;
        return fetch_keys(config, std::slice::from_ref(target), &secret, false).await;
    }
    let others: Vec<String> = config
        .peers
        .iter()
        .filter(|(id, _)| *id != config.id)
        .map(|(_, a)| a.clone())
        .collect();
    if config.peers.is_empty() {
        return Err(SecurityError::Flags(
            "a controller with neither --peers nor --join would wait to be added, but it could not prove itself to the cluster: give it --join ADDR --token TOKEN (`berth token create --role controller`), or --peers to create a cluster".into(),
        ));
    }
    if others.is_empty() {
        tracing::info!("making the cluster's CA and keyring");
        return generate_keys(config);
    }
    let secret = secret.ok_or_else(|| {
        SecurityError::Flags(
            "--peers with more than one controller needs --token SECRET, the same on each, so that they can trust each other's CA (make one with `openssl rand -hex 16`)".into(),
        )
    })?;
    let creator = config.peers.iter().map(|(id, _)| *id).min() == Some(config.id);
    fetch_keys(config, &others, &secret, creator).await
}

/// Asks `addrs` in turn for the cluster's keys and this controller's place
/// in it, until one answers. The creator asks once: if no peer serves a
/// cluster yet, it makes the keys.
async fn fetch_keys(
    config: &ServerConfig,
    addrs: &[String],
    secret: &Secret,
    creator: bool,
) -> Result<ClusterKeys, SecurityError> {
    let mut pause = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    loop {
        for addr in addrs {
            match berth_tls::join::join(
                addr,
                secret,
                Role::Controller,
                &config.id.to_string(),
                &cert_addresses(config),
            )
            .await
            {
                Ok(joined) => {
                    let (Some(key), Some(keyring)) = (joined.ca_key_pem, joined.keyring) else {
                        return Err(SecurityError::Flags(format!(
                            "{addr} did not hand over the cluster's keys: the token is not a controller token (`berth token create --role controller`)"
                        )));
                    };
                    tracing::info!(%addr, "got the cluster's CA and keyring");
                    return Ok(ClusterKeys {
                        ca: Ca::from_pem(&joined.ca_pem, &key)?,
                        keyring: Keyring::parse(&keyring)?,
                    });
                }
                Err(berth_tls::join::JoinError::Unreachable { addr, why }) => {
                    tracing::debug!(%addr, %why, "no CA from this peer yet");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if creator {
            tracing::info!("no peer serves a cluster yet: making the cluster's CA and keyring");
            return generate_keys(config);
        }
        tracing::info!(peers = ?addrs, "waiting for a controller to hand over the cluster's keys");
        pause.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_when_a_third_of_the_life_is_left() {
        let ttl = Duration::from_secs(90);
        let wait = berth_tls::renew_after(SystemTime::now() + ttl);
        assert!(
            wait > Duration::from_secs(58) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        let wait = berth_tls::renew_after(SystemTime::now());
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("ctl-1.example:7001"), "ctl-1.example");
    }
}
