//! A process's own certificate, swapped in place when it is renewed: new
//! handshakes present the new one, open connections keep theirs.

use std::fmt;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::SystemTime;

use berth_pki::Issued;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

use crate::TlsError;

pub(crate) fn certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            why: "it holds no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn certified_key(issued: &Issued) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    let chain = certs(&issued.cert_pem, "the certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the private key",
            why: e.to_string(),
        })?;
    let key = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let not_after = berth_pki::not_after(&issued.cert_pem).map_err(|e| TlsError::Pem {
        what: "the certificate",
        why: e.to_string(),
    })?;
    Ok((Arc::new(CertifiedKey::new(chain, key)), not_after))
}

struct Current {
    key: Arc<CertifiedKey>,
    issued: Issued,
    not_after: SystemTime,
}

/// The certificate this process presents, as server and as client.
pub struct CertSlot {
    current: RwLock<Current>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl CertSlot {
    pub fn new(issued: &Issued) -> Result<Arc<Self>, TlsError> {
        let (key, not_after) = certified_key(issued)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Current {
                key,
                issued: issued.clone(),
                not_after,
            }),
        }))
    }

    /// Presents `issued` from the next handshake on.
    pub fn replace(&self, issued: &Issued) -> Result<(), TlsError> {
        let (key, not_after) = certified_key(issued)?;
        *self.current.write().expect("certificate slot lock") = Current {
            key,
            issued: issued.clone(),
            not_after,
        };
        Ok(())
    }

    pub fn not_after(&self) -> SystemTime {
        self.current
            .read()
            .expect("certificate slot lock")
            .not_after
    }

    /// The certificate and key now presented, PEM.
    pub fn issued(&self) -> Issued {
        self.current
            .read()
            .expect("certificate slot lock")
            .issued
            .clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .expect("certificate slot lock")
            .key
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
