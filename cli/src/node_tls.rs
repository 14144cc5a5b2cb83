//! An agent's identity: `DIR/agent.conf`, the credentials of
//! `system:node:NAME`, made at its first start by joining with `--token`
//! and renewed in place (the file too) before they expire. A sim agent
//! with `--count` holds one identity per node (`DIR/agent-NAME.conf`), as
//! the node authorizer lets each node act only for itself.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use anyhow::Context;
use berth_client::credentials;
use berth_client::Transport;
use berth_pki::Credentials;
use berth_proto::security::Role;
use berth_tls::join::Secret;
use berth_tls::CertSlot;

/// How an agent reaches the cluster.
pub struct NodeCredentials {
    pub servers: Vec<String>,
    pub transport: Transport,
    /// The node's certificate (renewed in place) and the cluster CA, for
    /// its log server.
    pub slot: Arc<CertSlot>,
    pub ca_pem: String,
}

/// Where node `name`'s credentials live: `DIR/agent.conf` for an agent of
/// one node, `DIR/agent-NAME.conf` for each node of a sim agent.
pub fn conf_path(data_dir: &Path, name: &str, one_of_many: bool) -> PathBuf {
    match one_of_many {
        false => data_dir.join("agent.conf"),
        true => data_dir.join(format!("agent-{name}.conf")),
    }
}

/// Loads the credentials at `path`, or joins the cluster at `servers` with
/// `token` to make them; then keeps the certificate renewed.
pub async fn node_credentials(
    path: PathBuf,
    name: &str,
    address: &str,
    token: Option<&str>,
    servers: &[String],
) -> anyhow::Result<NodeCredentials> {
    if !path.exists() {
        let Some(token) = token else {
            bail!("this agent has no credentials yet ({} is missing): start it once with --token TOKEN from `berth token create --role agent`", path.display());
        };
        join(&path, name, address, token, servers).await?;
    }
    let loaded = credentials::load(&path, None)?;
    tokio::spawn(renew_forever(
        path,
        loaded.slot.clone(),
        loaded.transport.clone(),
        loaded.servers.clone(),
        vec![address.to_string()],
    ));
    Ok(NodeCredentials {
        servers: loaded.servers,
        transport: loaded.transport,
        slot: loaded.slot,
        ca_pem: loaded.ca_pem,
    })
}

async fn join(
    path: &Path,
    name: &str,
    address: &str,
    token: &str,
    servers: &[String],
) -> anyhow::Result<()> {
    let secret = Secret::parse(token)?;
    if !matches!(secret, Secret::Token(_)) {
        bail!("--token is not a join token (BERTH1-...): ask the cluster for one with `berth token create --role agent`");
    }
    let mut last = None;
    for server in servers {
        match berth_tls::join::join(server, &secret, Role::Agent, name, &[address.to_string()])
            .await
        {
            Ok(joined) => {
                let controllers = if joined.controllers.is_empty() {
                    servers.to_vec()
                } else {
                    joined.controllers
                };
                let user = berth_pki::Identity::Node(name.to_string()).name();
                let creds =
                    Credentials::new("berth", &controllers, &joined.ca_pem, &user, &joined.issued);
                berth_controller::security::write_private(path, &creds.to_yaml())?;
                tracing::info!(
                    node = name,
                    "joined the cluster; credentials in {}",
                    path.display()
                );
                return Ok(());
            }
            Err(berth_tls::join::JoinError::Unreachable { addr, why }) => {
                last = Some(format!("{addr}: {why}"));
            }
            Err(e) => return Err(e).context("join the cluster"),
        }
    }
    bail!(
        "no controller answered the join ({}): check --server",
        last.unwrap_or_else(|| "no --server given".into())
    )
}

/// Renews the node's certificate when a third of its life is left, then
/// writes it to `path` so that a restart keeps it.
async fn renew_forever(
    path: PathBuf,
    slot: Arc<CertSlot>,
    transport: Transport,
    servers: Vec<String>,
    addresses: Vec<String>,
) {
    let mut retry = berth_retry::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        tokio::time::sleep(berth_tls::renew_after(slot.not_after())).await;
        let renewed = berth_tls::join::renew(&transport, &servers, &addresses).await;
        let saved = renewed.map_err(anyhow::Error::from).and_then(|issued| {
            slot.replace(&issued)?;
            let mut creds = credentials::read(&path)?;
            creds.replace_user_certificate(&issued);
            berth_controller::security::write_private(&path, &creds.to_yaml())?;
            Ok(())
        });
        match saved {
            Ok(()) => {
                metrics::counter!("berth_agent_certificate_renewals_total").increment(1);
                tracing::info!("renewed the node's certificate");
                retry.reset();
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not renew the node's certificate; retrying"
                );
                retry.wait().await;
            }
        }
    }
}
