//! A user's keyring: name, Unix uid, X25519 public key and (unless the user was imported with
//! only a public key) the private key sealed under an Argon2id-derived key. Serialized as JSON.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError, KdfParams, PrivateKey, PublicKey, NONCE_LEN};

const FORMAT_VERSION: u32 = 1;
const SEAL_AAD_PREFIX: &[u8] = b"tensorvault v1 keyring";
const PUBLIC_KEY_PREFIX: &str = "tvault-x25519:";
const SALT_LEN: usize = 16;
pub(crate) const MAX_NAME_LEN: usize = 32;
/// Longest passphrase `create` and `reseal` accept. An unlock sends the passphrase inside a
/// JSON request that the mount reads up to 64 KiB; escaped at worst six bytes per byte
/// (`\u0001`), 8 KiB always fits, so a passphrase accepted here can always unlock.
pub(crate) const MAX_PASSPHRASE_LEN: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("invalid user name {0:?}: use 1-32 of A-Z a-z 0-9 . _ -, not starting with . or -")]
    InvalidName(String),
    #[error("wrong passphrase for {0:?}")]
    WrongPassphrase(String),
    #[error("{0:?} has no private key in this store (imported with a public key only)")]
    NoPrivateKey(String),
    #[error("invalid public key {0:?}: expected {PUBLIC_KEY_PREFIX} followed by 64 hex digits")]
    InvalidPublicKey(String),
    #[error(
        "public key {0:?} is a low-order point: files wrapped to it would be readable by anyone"
    )]
    WeakPublicKey(String),
    #[error("malformed keyring: {0}")]
    Malformed(String),
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error(
        "the passphrase is {0} bytes; at most {MAX_PASSPHRASE_LEN} are allowed (an unlock must fit \
         the mount's 64 KiB request limit): choose a shorter one"
    )]
    PassphraseTooLong(usize),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

pub(crate) type Result<T> = std::result::Result<T, KeyringError>;

/// User names label key slots and name files in the store, so they are kept to a safe alphabet.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyringError::InvalidName(name.to_string()))
    }
}

pub fn format_public_key(key: &PublicKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", hex::encode(key.as_bytes()))
}

