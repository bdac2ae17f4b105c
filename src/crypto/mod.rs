//! Cryptographic building blocks: chunk AEAD, header MAC, key derivation, key wrapping to
//! X25519 recipients and passphrase sealing with Argon2id.
//!
//! Everything here is a thin, typed layer over audited RustCrypto / dalek primitives; this
//! module knows nothing about files, users or stores. All secret material lives in types that
//! zeroize on drop and have no `Debug` output that could leak it into logs.

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::{Aes256GcmSiv, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub(crate) const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const MAC_LEN: usize = 32;
pub const FILE_ID_LEN: usize = 16;
/// Wrapped 32-byte key plus its AEAD tag.
pub(crate) const WRAPPED_KEY_LEN: usize = KEY_LEN + TAG_LEN;

const INFO_CHUNK_KEY: &[u8] = b"tensorvault v1 chunk key";
const INFO_MAC_KEY: &[u8] = b"tensorvault v1 header mac key";
const INFO_WRAP_KEY: &[u8] = b"tensorvault v1 key slot";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("authentication failed")]
    Authentication,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("invalid key-derivation parameters: {0}")]
    KdfParams(String),
    #[error(
        "Argon2id m={m_kib} KiB, t={t} is over the cap of m={} KiB (1 GiB), t={} that tvault \
         creates and a mount runs; choose a smaller --kdf-memory / --kdf-iterations (an existing \
         keyring is re-sealed within the cap by `tvault user passwd`)",
        KdfParams::CAP_M_KIB,
        KdfParams::CAP_T
    )]
    KdfOverCap { m_kib: u32, t: u32 },
    #[error("the public key is a low-order point (no recipient can own it)")]
    WeakPublicKey,
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// A 256-bit secret key (a file's data key, or a key derived from a passphrase).
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut())?;
        Ok(SecretKey(key))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

fn hkdf_expand(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
    if hk.expand_multi_info(info, out.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 output of 32 bytes is always valid");
    }
    out
}

/// HMAC-SHA256 keyed with `key`.
fn hmac(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// HMAC-SHA256 of `data` under `key` (of any length).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = hmac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Checks `expected` against the HMAC-SHA256 of `data` under `key`, in constant time; a tag
/// of any other length than [`MAC_LEN`] fails.
pub fn hmac_sha256_verify(key: &[u8], data: &[u8], expected: &[u8]) -> Result<(), CryptoError> {
    let mut mac = hmac(key);
    mac.update(data);
    mac.verify_slice(expected)
        .map_err(|_| CryptoError::Authentication)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Per-file keys derived from the data key and the file id: one for chunk AEAD, one for the
/// header MAC. Deriving both from the data key is what makes the header MAC a commitment to it.
/// Chunks use AWS-LC's AES-256-GCM-SIV (the hot path); AWS-LC wipes the key schedule when
/// the key is dropped.
pub struct FileKeys {
    chunk_cipher: aws_lc_rs::aead::LessSafeKey,
    mac_key: Zeroizing<[u8; KEY_LEN]>,
    file_id: [u8; FILE_ID_LEN],
}

/// Additional data bound to every chunk: the file it belongs to, its position and whether it
/// is the last one (so truncation at a chunk boundary is detected).
fn chunk_aad(file_id: &[u8; FILE_ID_LEN], index: u64, last: bool) -> [u8; FILE_ID_LEN + 9] {
    let mut aad = [0u8; FILE_ID_LEN + 9];
    aad[..FILE_ID_LEN].copy_from_slice(file_id);
    aad[FILE_ID_LEN..FILE_ID_LEN + 8].copy_from_slice(&index.to_le_bytes());
    aad[FILE_ID_LEN + 8] = u8::from(last);
    aad
}

impl FileKeys {
    pub fn derive(data_key: &SecretKey, file_id: &[u8; FILE_ID_LEN]) -> Self {
        let chunk_key = hkdf_expand(data_key.as_bytes(), file_id, &[INFO_CHUNK_KEY]);
        let mac_key = hkdf_expand(data_key.as_bytes(), file_id, &[INFO_MAC_KEY]);
        let unbound =
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM_SIV, chunk_key.as_ref());
        let Ok(unbound) = unbound else {
            unreachable!("a 32-byte key is valid for AES-256-GCM-SIV");
        };
        FileKeys {
            chunk_cipher: aws_lc_rs::aead::LessSafeKey::new(unbound),
            mac_key,
            file_id: *file_id,
        }
    }

    /// Encrypts `buf` in place under a fresh random nonce; returns (nonce, tag).
    pub fn seal_chunk(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), CryptoError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let nonce: [u8; NONCE_LEN] = random_array()?;
        let aad = chunk_aad(&self.file_id, index, last);
        let tag = self
            .chunk_cipher
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Authentication)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok((nonce, out))
    }

    /// Decrypts `buf` in place. On failure `buf` holds no plaintext: it is zeroed.
    pub fn open_chunk(
        &self,
        index: u64,
        last: bool,
        nonce: &[u8; NONCE_LEN],
        tag: &[u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let aad = chunk_aad(&self.file_id, index, last);
        let result = self.chunk_cipher.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            tag,
            buf,
        );
        if result.is_err() {
            buf.zeroize();
            return Err(CryptoError::Authentication);
        }
        Ok(())
    }

    /// Decrypts `ciphertext` into `out` (same length) without an intermediate copy: the
    /// read path decrypts from the ciphertext it read into a scratch buffer straight into
    /// the chunk's buffer. On failure `out` is zeroed.
    pub fn open_chunk_into(
        &self,
        index: u64,
        last: bool,
        nonce: &[u8; NONCE_LEN],
        tag: &[u8; TAG_LEN],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let aad = chunk_aad(&self.file_id, index, last);
        let result = self.chunk_cipher.open_separate_gather(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            ciphertext,
            tag,
            out,
        );
        if result.is_err() {
            out.zeroize();
            return Err(CryptoError::Authentication);
        }
        Ok(())
    }

    fn mac(&self) -> Hmac<Sha256> {
        hmac(self.mac_key.as_ref())
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn header_mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a header MAC.
    pub(crate) fn verify_header_mac(
        &self,
        parts: &[&[u8]],
        expected: &[u8],
    ) -> Result<(), CryptoError> {
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(expected)
            .map_err(|_| CryptoError::Authentication)
    }
}

