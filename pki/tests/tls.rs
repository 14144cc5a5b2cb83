//! The CA's certificates in real TLS handshakes (rustls, as Berth's
//! servers and clients use it, in memory): mutual authentication works,
//! the server reads the client's identity, and what must fail fails.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use berth_pki::Ca;
use berth_pki::Credentials;
use berth_pki::Identity;
use berth_pki::Issued;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::ClientConfig;
use rustls::ClientConnection;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::ServerConnection;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// ring's provider: rustls 0.23.48 deprecates it for lacking post-quantum
/// key exchange, which says nothing about what these tests check (the
/// certificates); which provider Berth's links use is chosen where they are
/// wired.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    Arc::new(roots)
}

fn chain(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    (vec![cert], key)
}

fn server(ca: &Ca, cert: &Issued) -> ServerConnection {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap();
    let (chain, key) = chain(cert);
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    ServerConnection::new(Arc::new(config)).unwrap()
}

fn client(ca: &Ca, cert: &Issued, server_name: &str) -> ClientConnection {
    let (chain, key) = chain(cert);
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

/// Runs the handshake, and one byte the client sends after it, between the
/// two in memory; the first error either side raises.
fn handshake(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
    use std::io::Write;
    c.writer().write_all(b"x").unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        c.read_tls(&mut wire.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish")
}

fn alice() -> Identity {
    Identity::User {
        name: "alice".into(),
        groups: vec!["dev".into(), "system:masters".into()],
    }
}

#[test]
fn controller_and_user_authenticate_each_other_and_the_server_reads_who() {
    let ca = Ca::generate("c1").unwrap();
    let addrs = vec!["127.0.0.1".to_string(), "controller-1.example".to_string()];
    let controller = ca
        .issue(&Identity::Controller(1), &addrs, 90 * DAY)
        .unwrap();
    let user = ca.issue(&alice(), &[], 365 * DAY).unwrap();
    for name in ["127.0.0.1", "controller-1.example"] {
        let (mut c, mut s) = (client(&ca, &user, name), server(&ca, &controller));
        handshake(&mut c, &mut s).unwrap();
        let peer = s.peer_certificates().unwrap()[0].clone();
        assert_eq!(berth_pki::peer_identity(&peer).unwrap(), alice());
        let server_peer = c.peer_certificates().unwrap()[0].clone();
        assert_eq!(
            berth_pki::peer_identity(&server_peer).unwrap(),
            Identity::Controller(1)
        );
    }
    // Nodes carry their name and group.
    let node = ca
        .issue(&Identity::Node("n1".into()), &["10.0.0.5".into()], DAY)
        .unwrap();
    let (mut c, mut s) = (client(&ca, &node, "127.0.0.1"), server(&ca, &controller));
    handshake(&mut c, &mut s).unwrap();
    let peer = s.peer_certificates().unwrap()[0].clone();
    let id = berth_pki::peer_identity(&peer).unwrap();
    assert_eq!(id, Identity::Node("n1".into()));
    assert_eq!(
        (id.name(), id.groups()),
        ("system:node:n1".into(), vec!["system:nodes".into()])
    );
}

#[test]
fn another_cas_client_a_wrong_address_and_a_user_as_server_are_refused() {
    let ca = Ca::generate("c1").unwrap();
    let other = Ca::generate("c2").unwrap();
    let controller = ca
        .issue(&Identity::Controller(1), &["127.0.0.1".into()], DAY)
        .unwrap();
    let user = ca.issue(&alice(), &[], DAY).unwrap();
    let stranger = other.issue(&alice(), &[], DAY).unwrap();

    let (mut c, mut s) = (
        client(&other, &stranger, "127.0.0.1"),
        server(&ca, &controller),
    );
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    let (mut c, mut s) = (client(&ca, &user, "10.9.9.9"), server(&ca, &controller));
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // A user's certificate is for clients only.
    let posing = ca.issue(&alice(), &["127.0.0.1".into()], DAY).unwrap();
    let (mut c, mut s) = (client(&ca, &user, "127.0.0.1"), server(&ca, &posing));
    let err = handshake(&mut c, &mut s).unwrap_err();
    assert!(format!("{err:?}").contains("Purpose"), "{err:?}");
}

#[test]
fn the_ca_survives_a_round_trip_and_pins_by_its_hash() {
    let ca = Ca::generate("c1").unwrap();
    let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    assert_eq!(
        berth_pki::fingerprint(ca.cert_pem()).unwrap(),
        ca.fingerprint()
    );
    // What the reloaded CA issues verifies against the original.
    let controller = again
        .issue(&Identity::Controller(2), &["127.0.0.1".into()], DAY)
        .unwrap();
    let user = ca.issue(&alice(), &[], DAY).unwrap();
    let (mut c, mut s) = (client(&ca, &user, "127.0.0.1"), server(&ca, &controller));
    handshake(&mut c, &mut s).unwrap();
    let expires = berth_pki::not_after(&controller.cert_pem).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= DAY && left > DAY - Duration::from_secs(60),
        "{left:?}"
    );
    assert!(Ca::from_pem("not pem", &ca.key_pem()).is_err());
}

#[test]
fn credentials_read_back_merge_and_resolve_to_what_was_issued() {
    let ca = Ca::generate("c1").unwrap();
    let admin = ca.issue(&alice(), &[], DAY).unwrap();
    let servers = vec!["127.0.0.1:7001".to_string(), "127.0.0.1:7002".to_string()];
    let creds = Credentials::new("dev", &servers, ca.cert_pem(), "alice", &admin);
    let text = creds.to_yaml();
    assert!(
        text.contains("apiVersion: v1") && text.contains("kind: Config"),
        "{text}"
    );
    assert!(text.contains("certificate-authority-data:"), "{text}");
    assert!(text.contains("server: https://127.0.0.1:7001"), "{text}");
    assert!(
        !text.contains("PRIVATE KEY"),
        "keys are base64, as in kubeconfig"
    );
    let back = Credentials::from_yaml(&text).unwrap();
    assert_eq!(back, creds);
    let r = back.resolve(None).unwrap();
    assert_eq!(r.servers, servers);
    assert_eq!(r.ca_pem, ca.cert_pem());
    assert_eq!(
        (r.cert_pem.as_str(), r.key_pem.as_str()),
        (admin.cert_pem.as_str(), admin.key_pem.as_str())
    );

    let prod_ca = Ca::generate("c2").unwrap();
    let ops = ca.issue(&alice(), &[], DAY).unwrap();
    let mut merged = back.clone();
    merged.merge(Credentials::new(
        "prod",
        &["10.0.0.1:7001".into()],
        prod_ca.cert_pem(),
        "ops",
        &ops,
    ));
    assert_eq!(merged.current_context, "ops@prod");
    assert_eq!(merged.resolve(None).unwrap().servers, ["10.0.0.1:7001"]);
    assert_eq!(merged.resolve(Some("alice@dev")).unwrap().servers, servers);
    let err = merged
        .resolve(Some("nobody@nowhere"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no context \"nobody@nowhere\""), "{err}");
    let err = Credentials::from_yaml("apiVersion: v2\nkind: Config\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("v1 Config"), "{err}");
}

#[test]
fn a_request_gets_the_callers_identity_and_its_holder_keeps_the_key() {
    let ca = Ca::generate("c1").unwrap();
    let controller = ca
        .issue(&Identity::Controller(1), &["127.0.0.1".into()], DAY)
        .unwrap();
    let (key_pem, csr) = berth_pki::key_request().unwrap();
    let node = Identity::Node("n1".into());
    let cert_pem = ca
        .sign_request(&csr, &node, &["10.0.0.5".into()], DAY)
        .unwrap();
    let issued = Issued { cert_pem, key_pem };
    let (mut c, mut s) = (client(&ca, &issued, "127.0.0.1"), server(&ca, &controller));
    handshake(&mut c, &mut s).unwrap();
    let peer = s.peer_certificates().unwrap()[0].clone();
    assert_eq!(berth_pki::peer_identity(&peer).unwrap(), node);
    // A request whose signature does not check is refused.
    let mut forged = csr.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(ca.sign_request(&forged, &node, &[], DAY).is_err());
    assert!(ca.sign_request(b"not a request", &node, &[], DAY).is_err());
}
