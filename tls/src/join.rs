//! The joiner's side of `berth.security.v1.Join`: fetch the cluster's CA
//! over an unverified connection, check it against what the joiner holds
//! (a join token's CA hash, or a proof of the shared bootstrap secret),
//! then ask for a certificate over a connection verified with that CA. The
//! joiner's key never leaves it: it sends a certificate request.

use std::time::Duration;

use berth_pki::Issued;
use berth_pki::JoinToken;
use berth_proto::security as pb;
use berth_proto::security::join_client::JoinClient;

use crate::Transport;

/// Each question gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error("the cluster at {addr} shows CA {shown:?}, but the token pins {pinned:?}: the token is for another cluster, or something between you and it is not the cluster")]
    WrongCa {
        addr: String,
        shown: berth_pki::Fingerprint,
        pinned: berth_pki::Fingerprint,
    },
    #[error("the controller at {addr} could not prove it knows the shared --token: it belongs to another cluster, or its --token differs")]
    BadProof { addr: String },
    #[error("{addr} refused: {message}")]
    Refused { addr: String, message: String },
    #[error(transparent)]
    Pki(#[from] berth_pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::TlsError),
}

/// What a joiner proves: a join token, or the secret shared by the
/// controllers of a `--peers` bootstrap.
#[derive(Clone, Debug)]
pub enum Secret {
    Token(JoinToken),
    Shared(String),
}

impl Secret {
    /// A `BERTH1-` token, or else a shared secret.
    pub fn parse(text: &str) -> Result<Self, berth_pki::PkiError> {
        if text.trim().starts_with("BERTH1-") {
            Ok(Secret::Token(text.parse()?))
        } else {
            Ok(Secret::Shared(text.trim().to_string()))
        }
    }

    fn text(&self) -> String {
        match self {
            Secret::Token(token) => token.to_string(),
            Secret::Shared(secret) => secret.clone(),
        }
    }
}

/// What joining gave.
pub struct Joined {
    pub issued: Issued,
    pub ca_pem: String,
    /// Controllers only: the CA's key, since every controller issues.
    pub ca_key_pem: Option<String>,
    /// Controllers only: the keyring that seals Secrets, in its file form.
    pub keyring: Option<String>,
    pub controllers: Vec<String>,
}

async fn channel(
    transport: &Transport,
    addr: &str,
) -> Result<tonic::transport::Channel, JoinError> {
    let unreachable = |why: String| JoinError::Unreachable {
        addr: addr.to_string(),
        why,
    };
    let endpoint = transport
        .endpoint(addr)
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    transport
        .connect(endpoint)
        .await
        .map_err(|e| unreachable(format!("{e:?}")))
}

fn refused(addr: &str, status: tonic::Status) -> JoinError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            JoinError::Unreachable {
                addr: addr.to_string(),
                why: status.message().to_string(),
            }
        }
        _ => JoinError::Refused {
            addr: addr.to_string(),
            message: status.message().to_string(),
        },
    }
}

/// The cluster CA that `addr` shows, once it checks against `secret`.
pub async fn fetch_ca(addr: &str, secret: &Secret) -> Result<String, JoinError> {
    let mut client = JoinClient::new(channel(&Transport::unverified(), addr).await?);
    let nonce: [u8; 32] = rand_bytes();
    let answer = client
        .ca(pb::CaRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .map_err(|s| refused(addr, s))?
        .into_inner();
    let ca_der = berth_pki::cert_der(&answer.ca_pem)?;
    match secret {
        Secret::Token(token) => {
            let shown = berth_pki::fingerprint(&answer.ca_pem)?;
            if shown != token.ca {
                return Err(JoinError::WrongCa {
                    addr: addr.to_string(),
                    shown,
                    pinned: token.ca,
                });
            }
        }
        Secret::Shared(shared) => {
            let expected = berth_pki::bootstrap_proof(shared, &nonce, &ca_der);
            if answer.bootstrap_proof.len() != expected.len()
                || !berth_pki::same_secret_bytes(&expected, &answer.bootstrap_proof)
            {
                return Err(JoinError::BadProof {
                    addr: addr.to_string(),
                });
            }
        }
    }
    Ok(answer.ca_pem)
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    crate::provider()
        .secure_random
        .fill(&mut out)
        .expect("the system's random source works");
    out
}

/// Joins the cluster at `addr` as `role`, named `name`, reached at
/// `addresses`.
pub async fn join(
    addr: &str,
    secret: &Secret,
    role: pb::Role,
    name: &str,
    addresses: &[String],
) -> Result<Joined, JoinError> {
    let ca_pem = fetch_ca(addr, secret).await?;
    let transport = Transport::Tls(crate::client_config(&ca_pem, None)?);
    let mut client = JoinClient::new(channel(&transport, addr).await?);
    let (key_pem, csr_der) = berth_pki::key_request()?;
    let answer = client
        .join(pb::JoinRequest {
            token: secret.text(),
            role: role as i32,
            name: name.to_string(),
            csr_der,
            addresses: addresses.to_vec(),
        })
        .await
        .map_err(|s| refused(addr, s))?
        .into_inner();
    Ok(Joined {
        issued: Issued {
            cert_pem: answer.cert_pem,
            key_pem,
        },
        ca_pem,
        ca_key_pem: (!answer.ca_key_pem.is_empty()).then_some(answer.ca_key_pem),
        keyring: (!answer.keyring.is_empty()).then_some(answer.keyring),
        controllers: answer.controllers,
    })
}

/// A new certificate for the identity `transport` presents, from the first
/// of `addrs` that answers.
pub async fn renew(
    transport: &Transport,
    addrs: &[String],
    addresses: &[String],
) -> Result<Issued, JoinError> {
    let mut last = None;
    for addr in addrs {
        let mut client = match channel(transport, addr).await {
            Ok(ch) => JoinClient::new(ch),
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let (key_pem, csr_der) = berth_pki::key_request()?;
        match client
            .renew(pb::RenewRequest {
                csr_der,
                addresses: addresses.to_vec(),
            })
            .await
        {
            Ok(answer) => {
                return Ok(Issued {
                    cert_pem: answer.into_inner().cert_pem,
                    key_pem,
                })
            }
            Err(s) => last = Some(refused(addr, s)),
        }
    }
    Err(last.unwrap_or(JoinError::Unreachable {
        addr: "(no controllers)".into(),
        why: "no addresses to ask".into(),
    }))
}
