//! The cluster's certificate authority: an ECDSA P-256 key and a
//! self-signed certificate, made once by the controller that creates the
//! cluster, and the certificates it issues.

use std::fmt;
use std::time::Duration;
use std::time::SystemTime;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;
use sha2::Digest;
use time::OffsetDateTime;

use crate::identity::GROUP_URN;
use crate::Identity;
use crate::PkiError;

/// How long the CA itself is valid: far beyond any certificate it issues
/// (those are renewed; the CA is not, yet).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this long ago, for clocks slightly behind.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The SHA-256 of a certificate's DER: how a join token pins the CA.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl Fingerprint {
    fn of(der: &[u8]) -> Self {
        Fingerprint(sha2::Sha256::digest(der).into())
    }

    /// Reads 64 hexadecimal digits.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ca({:?})", self.fingerprint())
    }
}

impl Ca {
    /// A new CA for cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("berth-ca-{cluster_id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// The CA a controller kept (its certificate and key, PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_der(cert_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM: for the controllers' own replicated copy only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A certificate for `identity`, valid for `ttl` from now, naming
    /// `addresses` (IPs or DNS names, as its holder is reached) so that a
    /// TLS client verifies it as a server too. Users get client
    /// certificates only. The key is made here: for the controllers' own
    /// certificates, and tests.
    pub fn issue(
        &self,
        identity: &Identity,
        addresses: &[String],
        ttl: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(identity, addresses, ttl)?.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// As `issue`, for the key of a certificate request (PKCS#10 DER)
    /// whose holder keeps its key. Only the key is taken from the
    /// request: the identity, names and lifetime are the caller's.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        addresses: &[String],
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let csr = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let request = rcgen::CertificateSigningRequestParams::from_der(&csr)
            .map_err(|e| PkiError::Request(e.to_string()))?;
        let cert = leaf_params(identity, addresses, ttl)?
            .signed_by(&request.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &self.cert_der.clone().into(),
            &self.key,
        )?)
    }
}

/// A new key and a certificate request for it (PKCS#10 DER): the joiner's
/// half of `Ca::sign_request`.
pub fn key_request() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

fn leaf_params(
    identity: &Identity,
    addresses: &[String],
    ttl: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(addresses.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name());
    for group in identity.groups() {
        let uri = format!("{GROUP_URN}{group}");
        let uri = uri
            .try_into()
            .map_err(|_| PkiError::Identity(format!("group {group:?} is not plain ASCII")))?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Identity::User { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(rand::random::<u64>().into());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ttl;
    Ok(params)
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::Pem(format!(
            "a {} block where a CERTIFICATE was expected",
            block.label
        )));
    }
    Ok(block.contents)
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    pem_der(pem)
}

/// The fingerprint of the first certificate in `pem`.
pub fn fingerprint(cert_pem: &str) -> Result<Fingerprint, PkiError> {
    Ok(Fingerprint::of(&pem_der(cert_pem)?))
}

/// When the first certificate in `pem` expires: its holder renews before.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let der = pem_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let secs =
        u64::try_from(secs).map_err(|_| PkiError::Certificate("it expired before 1970".into()))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}
