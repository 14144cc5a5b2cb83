//! Credentials files in kubeconfig's shape: clusters (the CA, PEM in
//! base64, and the controllers' addresses), users (a client certificate
//! and key), contexts that pair them, and the current context. A cluster's
//! `server` is its first controller, as kubeconfig has one; every
//! controller is listed in the `berth.io/controllers` extension, so that a
//! client moves on when one is down.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde::Serialize;

use crate::Issued;
use crate::PkiError;

const CONTROLLERS_EXTENSION: &str = "berth.io/controllers";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Credentials {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedUser>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterEntry {
    pub server: String,
    pub certificate_authority_data: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<NamedExtension>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedExtension {
    pub name: String,
    pub extension: ControllersExtension,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControllersExtension {
    pub servers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UserEntry {
    pub client_certificate_data: String,
    pub client_key_data: String,
}

/// Never the key.
impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

/// What a client needs from a context: where, whom to trust, who it is.
#[derive(Clone)]
pub struct Resolved {
    pub servers: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn bad(why: String) -> PkiError {
    PkiError::Credentials(why)
}

fn decode(field: &str, owner: &str, data: &str) -> Result<String, PkiError> {
    let bytes = BASE64
        .decode(data.trim())
        .map_err(|e| bad(format!("{field} of {owner} is not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| bad(format!("{field} of {owner} is not PEM text")))
}

fn upsert<T>(list: &mut Vec<T>, item: T, name: impl Fn(&T) -> &str) {
    match list.iter_mut().find(|x| name(x) == name(&item)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

impl Credentials {
    /// One cluster, one user, and the context `USER@CLUSTER` pairing them,
    /// current.
    pub fn new(
        cluster: &str,
        servers: &[String],
        ca_pem: &str,
        user: &str,
        issued: &Issued,
    ) -> Self {
        let context = format!("{user}@{cluster}");
        Self {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: cluster.into(),
                cluster: ClusterEntry {
                    server: servers
                        .first()
                        .map(|s| format!("https://{s}"))
                        .unwrap_or_default(),
                    certificate_authority_data: BASE64.encode(ca_pem),
                    extensions: vec![NamedExtension {
                        name: CONTROLLERS_EXTENSION.into(),
                        extension: ControllersExtension {
                            servers: servers.to_vec(),
                        },
                    }],
                },
            }],
            users: vec![NamedUser {
                name: user.into(),
                user: UserEntry {
                    client_certificate_data: BASE64.encode(&issued.cert_pem),
                    client_key_data: BASE64.encode(&issued.key_pem),
                },
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: ContextEntry {
                    cluster: cluster.into(),
                    user: user.into(),
                },
            }],
            current_context: context,
        }
    }

    /// Puts `issued` in place of every user's certificate and key: for a
    /// file of one identity (an agent's) whose certificate was renewed.
    pub fn replace_user_certificate(&mut self, issued: &Issued) {
        for user in &mut self.users {
            user.user.client_certificate_data = BASE64.encode(&issued.cert_pem);
            user.user.client_key_data = BASE64.encode(&issued.key_pem);
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("credentials serialize")
    }

    pub fn from_yaml(text: &str) -> Result<Self, PkiError> {
        let creds: Self = serde_yaml_ng::from_str(text)
            .map_err(|e| bad(format!("not a credentials file: {e}")))?;
        if creds.api_version != "v1" || creds.kind != "Config" {
            return Err(bad(format!(
                "apiVersion {:?} kind {:?}, where v1 Config was expected",
                creds.api_version, creds.kind
            )));
        }
        Ok(creds)
    }

    /// Adds (or replaces, by name) `other`'s clusters, users and contexts,
    /// and makes its current context this file's.
    pub fn merge(&mut self, other: Credentials) {
        // A file made by merging into an empty one is a v1 Config too.
        self.api_version = "v1".into();
        self.kind = "Config".into();
        for c in other.clusters {
            upsert(&mut self.clusters, c, |c| &c.name);
        }
        for u in other.users {
            upsert(&mut self.users, u, |u| &u.name);
        }
        for c in other.contexts {
            upsert(&mut self.contexts, c, |c| &c.name);
        }
        self.current_context = other.current_context;
    }

    /// The servers, CA and client identity of `context` (the current one
    /// when None).
    pub fn resolve(&self, context: Option<&str>) -> Result<Resolved, PkiError> {
        let name = context.unwrap_or(&self.current_context);
        if name.is_empty() {
            return Err(bad("no current-context, and no context was named".into()));
        }
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| bad(format!("no context {name:?}")))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.context.cluster)
            .ok_or_else(|| {
                bad(format!(
                    "context {name:?} names no cluster {:?}",
                    ctx.context.cluster
                ))
            })?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == ctx.context.user)
            .ok_or_else(|| {
                bad(format!(
                    "context {name:?} names no user {:?}",
                    ctx.context.user
                ))
            })?;
        let listed = cluster
            .cluster
            .extensions
            .iter()
            .filter(|e| e.name == CONTROLLERS_EXTENSION)
            .flat_map(|e| e.extension.servers.iter().cloned());
        let server = cluster
            .cluster
            .server
            .trim_start_matches("https://")
            .to_string();
        let mut servers: Vec<String> = listed.collect();
        if servers.is_empty() && !server.is_empty() {
            servers.push(server);
        }
        if servers.is_empty() {
            return Err(bad(format!("cluster {:?} has no server", cluster.name)));
        }
        let owner = format!("user {:?}", user.name);
        Ok(Resolved {
            servers,
            ca_pem: decode(
                "certificate-authority-data",
                &format!("cluster {:?}", cluster.name),
                &cluster.cluster.certificate_authority_data,
            )?,
            cert_pem: decode(
                "client-certificate-data",
                &owner,
                &user.user.client_certificate_data,
            )?,
            key_pem: decode("client-key-data", &owner, &user.user.client_key_data)?,
        })
    }
}
