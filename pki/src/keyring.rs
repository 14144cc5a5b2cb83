//! The cluster's keys for values at rest: what the API server encrypts
//! before it proposes a write (a Secret), so that the Raft log, RocksDB's
//! files, snapshots and backups never hold the value in the clear.
//!
//! Every controller holds the same keyring, outside the store, as it holds
//! the CA: the creator makes it and joining controllers receive it over
//! mTLS. The first key seals; every key opens, so that a key can be added
//! ahead of a rotation and an old one kept until nothing sealed with it is
//! left.
//!
//! A sealed value is `berth:enc:aes256gcm:v1:<key id>:` then a random
//! 96-bit nonce and the AES-256-GCM ciphertext with its tag. The store key
//! is the associated data: a sealed value copied under another key does
//! not open, so it cannot be read as another Secret.

use base64::Engine;
use ring::aead;
use ring::rand::SecureRandom;
use ring::rand::SystemRandom;
use sha2::Digest;

const PREFIX: &[u8] = b"berth:enc:aes256gcm:v1:";
const KEY_LEN: usize = 32;
/// Hex digits of a key's id: enough to tell a cluster's few keys apart.
const ID_LEN: usize = 8;
const ALGORITHM: &str = "aes256gcm";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("keyring line {line}: {why} (a line is `aes256gcm:ID:BASE64-KEY`; copy the file from another controller of the cluster)")]
    Parse { line: usize, why: String },
    #[error("the keyring holds no key (copy the file from another controller of the cluster)")]
    Empty,
    #[error("sealed with key {0}, which this controller's keyring lacks: copy the keyring from a controller that has it")]
    UnknownKey(String),
    #[error("the sealed value is damaged or belongs to another key: it does not open")]
    Damaged,
    #[error("the system's random source failed")]
    Random,
}

struct Key {
    id: String,
    sealing: aead::LessSafeKey,
    raw: [u8; KEY_LEN],
}

impl Key {
    fn new(raw: [u8; KEY_LEN]) -> Self {
        let unbound =
            aead::UnboundKey::new(&aead::AES_256_GCM, &raw).expect("an AES-256 key is 32 bytes");
        let digest = sha2::Sha256::digest(raw);
        let id = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..ID_LEN]
            .to_string();
        Self {
            id,
            sealing: aead::LessSafeKey::new(unbound),
            raw,
        }
    }
}

/// The keys that seal and open values at rest; the first seals.
pub struct Keyring {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("keys", &ids).finish()
    }
}

impl Keyring {
    /// A keyring of one new random key.
    pub fn generate() -> Result<Self, SealError> {
        let random = SystemRandom::new();
        let mut raw = [0u8; KEY_LEN];
        random.fill(&mut raw).map_err(|_| SealError::Random)?;
        Ok(Self {
            keys: vec![Key::new(raw)],
            random,
        })
    }

