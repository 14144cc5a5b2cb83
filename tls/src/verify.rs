//! Which servers a client accepts: a certificate of the cluster's CA for
//! the address it dialled (WebPKI's checks), and then the role that
//! certificate names. The CA signs controllers', nodes' and users'
//! certificates alike, and a joining node chooses the addresses in its
//! own: without the role check, a node could answer for a controller's
//! address.

use std::sync::Arc;

use berth_pki::Identity;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;

use crate::TlsError;

/// Whom a client expects at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    Controller,
    Node,
}

impl ServerRole {
    fn holds(self, identity: &Identity) -> bool {
        matches!(
            (self, identity),
            (ServerRole::Controller, Identity::Controller(_))
                | (ServerRole::Node, Identity::Node(_))
        )
    }

    fn name(self) -> &'static str {
        match self {
            ServerRole::Controller => "a controller's",
            ServerRole::Node => "a node's",
        }
    }
}

#[derive(Debug)]
pub struct RoleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    role: ServerRole,
}

impl RoleVerifier {
    pub fn new(roots: Arc<rustls::RootCertStore>, role: ServerRole) -> Result<Self, TlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, crate::provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self { webpki, role })
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match berth_pki::peer_identity(end_entity) {
            Ok(identity) if self.role.holds(&identity) => Ok(verified),
            Ok(identity) => Err(rustls::Error::General(format!(
                "the server's certificate is {identity}'s, not {}: whoever answers at this address is not one",
                self.role.name()
            ))),
            Err(e) => Err(rustls::Error::General(format!(
                "the server's certificate names no identity of this cluster: {e}"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_pki::Ca;

    use super::*;
    use crate::CertSlot;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A handshake in memory between a client of `client` and a server
    /// of `server` dialled as 127.0.0.1.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        while c.is_handshaking() || s.is_handshaking() {
            let mut moved = false;
            let mut buf = Vec::new();
            if c.wants_write() {
                c.write_tls(&mut buf).unwrap();
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets()?;
                moved = true;
            }
            buf.clear();
            if s.wants_write() {
                s.write_tls(&mut buf).unwrap();
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets()?;
                moved = true;
            }
            if !moved {
                break;
            }
        }
        Ok(())
    }

    fn serving_as(ca: &Ca, identity: Identity) -> Arc<rustls::ServerConfig> {
        let issued = ca.issue(&identity, &["127.0.0.1".into()], HOUR).unwrap();
        crate::server_config(ca.cert_pem(), CertSlot::new(&issued).unwrap()).unwrap()
    }

    #[test]
    fn a_client_accepts_only_the_role_it_dials() {
        let ca = Ca::generate("test").unwrap();
        let admin = Identity::User {
            name: "admin".into(),
            groups: vec!["system:masters".into()],
        };
        let slot = CertSlot::new(&ca.issue(&admin, &[], HOUR).unwrap()).unwrap();
        let of_controllers = crate::client_config(ca.cert_pem(), Some(slot.clone())).unwrap();
        let of_agents = crate::agent_client_config(ca.cert_pem(), Some(slot)).unwrap();
        let controller = serving_as(&ca, Identity::Controller(1));
        // A node that obtained a certificate for a controller's address.
        let node = serving_as(&ca, Identity::Node("n1".into()));
        let user = serving_as(&ca, admin);

        handshake(of_controllers.clone(), controller.clone()).unwrap();
        handshake(of_agents.clone(), node.clone()).unwrap();
        for (client, server, what) in [
            (
                &of_controllers,
                &node,
                "system:node:n1's, not a controller's",
            ),
            // A user's certificate is for clients only: WebPKI refuses it.
            (&of_controllers, &user, "server authentication"),
            (
                &of_agents,
                &controller,
                "berth:controller:1's, not a node's",
            ),
        ] {
            let err = handshake(client.clone(), server.clone()).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }
}