/// An X25519 public key of a keyring.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(x25519_dalek::PublicKey);

impl PublicKey {
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(x25519_dalek::PublicKey::from(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// True for the low-order points, for which X25519 yields a shared secret that does not
    /// depend on the other party's private key.
    pub(crate) fn is_low_order(&self) -> bool {
        let probe = x25519_dalek::StaticSecret::from([0x55; 32]);
        !probe.diffie_hellman(&self.0).was_contributory()
    }

    /// Short, human-comparable fingerprint: the first 16 bytes of SHA-256, hex in groups of 4.
    pub fn fingerprint(&self) -> String {
        let digest = sha256(self.as_bytes());
        let hex = hex::encode(&digest[..16]);
        hex.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// An X25519 private key; the dalek type zeroizes itself on drop.
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes: [u8; 32] = random_array()?;
        let key = PrivateKey(x25519_dalek::StaticSecret::from(bytes));
        bytes.zeroize();
        Ok(key)
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        PrivateKey(x25519_dalek::StaticSecret::from(*bytes))
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0))
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A data key wrapped to one recipient: ephemeral public key, nonce and sealed key + tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub ephemeral_public: [u8; 32],
    pub nonce: [u8; NONCE_LEN],
    pub sealed: [u8; WRAPPED_KEY_LEN],
}

fn wrap_cipher(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Aes256GcmSiv {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let key = hkdf_expand(shared, &salt, &[INFO_WRAP_KEY]);
    Aes256GcmSiv::new(key.as_ref().into())
}

/// Wraps `data_key` to `recipient` (ephemeral-static ECDH, HKDF-SHA256, AES-256-GCM-SIV).
/// `aad` binds the slot to its context (file id and recipient label).
pub(crate) fn wrap_key(
    recipient: &PublicKey,
    data_key: &SecretKey,
    aad: &[u8],
) -> Result<WrappedKey, CryptoError> {
    let ephemeral = PrivateKey::generate()?;
    let ephemeral_public = *ephemeral.public_key().as_bytes();
    let shared = ephemeral.0.diffie_hellman(&recipient.0);
    // A low-order recipient key gives a shared secret anyone can compute: wrapping to it
    // would publish the data key.
    if !shared.was_contributory() {
        return Err(CryptoError::WeakPublicKey);
    }
    let cipher = wrap_cipher(shared.as_bytes(), &ephemeral_public, recipient.as_bytes());
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let mut sealed = [0u8; WRAPPED_KEY_LEN];
    sealed[..KEY_LEN].copy_from_slice(data_key.as_bytes());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut sealed[..KEY_LEN])
        .map_err(|_| CryptoError::Authentication)?;
    sealed[KEY_LEN..].copy_from_slice(&tag);
    Ok(WrappedKey {
        ephemeral_public,
        nonce,
        sealed,
    })
}

pub(crate) fn unwrap_key(
    private: &PrivateKey,
    wrapped: &WrappedKey,
    aad: &[u8],
) -> Result<SecretKey, CryptoError> {
    let ephemeral = x25519_dalek::PublicKey::from(wrapped.ephemeral_public);
    let shared = private.0.diffie_hellman(&ephemeral);
    // A low-order ephemeral key yields an all-zero secret anyone could compute; refuse it.
    if !shared.was_contributory() {
        return Err(CryptoError::Authentication);
    }
    let recipient = private.public_key();
    let cipher = wrap_cipher(
        shared.as_bytes(),
        &wrapped.ephemeral_public,
        recipient.as_bytes(),
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&wrapped.sealed[..KEY_LEN]);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&wrapped.nonce),
            aad,
            key.as_mut(),
            Tag::from_slice(&wrapped.sealed[KEY_LEN..]),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(SecretKey(key))
}