pub(crate) fn parse_public_key(text: &str) -> Result<PublicKey> {
    let bad = || KeyringError::InvalidPublicKey(text.to_string());
    let hex_part = text
        .trim()
        .strip_prefix(PUBLIC_KEY_PREFIX)
        .ok_or_else(bad)?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad())?;
    let key = PublicKey::from_bytes(bytes);
    if key.is_low_order() {
        return Err(KeyringError::WeakPublicKey(text.to_string()));
    }
    Ok(key)
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct KdfRecord {
    algorithm: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct SealedRecord {
    kdf: KdfRecord,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct KeyringRecord {
    version: u32,
    name: String,
    uid: u32,
    public_key: String,
    sealed_private_key: Option<SealedRecord>,
}

/// A private key sealed under a passphrase: Argon2id parameters and salt travel with it.
#[derive(Clone, Debug)]
struct SealedKey {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    sealed: [u8; crypto::WRAPPED_KEY_LEN],
}

#[derive(Clone, Debug)]
pub struct Keyring {
    pub name: String,
    pub uid: u32,
    pub public_key: PublicKey,
    sealed: Option<SealedKey>,
}

fn seal_aad(name: &str, public_key: &PublicKey) -> Vec<u8> {
    let mut aad = SEAL_AAD_PREFIX.to_vec();
    aad.extend_from_slice(public_key.as_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn seal(
    name: &str,
    private: &PrivateKey,
    passphrase: &[u8],
    params: KdfParams,
) -> Result<SealedKey> {
    if passphrase.is_empty() {
        return Err(KeyringError::EmptyPassphrase);
    }
    if passphrase.len() > MAX_PASSPHRASE_LEN {
        return Err(KeyringError::PassphraseTooLong(passphrase.len()));
    }
    let salt: [u8; SALT_LEN] = crypto::random_array()?;
    let key = crypto::passphrase_key(passphrase, &salt, &params)?;
    let aad = seal_aad(name, &private.public_key());
    let (nonce, sealed) = crypto::seal_secret(&key, &private.to_bytes(), &aad)?;
    Ok(SealedKey {
        params,
        salt,
        nonce,
        sealed,
    })
}

impl Keyring {
    /// A new keyring with a fresh key pair; returns the private key too so callers need not
    /// unseal it again.
    pub(crate) fn create(
        name: &str,
        uid: u32,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(Keyring, PrivateKey)> {
        validate_name(name)?;
        params.validate()?;
        params.check_cap()?;
        let private = PrivateKey::generate()?;
        let sealed = seal(name, &private, passphrase, params)?;
        let keyring = Keyring {
            name: name.to_string(),
            uid,
            public_key: private.public_key(),
            sealed: Some(sealed),
        };
        Ok((keyring, private))
    }

    /// A recipient whose private key lives elsewhere.
    pub fn import(name: &str, uid: u32, public_key: PublicKey) -> Result<Keyring> {
        validate_name(name)?;
        Ok(Keyring {
            name: name.to_string(),
            uid,
            public_key,
            sealed: None,
        })
    }

    pub(crate) fn has_private_key(&self) -> bool {
        self.sealed.is_some()
    }

    pub fn kdf_params(&self) -> Option<KdfParams> {
        self.sealed.as_ref().map(|s| s.params)
    }

    pub fn unlock(&self, passphrase: &[u8]) -> Result<PrivateKey> {
        let sealed = self
            .sealed
            .as_ref()
            .ok_or_else(|| KeyringError::NoPrivateKey(self.name.clone()))?;
        let key = crypto::passphrase_key(passphrase, &sealed.salt, &sealed.params)?;
        let aad = seal_aad(&self.name, &self.public_key);
        let secret = crypto::open_secret(&key, &sealed.nonce, &sealed.sealed, &aad)
            .map_err(|_| KeyringError::WrongPassphrase(self.name.clone()))?;
        let private = PrivateKey::from_bytes(&secret);
        // The AAD already binds the public key; this also catches a keyring whose stored
        // public key does not belong to its private key.
        if private.public_key() != self.public_key {
            return Err(KeyringError::Malformed(
                "public key does not match the sealed private key".into(),
            ));
        }
        Ok(private)
    }

    /// Seals the same private key under a new passphrase (and possibly new parameters).
    pub fn reseal(
        &mut self,
        private: &PrivateKey,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<()> {
        params.validate()?;
        params.check_cap()?;
        if private.public_key() != self.public_key {
            return Err(KeyringError::Malformed(
                "private key does not belong to this keyring".into(),
            ));
        }
        self.sealed = Some(seal(&self.name, private, passphrase, params)?);
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let record = KeyringRecord {
            version: FORMAT_VERSION,
            name: self.name.clone(),
            uid: self.uid,
            public_key: format_public_key(&self.public_key),
            sealed_private_key: self.sealed.as_ref().map(|s| SealedRecord {
                kdf: KdfRecord {
                    algorithm: "argon2id".into(),
                    m_kib: s.params.m_kib,
                    t: s.params.t,
                    p: s.params.p,
                    salt: hex::encode(s.salt),
                },
                nonce: hex::encode(s.nonce),
                ciphertext: hex::encode(s.sealed),
            }),
        };
        let mut json = serde_json::to_string_pretty(&record).unwrap_or_default();
        json.push('\n');
        json
    }

    pub fn from_json(bytes: &[u8]) -> Result<Keyring> {
        let record: KeyringRecord =
            serde_json::from_slice(bytes).map_err(|e| KeyringError::Malformed(e.to_string()))?;
        if record.version != FORMAT_VERSION {
            return Err(KeyringError::Malformed(format!(
                "unsupported keyring version {}",
                record.version
            )));
        }
        validate_name(&record.name)?;
        let public_key = parse_public_key(&record.public_key)?;
        let sealed = match record.sealed_private_key {
            None => None,
            Some(s) => {
                if s.kdf.algorithm != "argon2id" {
                    return Err(KeyringError::Malformed(format!(
                        "unsupported key-derivation algorithm {:?}",
                        s.kdf.algorithm
                    )));
                }
                let params = KdfParams {
                    m_kib: s.kdf.m_kib,
                    t: s.kdf.t,
                    p: s.kdf.p,
                };
                params.validate()?;
                Some(SealedKey {
                    params,
                    salt: hex_array(&s.kdf.salt, "salt")?,
                    nonce: hex_array(&s.nonce, "nonce")?,
                    sealed: hex_array(&s.ciphertext, "ciphertext")?,
                })
            }
        };
        Ok(Keyring {
            name: record.name,
            uid: record.uid,
            public_key,
            sealed,
        })
    }
}

fn hex_array<const N: usize>(text: &str, field: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| KeyringError::Malformed(format!("{field} must be {N} bytes of hex")))?;
    Ok(out)
}

/// A passphrase held in memory that is wiped on drop.
pub(crate) type Passphrase = Zeroizing<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn create_serialize_unlock() {
        let (k, private) = Keyring::create("alice", 1001, b"pw", FAST).unwrap();
        let k2 = Keyring::from_json(k.to_json().as_bytes()).unwrap();
        assert_eq!(k2.uid, 1001);
        assert_eq!(k2.kdf_params(), Some(FAST));
        let unlocked = k2.unlock(b"pw").unwrap();
        assert_eq!(unlocked.public_key(), private.public_key());
        assert!(matches!(
            k2.unlock(b"nope"),
            Err(KeyringError::WrongPassphrase(_))
        ));
    }

    #[test]
    fn reseal_keeps_key() {
        let (mut k, private) = Keyring::create("bob", 1, b"old", FAST).unwrap();
        k.reseal(&private, b"new", FAST).unwrap();
        assert!(k.unlock(b"old").is_err());
        assert_eq!(k.unlock(b"new").unwrap().public_key(), private.public_key());
    }

    #[test]
    fn swapped_public_key_is_refused() {
        let (k, _) = Keyring::create("alice", 1, b"pw", FAST).unwrap();
        let other = PrivateKey::generate().unwrap().public_key();
        let json = k.to_json().replace(
            &format_public_key(&k.public_key),
            &format_public_key(&other),
        );
        let k2 = Keyring::from_json(json.as_bytes()).unwrap();
        assert!(k2.unlock(b"pw").is_err());
    }

    #[test]
    fn names_and_keys_validated() {
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_name("alice.smith_2-x").unwrap();
        let pk = PrivateKey::generate().unwrap().public_key();
        assert_eq!(parse_public_key(&format_public_key(&pk)).unwrap(), pk);
        assert!(parse_public_key("tvault-x25519:zz").is_err());
        let zero = format!("tvault-x25519:{}", "00".repeat(32));
        assert!(matches!(
            parse_public_key(&zero),
            Err(KeyringError::WeakPublicKey(_))
        ));
        assert!(Keyring::from_json(b"{}").is_err());
        assert!(Keyring::create("a", 1, b"", FAST).is_err());
    }

    #[test]
    fn new_seals_stay_within_the_caps() {
        let long = vec![b'x'; MAX_PASSPHRASE_LEN + 1];
        assert!(matches!(
            Keyring::create("a", 1, &long, FAST),
            Err(KeyringError::PassphraseTooLong(n)) if n == long.len()
        ));
        let (mut k, private) = Keyring::create("a", 1, &long[..MAX_PASSPHRASE_LEN], FAST).unwrap();
        assert!(matches!(
            k.reseal(&private, &long, FAST),
            Err(KeyringError::PassphraseTooLong(_))
        ));
        let over = KdfParams {
            t: KdfParams::CAP_T + 1,
            ..FAST
        };
        for result in [
            Keyring::create("a", 1, b"pw", over).map(|_| ()),
            k.reseal(&private, b"pw", over),
        ] {
            assert!(matches!(
                result,
                Err(KeyringError::Crypto(CryptoError::KdfOverCap { .. }))
            ));
        }
        // A keyring sealed over the caps (before they existed) still parses, so that the CLI
        // can re-seal it; the mount refuses to run it (access.rs).
        let json = k.to_json().replace("\"t\": 1", "\"t\": 64");
        let legacy = Keyring::from_json(json.as_bytes()).unwrap();
        assert!(legacy.kdf_params().unwrap().check_cap().is_err());
    }
}