    /// Reads the file form: one `aes256gcm:ID:BASE64-KEY` per line, blank
    /// lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| SealError::Parse {
                line: i + 1,
                why: why.to_string(),
            };
            let mut parts = line.splitn(3, ':');
            let (Some(algorithm), Some(id), Some(encoded)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected three fields separated by ':'"));
            };
            if algorithm != ALGORITHM {
                return Err(bad(&format!("unknown algorithm {algorithm:?}")));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| bad("the key is not base64"))?;
            let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| bad("the key is not 32 bytes"))?;
            let key = Key::new(raw);
            if key.id != id {
                return Err(bad(&format!(
                    "the id {id:?} is not the key's ({}): the line was changed",
                    key.id
                )));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SealError::Empty);
        }
        Ok(Self {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// The file form, which `parse` reads back.
    pub fn to_text(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                format!(
                    "{ALGORITHM}:{}:{}\n",
                    k.id,
                    base64::engine::general_purpose::STANDARD.encode(k.raw)
                )
            })
            .collect()
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `plain` encrypted with the first key, bound to `context` (the store
    /// key).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = Vec::with_capacity(
            PREFIX.len() + ID_LEN + 1 + nonce.len() + plain.len() + aead::AES_256_GCM.tag_len(),
        );
        sealed.extend_from_slice(PREFIX);
        sealed.extend_from_slice(key.id.as_bytes());
        sealed.push(b':');
        sealed.extend_from_slice(&nonce);
        let body = sealed.len();
        sealed.extend_from_slice(plain);
        let tag = key
            .sealing
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(context),
                &mut sealed[body..],
            )
            .map_err(|_| SealError::Damaged)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// The plain value of a sealed one; `value` itself when it was stored
    /// unsealed (written before encryption, or by an `--insecure`
    /// controller), as Kubernetes reads such values too.
    pub fn open(&self, context: &[u8], value: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_vec());
        };
        let (id, rest) = rest.split_at_checked(ID_LEN).ok_or(SealError::Damaged)?;
        let rest = rest.strip_prefix(b":").ok_or(SealError::Damaged)?;
        let id = String::from_utf8_lossy(id);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
        let (nonce, ciphertext) = rest
            .split_at_checked(aead::NONCE_LEN)
            .ok_or(SealError::Damaged)?;
        let nonce =
            aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged)?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .sealing
            .open_in_place(nonce, aead::Aad::from(context), &mut buf)
            .map_err(|_| SealError::Damaged)?;
        Ok(plain.to_vec())
    }
}

/// Whether `value` was sealed by a keyring (of any cluster).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_own_key_and_context() {
        let ring = Keyring::generate().unwrap();
        let sealed = ring.seal(b"/registry/secrets/a/s", b"hunter2").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            ring.open(b"/registry/secrets/a/s", &sealed).unwrap(),
            b"hunter2"
        );
        assert!(matches!(
            ring.open(b"/registry/secrets/b/s", &sealed),
            Err(SealError::Damaged)
        ));
        let other = Keyring::generate().unwrap();
        assert!(matches!(
            other.open(b"/registry/secrets/a/s", &sealed),
            Err(SealError::UnknownKey(id)) if id == ring.sealing_key_id()
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ring.open(b"/registry/secrets/a/s", &flipped),
            Err(SealError::Damaged)
        ));
        for cut in [PREFIX.len(), PREFIX.len() + 3, PREFIX.len() + ID_LEN + 5] {
            assert!(ring.open(b"k", &sealed[..cut]).is_err(), "cut at {cut}");
        }
        let again = ring.seal(b"/registry/secrets/a/s", b"hunter2").unwrap();
        assert_ne!(sealed, again, "every seal takes a fresh nonce");
    }

    #[test]
    fn an_unsealed_value_reads_as_it_is() {
        let ring = Keyring::generate().unwrap();
        assert_eq!(ring.open(b"k", b"\x0a\x02v1").unwrap(), b"\x0a\x02v1");
    }

    #[test]
    fn the_file_form_reads_back_and_every_key_opens() {
        let ring = Keyring::generate().unwrap();
        let text = ring.to_text();
        let back = Keyring::parse(&text).unwrap();
        assert_eq!(back.sealing_key_id(), ring.sealing_key_id());
        let sealed = ring.seal(b"k", b"v").unwrap();
        let newer = Keyring::generate().unwrap();
        let both = Keyring::parse(&format!("# rotated\n{}\n{text}", newer.to_text())).unwrap();
        assert_eq!(both.sealing_key_id(), newer.sealing_key_id());
        assert_eq!(both.open(b"k", &sealed).unwrap(), b"v");
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_line() {
        let text = Keyring::generate().unwrap().to_text();
        let changed = text.replacen("aes256gcm:", "aes256gcm:0", 1);
        for (bad, says) in [
            ("", "no key"),
            ("aes256gcm:abc\n", "line 1: expected three fields"),
            ("\nrot13:1:2\n", "line 2: unknown algorithm"),
            ("aes256gcm:1:***\n", "not base64"),
            ("aes256gcm:1:AAAA\n", "not 32 bytes"),
            (changed.as_str(), "the line was changed"),
        ] {
            let e = Keyring::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