/// Argon2id cost parameters, stored beside every sealed keyring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The default: m = 64 MiB, t = 3, p = 1 (OWASP's Argon2id guidance is weaker than this).
    pub(crate) const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// What a keyring file may claim at all, so a hostile file cannot make a reader allocate
    /// unbounded memory. Keyrings sealed before the caps below existed may lie between the
    /// two: only the CLI, in its user's own process, still runs those (so that `user passwd`
    /// can re-seal them within the caps).
    pub(crate) const MAX_M_KIB: u32 = 4 * 1024 * 1024;
    pub(crate) const MAX_T: u32 = 64;
    pub(crate) const MAX_P: u32 = 16;
    /// What `user add` / `user passwd` seal with and the mount daemon runs: an unlock at the
    /// cap holds 1 GiB for several seconds of one core, and the daemon serves many users.
    pub(crate) const CAP_M_KIB: u32 = 1024 * 1024;
    pub(crate) const CAP_T: u32 = 16;

    fn argon2(&self) -> Result<argon2::Argon2<'static>, CryptoError> {
        if self.m_kib > Self::MAX_M_KIB || self.t > Self::MAX_T || self.p > Self::MAX_P {
            return Err(CryptoError::KdfParams(format!(
                "m={} KiB t={} p={} exceeds the limits m<={} t<={} p<={}",
                self.m_kib,
                self.t,
                self.p,
                Self::MAX_M_KIB,
                Self::MAX_T,
                Self::MAX_P
            )));
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    pub(crate) fn validate(&self) -> Result<(), CryptoError> {
        self.argon2().map(|_| ())
    }

    /// Refuses parameters above `CAP_M_KIB` / `CAP_T` (lanes are bounded by `validate`).
    pub(crate) fn check_cap(&self) -> Result<(), CryptoError> {
        if self.m_kib > Self::CAP_M_KIB || self.t > Self::CAP_T {
            return Err(CryptoError::KdfOverCap {
                m_kib: self.m_kib,
                t: self.t,
            });
        }
        Ok(())
    }
}

/// Derives a key from a passphrase with Argon2id.
pub fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    params: &KdfParams,
) -> Result<SecretKey, CryptoError> {
    let argon = params.argon2()?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(SecretKey(out))
}

/// Seals a 32-byte secret under `key` (AES-256-GCM-SIV, random nonce); returns (nonce, sealed).
pub fn seal_secret(
    key: &SecretKey,
    secret: &[u8; KEY_LEN],
    aad: &[u8],
) -> Result<([u8; NONCE_LEN], [u8; WRAPPED_KEY_LEN]), CryptoError> {
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let mut sealed = [0u8; WRAPPED_KEY_LEN];
    sealed[..KEY_LEN].copy_from_slice(secret);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut sealed[..KEY_LEN])
        .map_err(|_| CryptoError::Authentication)?;
    sealed[KEY_LEN..].copy_from_slice(&tag);
    Ok((nonce, sealed))
}

pub(crate) fn open_secret(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8; WRAPPED_KEY_LEN],
    aad: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let cipher = Aes256GcmSiv::new(key.as_bytes().into());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&sealed[..KEY_LEN]);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            out.as_mut(),
            Tag::from_slice(&sealed[KEY_LEN..]),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
