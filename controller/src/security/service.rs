//! `berth.security.v1`: certificates for joiners and renewers, join
//! tokens, and users' certificates. Join tokens are kept in the replicated
//! store under `/berth/tokens/ID` (never under `/registry/`, and the raw KV
//! service is for controllers alone), as the hash of their secret.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use berth_pki::Identity;
use berth_pki::JoinToken;
use berth_proto::security as pb;
use berth_proto::security::join_server;
use berth_proto::security::tokens_server;
use berth_proto::security::users_server;
use berth_raft::KeyRange;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::Store;
use berth_raft::Txn;
use berth_raft::TxnOutcome;
use berth_tls::join::Secret;
use berth_tls::Peer;
use openraft::async_runtime::WatchReceiver;
use serde::Deserialize;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::Authority;

const TOKENS_PREFIX: &str = "/berth/tokens/";
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_USER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Names a joiner may put in its certificate.
const MAX_ADDRESSES: usize = 16;

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    role: i32,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    created_unix: u64,
    expires_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[derive(Clone)]
pub struct SecurityService {
    authority: Arc<Authority>,
    store: Store,
}

impl SecurityService {
    pub fn new(authority: Arc<Authority>, store: Store) -> Self {
        Self { authority, store }
    }

    pub fn servers(
        self,
    ) -> (
        join_server::JoinServer<Self>,
        tokens_server::TokensServer<Self>,
        users_server::UsersServer<Self>,
    ) {
        (
            join_server::JoinServer::new(self.clone()),
            tokens_server::TokensServer::new(self.clone()),
            users_server::UsersServer::new(self),
        )
    }

    fn controllers(&self) -> Vec<String> {
        let m = self.store.raft().metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(_, node)| node.addr.clone())
            .collect()
    }

    /// Whether `secret` may join as `role`; the reason it may not, said so
    /// that the joiner knows what to do.
    async fn check_secret(&self, secret: &Secret, role: pb::Role) -> Result<(), Status> {
        let refused = |why: &str| {
            Status::unauthenticated(format!(
                "{why}: ask the cluster for a new one with `berth token create --role {}`",
                role_name(role)
            ))
        };
        match secret {
            Secret::Shared(shared) => match &self.authority.bootstrap_secret {
                Some(ours)
                    if role == pb::Role::Controller && berth_pki::same_secret(ours, shared) =>
                {
                    Ok(())
                }
                _ => Err(refused("the token is not a join token of this cluster")),
            },
            Secret::Token(token) => {
                if token.ca != self.authority.ca.fingerprint() {
                    return Err(refused("the token is for another cluster's CA"));
                }
                let record = self
                    .read_token(&token.id)
                    .await?
                    .ok_or_else(|| refused("the join token is unknown or was revoked"))?;
                let kept = berth_pki::Fingerprint::parse_hex(&record.secret_sha256)
                    .ok_or_else(|| Status::internal("a stored token record is damaged"))?;
                if !token.proves(&kept) {
                    return Err(refused("the join token's secret is wrong"));
                }
                if record.expires_unix <= unix_now() {
                    return Err(refused("the join token has expired"));
                }
                if record.role != role as i32 {
                    return Err(Status::permission_denied(format!(
                        "the join token is for role {}, not {}: ask for a `--role {}` token",
                        role_name(pb::Role::try_from(record.role).unwrap_or_default()),
                        role_name(role),
                        role_name(role)
                    )));
                }
                Ok(())
            }
        }
    }

    async fn read_token(&self, id: &str) -> Result<Option<TokenRecord>, Status> {
        let key = format!("{TOKENS_PREFIX}{id}");
        let found = self.store.range(KeyRange::key(key), 1, false).await?;
        match found.kvs.first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|_| Status::internal("a stored token record is damaged")),
        }
    }
}

fn role_name(role: pb::Role) -> &'static str {
    match role {
        pb::Role::Controller => "controller",
        pb::Role::Agent => "agent",
        pb::Role::Unspecified => "unspecified",
    }
}

/// A joiner's or renewer's names: IPs or DNS names, a few.
fn check_addresses(addresses: &[String]) -> Result<(), Status> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_ADDRESSES} addresses go into a certificate"
        )));
    }
    for a in addresses {
        if a.parse::<std::net::IpAddr>().is_err() && !berth_api::names::is_dns_subdomain(a) {
            return Err(Status::invalid_argument(format!(
                "{a:?} is neither an IP address nor a DNS name"
            )));
        }
    }
    Ok(())
}

fn pki_status(e: berth_pki::PkiError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The identity of the caller, which the authorization layer has checked
/// is there.
fn caller<T>(req: &Request<T>) -> Result<Arc<Identity>, Status> {
    req.extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| {
            Status::unauthenticated("this call needs a client certificate of this cluster")
        })
}

