//! Credentials for tests and benchmarks, from a controller's data dir:
//! its admin credentials, a controller identity for the internal services
//! (raw KV, Raft), and node credentials written for an agent before its
//! first start (harnesses whose agents cannot ask for a join token).

use std::path::Path;
use std::time::Duration;

use berth_client::Transport;
use berth_pki::Ca;
use berth_pki::Credentials;
use berth_pki::Identity;
use berth_tls::CertSlot;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The first of `controller_dirs` whose controller wrote its files.
pub fn written<'a>(controller_dirs: impl IntoIterator<Item = &'a Path>) -> Option<&'a Path> {
    controller_dirs
        .into_iter()
        .find(|d| d.join("admin.conf").exists() && d.join("tls/ca.key").exists())
}

/// A cluster administrator's transport, from `DIR/admin.conf`.
pub fn admin_transport(controller_dir: &Path) -> Result<Transport, String> {
    berth_client::credentials::load(&controller_dir.join("admin.conf"), None)
        .map(|loaded| loaded.transport)
        .map_err(|e| e.to_string())
}

fn ca(controller_dir: &Path) -> Result<Ca, String> {
    let read = |f: &str| {
        std::fs::read_to_string(controller_dir.join("tls").join(f))
            .map_err(|e| format!("read the CA's {f}: {e}"))
    };
    Ca::from_pem(&read("ca.crt")?, &read("ca.key")?).map_err(|e| e.to_string())
}

/// A controller's transport, as controller 0 (which no cluster has): for
/// the services that are for controllers alone.
pub fn controller_transport(controller_dir: &Path) -> Result<Transport, String> {
    let ca = ca(controller_dir)?;
    let issued = ca
        .issue(&Identity::Controller(0), &[], DAY)
        .map_err(|e| e.to_string())?;
    let slot = CertSlot::new(&issued).map_err(|e| e.to_string())?;
    let config = berth_tls::client_config(ca.cert_pem(), Some(slot)).map_err(|e| e.to_string())?;
    Ok(Transport::Tls(config))
}

/// Writes the credentials of node `node` to `path` (`DIR/agent.conf`, or
/// `DIR/agent-NAME.conf` for each node of a sim agent), as a join would.
pub fn write_agent_conf(
    controller_dir: &Path,
    path: &Path,
    node: &str,
    address: &str,
    servers: &[String],
) -> Result<(), String> {
    let ca = ca(controller_dir)?;
    let identity = Identity::Node(node.into());
    let issued = ca
        .issue(&identity, &[address.to_string()], DAY)
        .map_err(|e| e.to_string())?;
    let creds = Credentials::new("berth", servers, ca.cert_pem(), &identity.name(), &issued);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, creds.to_yaml()).map_err(|e| e.to_string())
}
