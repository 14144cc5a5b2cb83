//! Join tokens: `BERTH1-<sha256 of the CA>-<id>.<secret>`. The hash lets a
//! joiner verify the cluster's CA before it trusts it (as Docker Swarm's
//! tokens do); the id names the token for `berth token list|revoke`; the
//! secret proves the joiner to the cluster, which keeps only its hash.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use sha2::Digest;

use crate::Fingerprint;
use crate::PkiError;

const PREFIX: &str = "BERTH1";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca: Fingerprint,
    pub id: String,
    secret: String,
}

fn random_text(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn is_token_text(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| ALPHABET.contains(&b))
}

impl JoinToken {
    /// A new token of the cluster whose CA has fingerprint `ca`.
    pub fn generate(ca: Fingerprint) -> Self {
        Self {
            ca,
            id: random_text(ID_LEN),
            secret: random_text(SECRET_LEN),
        }
    }

    /// What the cluster keeps instead of the secret.
    pub fn secret_hash(&self) -> Fingerprint {
        Fingerprint(sha2::Sha256::digest(self.secret.as_bytes()).into())
    }

    /// The part that proves the holder.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether this token's secret is the one whose hash was kept; takes
    /// the same time whatever the secret.
    pub fn proves(&self, kept: &Fingerprint) -> bool {
        same_secret_bytes(&self.secret_hash().0, &kept.0)
    }
}

/// Whether two secrets are equal, in a time that does not depend on where
/// they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let hash = |s: &str| -> [u8; 32] { sha2::Sha256::digest(s.as_bytes()).into() };
    same_secret_bytes(&hash(a), &hash(b))
}

/// Whether `a` and `b` are equal, comparing every byte wherever the first
/// difference is (lengths are not secret).
pub fn same_secret_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// What a controller answers a `--peers` joiner's nonce with, to prove it
/// knows their shared bootstrap secret and that `ca_der` is the CA it
/// vouches for: HMAC-SHA256(secret, nonce || CA DER). The joiner computes
/// the same and compares with `same_proof`.
pub fn bootstrap_proof(secret: &str, nonce: &[u8], ca_der: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(nonce);
    mac.update(ca_der);
    mac.finalize().into_bytes().into()
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{}-{}.{}", self.ca, self.id, self.secret)
    }
}

/// Never the secret.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, ca {:?})", self.id, self.ca)
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self, PkiError> {
        let bad = |why: &str| PkiError::Token(why.to_string());
        let mut parts = text.trim().splitn(3, '-');
        if parts.next() != Some(PREFIX) {
            return Err(bad("it does not start with BERTH1-"));
        }
        let ca = parts
            .next()
            .and_then(Fingerprint::parse_hex)
            .ok_or_else(|| bad("its CA hash is not 64 hexadecimal digits"))?;
        let (id, secret) = parts
            .next()
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(|| bad("it has no <id>.<secret> part"))?;
        if !is_token_text(id, ID_LEN) || !is_token_text(secret, SECRET_LEN) {
            return Err(bad("its id or secret is malformed"));
        }
        Ok(Self {
            ca,
            id: id.into(),
            secret: secret.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_proofs_bind_secret_nonce_and_ca() {
        let proof = bootstrap_proof("s3cret", b"nonce", b"ca");
        assert_eq!(proof, bootstrap_proof("s3cret", b"nonce", b"ca"));
        assert_ne!(proof, bootstrap_proof("other", b"nonce", b"ca"));
        assert_ne!(proof, bootstrap_proof("s3cret", b"nonce2", b"ca"));
        assert_ne!(proof, bootstrap_proof("s3cret", b"nonce", b"ca2"));
        assert!(same_secret("a", "a"));
        assert!(!same_secret("a", "b"));
    }

    #[test]
    fn a_token_reads_back_and_proves_only_its_own_secret() {
        let ca = Fingerprint([7; 32]);
        let token = JoinToken::generate(ca);
        let text = token.to_string();
        assert!(text.starts_with("BERTH1-0707"), "{text}");
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back, token);
        assert!(back.proves(&token.secret_hash()));
        let other = JoinToken::generate(ca);
        assert!(!other.proves(&token.secret_hash()));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let token = JoinToken::generate(Fingerprint([1; 32])).to_string();
        let cases = [
            ("".to_string(), "BERTH1-"),
            (token.replace("BERTH1", "SWMTKN"), "BERTH1-"),
            (token.replacen("01", "zz", 1), "64 hexadecimal"),
            (token.replace('.', "-"), "<id>.<secret>"),
            (format!("{token}x"), "malformed"),
            (token.to_uppercase(), "malformed"),
        ];
        for (text, want) in cases {
            let err = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