#[tonic::async_trait]
impl join_server::Join for SecurityService {
    async fn ca(&self, req: Request<pb::CaRequest>) -> Result<Response<pb::CaResponse>, Status> {
        let nonce = req.into_inner().nonce;
        let proof = match &self.authority.bootstrap_secret {
            Some(secret) if !nonce.is_empty() => {
                berth_pki::bootstrap_proof(secret, &nonce, self.authority.ca.cert_der()).to_vec()
            }
            _ => Vec::new(),
        };
        Ok(Response::new(pb::CaResponse {
            ca_pem: self.authority.ca.cert_pem().to_string(),
            bootstrap_proof: proof,
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        let role = pb::Role::try_from(r.role).unwrap_or_default();
        let identity = match role {
            pb::Role::Controller => Identity::Controller(r.name.parse().map_err(|_| {
                Status::invalid_argument(format!("controller id {:?} is not a number", r.name))
            })?),
            pb::Role::Agent if berth_api::names::is_dns_subdomain(&r.name) => {
                Identity::Node(r.name.clone())
            }
            pb::Role::Agent => {
                return Err(Status::invalid_argument(format!(
                    "node name {:?} is not a DNS subdomain",
                    r.name
                )))
            }
            pb::Role::Unspecified => {
                return Err(Status::invalid_argument("role must be controller or agent"))
            }
        };
        check_addresses(&r.addresses)?;
        let secret = Secret::parse(&r.token).map_err(pki_status)?;
        let checked = self.check_secret(&secret, role).await;
        metrics::counter!("berth_controller_joins_total", "role" => role_name(role), "result" => if checked.is_ok() { "ok" } else { "refused" }).increment(1);
        checked?;
        let cert_pem = self
            .authority
            .ca
            .sign_request(&r.csr_der, &identity, &r.addresses, self.authority.cert_ttl)
            .map_err(pki_status)?;
        tracing::info!(%identity, "issued a certificate to a joiner");
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: self.authority.ca.cert_pem().to_string(),
            ca_key_pem: match role {
                pb::Role::Controller => self.authority.ca.key_pem(),
                _ => String::new(),
            },
            keyring: match role {
                pb::Role::Controller => self.authority.keyring.to_text(),
                _ => String::new(),
            },
            controllers: self.controllers(),
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let identity = caller(&req)?;
        let r = req.into_inner();
        if let Identity::User { .. } = identity.as_ref() {
            return Err(Status::permission_denied(
                "users do not renew their certificates here: ask an administrator for new credentials (`berth user create`)",
            ));
        }
        check_addresses(&r.addresses)?;
        let cert_pem = self
            .authority
            .ca
            .sign_request(&r.csr_der, &identity, &r.addresses, self.authority.cert_ttl)
            .map_err(pki_status)?;
        metrics::counter!("berth_controller_certificates_renewed_total").increment(1);
        Ok(Response::new(pb::RenewResponse { cert_pem }))
    }
}

#[tonic::async_trait]
impl tokens_server::Tokens for SecurityService {
    async fn create(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let role = pb::Role::try_from(r.role).unwrap_or_default();
        if role == pb::Role::Unspecified {
            return Err(Status::invalid_argument(
                "--role must be controller or agent",
            ));
        }
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        let token = JoinToken::generate(self.authority.ca.fingerprint());
        let now = unix_now();
        let record = TokenRecord {
            role: role as i32,
            secret_sha256: token.secret_hash().to_string(),
            created_unix: now,
            expires_unix: now.saturating_add(ttl.as_secs()),
        };
        let value = serde_json::to_vec(&record).map_err(|e| Status::internal(e.to_string()))?;
        let txn = Txn {
            ops: vec![Op::Put {
                key: format!("{TOKENS_PREFIX}{}", token.id).into_bytes(),
                value,
                precondition: Precondition::Absent,
            }],
        };
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => {}
            TxnOutcome::Failed(f) => return Err(Status::aborted(format!("{f}: retry"))),
        }
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.to_string(),
            id: token.id.clone(),
            expires_unix: record.expires_unix,
        }))
    }

    async fn list(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let found = self
            .store
            .range(
                KeyRange::prefix(TOKENS_PREFIX.as_bytes().to_vec()),
                0,
                false,
            )
            .await?;
        let tokens = found
            .kvs
            .iter()
            .filter_map(|kv| {
                let record: TokenRecord = serde_json::from_slice(&kv.value).ok()?;
                let id = std::str::from_utf8(&kv.key)
                    .ok()?
                    .strip_prefix(TOKENS_PREFIX)?;
                Some(pb::TokenInfo {
                    id: id.to_string(),
                    role: record.role,
                    created_unix: record.created_unix,
                    expires_unix: record.expires_unix,
                })
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = req.into_inner().id;
        let txn = Txn {
            ops: vec![Op::Delete {
                key: format!("{TOKENS_PREFIX}{id}").into_bytes(),
                precondition: Precondition::Present,
            }],
        };
        match self.store.txn(txn).await? {
            TxnOutcome::Committed { .. } => Ok(Response::new(pb::RevokeTokenResponse {})),
            TxnOutcome::Failed(_) => Err(Status::not_found(format!(
                "no token {id:?}: `berth token list` shows the tokens"
            ))),
        }
    }
}

#[tonic::async_trait]
impl users_server::Users for SecurityService {
    async fn issue(
        &self,
        req: Request<pb::IssueUserRequest>,
    ) -> Result<Response<pb::IssueUserResponse>, Status> {
        let r = req.into_inner();
        let identity = Identity::from_subject(&r.name, r.groups).map_err(pki_status)?;
        if !matches!(identity, Identity::User { .. }) {
            return Err(Status::invalid_argument(format!(
                "{:?} is a controller's or node's name, which users cannot take",
                r.name
            )));
        }
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_USER_TTL,
            s => Duration::from_secs(s),
        };
        let cert_pem = self
            .authority
            .ca
            .sign_request(&r.csr_der, &identity, &[], ttl)
            .map_err(pki_status)?;
        tracing::info!(%identity, "issued a user certificate");
        Ok(Response::new(pb::IssueUserResponse {
            cert_pem,
            ca_pem: self.authority.ca.cert_pem().to_string(),
            controllers: self.controllers(),
        }))
    }
}
