//! What reaches the PKI from the network, arbitrary: join tokens and
//! certificate requests (a joiner sends both before it is trusted),
//! certificates (a peer presents one), sealed values and keyrings (read
//! back from disk and the store), and credentials files. None may panic,
//! and what is refused says why.

use std::time::Duration;

use berth_pki::Ca;
use berth_pki::Credentials;
use berth_pki::Identity;
use berth_pki::JoinToken;
use berth_pki::Keyring;
use proptest::prelude::*;

const PREFIX: &[u8] = b"berth:enc:aes256gcm:v1:";

fn ca() -> &'static Ca {
    static CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();
    CA.get_or_init(|| Ca::generate("test").unwrap())
}

/// Bytes that start as a real DER structure would, then go astray.
fn der_like() -> impl Strategy<Value = Vec<u8>> {
    let (_, request) = berth_pki::key_request().unwrap();
    let issued = ca()
        .issue(&Identity::Node("n1".into()), &[], Duration::from_secs(60))
        .unwrap();
    let cert = berth_pki::cert_der(&issued.cert_pem).unwrap();
    (
        prop::sample::select(vec![request, cert]),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(real, at, noise)| {
            let cut = at.index(real.len() + 1);
            let mut bytes = real[..cut].to_vec();
            bytes.extend(noise);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tokens_parse_or_say_why(text in prop_oneof!["\\PC{0,80}", "BERTH1-[0-9a-f]{0,70}-[a-z0-9]{0,8}\\.?[a-z0-9]{0,20}"]) {
        if let Err(e) = text.parse::<JoinToken>() {
            prop_assert!(e.to_string().contains("not a join token"));
        }
    }

    #[test]
    fn certificate_requests_and_certificates_are_checked_not_trusted(bytes in prop_oneof![der_like(), prop::collection::vec(any::<u8>(), 0..300)]) {
        let node = Identity::Node("n1".into());
        if let Err(e) = ca().sign_request(&bytes, &node, &[], Duration::from_secs(60)) {
            prop_assert!(!e.to_string().is_empty());
        }
        if let Err(e) = berth_pki::peer_identity(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn sealed_values_and_keyrings_open_or_are_refused(
        value in prop::collection::vec(any::<u8>(), 0..120),
        cut in any::<prop::sample::Index>(),
        text in "\\PC{0,120}",
    ) {
        let keyring = Keyring::generate().unwrap();
        let mut sealed = keyring.seal(b"k", &value).unwrap();
        // A sealed value cut short never opens (one cut before its prefix
        // ends is no sealed value, and reads as it is).
        let whole = sealed.len();
        sealed.truncate(cut.index(whole).max(PREFIX.len()));
        if sealed.len() < whole {
            prop_assert!(keyring.open(b"k", &sealed).is_err());
        }
        let mut prefixed = PREFIX.to_vec();
        prefixed.extend_from_slice(&value);
        prop_assert!(keyring.open(b"k", &prefixed).is_err());
        if let Err(e) = Keyring::parse(&text) {
            prop_assert!(e.to_string().contains("keyring") || e.to_string().contains("key"));
        }
    }

    #[test]
    fn credentials_files_parse_or_say_why(text in prop_oneof![
        "\\PC{0,200}",
        "apiVersion: v1\nkind: Config\n(clusters|users|contexts): \\[\\{name: [a-z]{0,3}\\}\\]\ncurrent-context: [a-z]{0,3}\n",
    ]) {
        match Credentials::from_yaml(&text) {
            Ok(creds) => {
                let _ = creds.resolve(None);
            }
            Err(e) => prop_assert!(e.to_string().contains("credentials file")),
        }
    }
}
