//! Known-answer vectors for the `.tvlt` container, the keyring file, the `.tvln` link file
//! and the audit log (docs/FORMAT.md).
//!
//! The code draws file ids, nonces and ephemeral keys from the operating system, so vectors
//! cannot be recomputed, only checked. They were written once by the ignored generator below
//! and committed under `tests/vectors/`:
//!
//! ```text
//! cargo test --test vectors -- --ignored generate     # rewrites tests/vectors/
//! cargo test --test vectors -- --ignored --exact rewrite_v2_vectors   # only the version 2 ones
//! ```
//!
//! The first six positive vectors and `negative.json` are version 1 containers (no ownership
//! record), as earlier builds wrote them; the `owned` and `root-owned` vectors and
//! `negative-v2.json` are version 2, which this build writes.
//!
//! The other tests read every vector and check it twice: through the crate's public API, and
//! through `reference`, an independent reader written from docs/FORMAT.md with nothing but the
//! primitives (X25519, HKDF-SHA256, HMAC-SHA256, AES-256-GCM-SIV, Argon2id). The reference
//! also recomputes every recorded intermediate value (ECDH output, HKDF outputs, AADs, MAC),
//! so a mismatch between the document and the code fails here. The audit log in
//! `tests/vectors/audit/` is checked the same way: `audit_reference` rebuilds every line's
//! bytes, MAC and link from the document, and the crate's verifier must accept the log and
//! refuse every one-byte change of it.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use tensorvault::container::{
    self, Container, ContainerError, FixedHeader, KeySlot, Ownership, Writer, FIXED_HEADER_LEN,
    TABLE_ENTRY_LEN,
};
use tensorvault::crypto::{FileKeys, KdfParams, PrivateKey, PublicKey, SecretKey};
use tensorvault::keyring::{self, Keyring};

/// Every vector uses 4 KiB chunks to stay small.
const LOG2: u8 = 12;
const CS: usize = 1 << LOG2;
const RULE: &str = "byte i is (i + seed) mod 251";

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
}

fn plaintext(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64).map(|i| ((i + seed) % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn unhex<const N: usize>(v: &Value) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(v.as_str().expect("hex string"), &mut out).expect("hex of right length");
    out
}

fn unhex_vec(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// An independent reader of the format, written from docs/FORMAT.md. It shares no code with
/// the crate; errors are reported as the same JSON kinds the vectors record.
mod reference {
    use aes_gcm_siv::aead::AeadInPlace;
    use aes_gcm_siv::{Aes256GcmSiv, KeyInit, Nonce, Tag};
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use serde_json::{json, Value};
    use sha2::Sha256;

    pub const INFO_CHUNK: &[u8] = b"tensorvault v1 chunk key";
    pub const INFO_MAC: &[u8] = b"tensorvault v1 header mac key";
    pub const INFO_WRAP: &[u8] = b"tensorvault v1 key slot";
    pub const SLOT_AAD_PREFIX: &[u8] = b"tensorvault v1 slot";
    pub const KEYRING_AAD_PREFIX: &[u8] = b"tensorvault v1 keyring";

    pub fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(Some(salt), ikm)
            .expand(info, &mut out)
            .expect("32 bytes");
        out
    }

    pub fn x25519(scalar: [u8; 32], point: [u8; 32]) -> [u8; 32] {
        x25519_dalek::x25519(scalar, point)
    }

    pub fn public_key(scalar: [u8; 32]) -> [u8; 32] {
        x25519(scalar, x25519_dalek::X25519_BASEPOINT_BYTES)
    }

    pub fn wrap_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
        let salt = [&ephemeral[..], &recipient[..]].concat();
        hkdf(shared, &salt, INFO_WRAP)
    }

    pub fn slot_aad(file_id: &[u8], label: &str) -> Vec<u8> {
        [SLOT_AAD_PREFIX, file_id, label.as_bytes()].concat()
    }

    pub fn chunk_aad(file_id: &[u8], index: u64, last: bool) -> Vec<u8> {
        [file_id, &index.to_le_bytes()[..], &[u8::from(last)]].concat()
    }

    /// The MAC over the first 60 header bytes, with the version field (bytes 4..6) taken as
    /// 1, and the chunk table.
    pub fn header_mac(mac_key: &[u8; 32], header: &[u8], table: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key).expect("any key length");
        let mut header = header.to_vec();
        header[4..6].copy_from_slice(&1u16.to_le_bytes());
        mac.update(&header);
        mac.update(table);
        mac.finalize().into_bytes().into()
    }

    /// AES-256-GCM-SIV with a detached 16-byte tag.
    pub fn open(
        key: &[u8; 32],
        nonce: &[u8],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = ct.to_vec();
        Aes256GcmSiv::new(key.into())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(buf)
    }

    pub struct Slot {
        pub label: String,
        pub ephemeral: [u8; 32],
        pub nonce: [u8; 12],
        pub sealed: [u8; 48],
    }

    /// An ownership record: owner (None: root), gid, mode.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Record {
        pub owner: Option<String>,
        pub gid: u32,
        pub mode: u16,
    }

    pub struct Parsed {
        pub version: u16,
        pub file_id: [u8; 16],
        pub chunk_log2: u8,
        pub plaintext_len: u64,
        pub slots_len: u32,
        pub slots: Vec<Slot>,
        /// The record of a version 2 file; None in version 1.
        pub ownership: Option<Record>,
        pub chunk_count: u64,
        pub data: usize,
        pub table: usize,
        pub mac: usize,
    }

    pub enum Key<'a> {
        Slot(&'a str, [u8; 32]),
        Data([u8; 32]),
    }

    fn malformed() -> Value {
        json!({"kind": "Malformed"})
    }

    fn bad_record() -> Value {
        json!({"kind": "Ownership"})
    }

    /// `owner_len u8 ‖ owner ‖ gid u32le ‖ mode u16le`, exactly filling `s`.
    fn record(s: &[u8]) -> Result<Record, Value> {
        let (&n, rest) = s.split_first().ok_or_else(bad_record)?;
        let n = n as usize;
        if n > 32 || rest.len() < n + 6 {
            return Err(bad_record());
        }
        let owner = std::str::from_utf8(&rest[..n]).map_err(|_| bad_record())?;
        if owner.chars().any(char::is_control) {
            return Err(bad_record());
        }
        let gid = u32::from_le_bytes(rest[n..n + 4].try_into().unwrap());
        let mode = u16::from_le_bytes(rest[n + 4..n + 6].try_into().unwrap());
        if mode & !0o7777 != 0 {
            return Err(bad_record());
        }
        if rest.len() != n + 6 {
            return Err(malformed());
        }
        Ok(Record {
            owner: (n > 0).then(|| owner.to_string()),
            gid,
            mode,
        })
    }

    /// Steps 1-4 of the reader's verification order: everything that needs no key.
    pub fn parse(b: &[u8]) -> Result<Parsed, Value> {
        if b.len() < 64 {
            if b.len() >= 4 && &b[..4] != b"TVLT" {
                return Err(json!({"kind": "NotAContainer"}));
            }
            return Err(malformed());
        }
        if &b[..4] != b"TVLT" {
            return Err(json!({"kind": "NotAContainer"}));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != 1 && version != 2 {
            return Err(json!({"kind": "UnsupportedVersion", "version": version}));
        }
        let chunk_log2 = b[6];
        if !(12..=20).contains(&chunk_log2) {
            return Err(json!({"kind": "ChunkSize", "log2": chunk_log2}));
        }
        if b[7] != 0 || b[32..60].iter().any(|&x| x != 0) {
            return Err(malformed());
        }
        let file_id: [u8; 16] = b[8..24].try_into().unwrap();
        let plaintext_len = u64::from_le_bytes(b[24..32].try_into().unwrap());
        let slots_len = u32::from_le_bytes(b[60..64].try_into().unwrap());
        if !(2..=1 << 20).contains(&slots_len) {
            return Err(malformed());
        }
        let chunk_count = plaintext_len.div_ceil(1 << chunk_log2).max(1);
        let total = (|| {
            64u64
                .checked_add(u64::from(slots_len))?
                .checked_add(plaintext_len)?
                .checked_add(chunk_count.checked_mul(28)?)?
                .checked_add(32)
        })()
        .ok_or_else(malformed)?;
        if b.len() as u64 != total {
            return Err(json!({"kind": "SizeMismatch", "expected": total, "actual": b.len()}));
        }
        let data = 64 + slots_len as usize;
        let table = data + plaintext_len as usize;
        let mac = table + 28 * chunk_count as usize;

        let mut s = &b[64..data];
        let count = u16::from_le_bytes([s[0], s[1]]);
        s = &s[2..];
        let mut slots: Vec<Slot> = Vec::new();
        for _ in 0..count {
            let Some((&len, rest)) = s.split_first() else {
                return Err(malformed());
            };
            let len = len as usize;
            if rest.len() < len + 92 {
                return Err(malformed());
            }
            let label = std::str::from_utf8(&rest[..len])
                .map_err(|_| malformed())?
                .to_string();
            if label.is_empty() || label.chars().any(char::is_control) {
                return Err(json!({"kind": "Label", "label": label}));
            }
            if slots.iter().any(|x| x.label == label) {
                return Err(malformed());
            }
            let f = &rest[len..len + 92];
            slots.push(Slot {
                label,
                ephemeral: f[..32].try_into().unwrap(),
                nonce: f[32..44].try_into().unwrap(),
                sealed: f[44..92].try_into().unwrap(),
            });
            s = &rest[len + 92..];
        }
        let ownership = match version {
            1 if !s.is_empty() => return Err(malformed()),
            1 => None,
            _ => Some(record(s)?),
        };
        Ok(Parsed {
            version,
            file_id,
            chunk_log2,
            plaintext_len,
            slots_len,
            slots,
            ownership,
            chunk_count,
            data,
            table,
            mac,
        })
    }

    /// Unwraps the data key from a slot (step 5).
    pub fn unwrap(p: &Parsed, label: &str, scalar: [u8; 32]) -> Result<[u8; 32], Value> {
        let slot = p
            .slots
            .iter()
            .find(|s| s.label == label)
            .ok_or_else(|| json!({"kind": "NoSlot", "label": label}))?;
        let refused = || json!({"kind": "SlotAuthentication", "label": label});
        let shared = x25519(scalar, slot.ephemeral);
        if shared == [0u8; 32] {
            return Err(refused());
        }
        let key = wrap_key(&shared, &slot.ephemeral, &public_key(scalar));
        let aad = slot_aad(&p.file_id, label);
        let dk = open(
            &key,
            &slot.nonce,
            &aad,
            &slot.sealed[..32],
            &slot.sealed[32..],
        )
        .ok_or_else(refused)?;
        Ok(dk.try_into().unwrap())
    }

    /// The whole verification order; returns the plaintext.
    pub fn decrypt(b: &[u8], key: Key) -> Result<Vec<u8>, Value> {
        let p = parse(b)?;
        let dk = match key {
            Key::Slot(label, scalar) => unwrap(&p, label, scalar)?,
            Key::Data(dk) => dk,
        };
        let mac_key = hkdf(&dk, &p.file_id, INFO_MAC);
        let mac = header_mac(&mac_key, &b[..60], &b[p.table..p.mac]);
        // (A real implementation compares in constant time.)
        if mac[..] != b[p.mac..] {
            return Err(json!({"kind": "HeaderAuthentication"}));
        }
        let chunk_key = hkdf(&dk, &p.file_id, INFO_CHUNK);
        let cs = 1usize << p.chunk_log2;
        let mut out = Vec::with_capacity(p.plaintext_len as usize);
        for i in 0..p.chunk_count {
            let start = i as usize * cs;
            let end = (start + cs).min(p.plaintext_len as usize);
            let e = &b[p.table + 28 * i as usize..][..28];
            let aad = chunk_aad(&p.file_id, i, i + 1 == p.chunk_count);
            let ct = &b[p.data + start..p.data + end];
            let pt = open(&chunk_key, &e[..12], &aad, ct, &e[12..])
                .ok_or_else(|| json!({"kind": "ChunkAuthentication", "index": i}))?;
            out.extend_from_slice(&pt);
        }
        Ok(out)
    }
}

use reference::Key;

/// The crate's error as the JSON kind the vectors record.
fn kind(e: &ContainerError) -> Value {
    match e {
        ContainerError::NotAContainer => json!({"kind": "NotAContainer"}),
        ContainerError::UnsupportedVersion(v) => {
            json!({"kind": "UnsupportedVersion", "version": v})
        }
        // The vectors record structural failures as one kind; the crate names each.
        ContainerError::TruncatedHeader(_)
        | ContainerError::ReservedNotZero { .. }
        | ContainerError::SlotsLenOutOfRange(_)
        | ContainerError::LayoutOverflow { .. }
        | ContainerError::NoSlotCount(_)
        | ContainerError::TruncatedSlot { .. }
        | ContainerError::TrailingSlotBytes(_)
        | ContainerError::TrailingRecordBytes(_)
        | ContainerError::LabelNotUtf8 { .. }
        | ContainerError::DuplicateSlot(_) => json!({"kind": "Malformed"}),
        ContainerError::SizeMismatch { expected, actual } => {
            json!({"kind": "SizeMismatch", "expected": expected, "actual": actual})
        }
        ContainerError::NoSlot(l) => json!({"kind": "NoSlot", "label": l}),
        ContainerError::SlotAuthentication(l) => json!({"kind": "SlotAuthentication", "label": l}),
        ContainerError::HeaderAuthentication => json!({"kind": "HeaderAuthentication"}),
        ContainerError::ChunkAuthentication { index } => {
            json!({"kind": "ChunkAuthentication", "index": index})
        }
        ContainerError::ChunkSize(n) => json!({"kind": "ChunkSize", "log2": n}),
        ContainerError::Ownership(_) => json!({"kind": "Ownership"}),
        ContainerError::EmptyLabel => json!({"kind": "Label", "label": ""}),
        ContainerError::LabelControlCharacter(l) => json!({"kind": "Label", "label": l}),
        other => json!({"kind": "Other", "error": other.to_string()}),
    }
}

/// Opens `bytes` through the crate's API and reads everything, the way `tvault get` does.
fn crate_decrypt(bytes: Vec<u8>, key: &Key) -> Result<Vec<u8>, ContainerError> {
    let c = Container::parse(bytes)?;
    let dk = match key {
        Key::Slot(label, scalar) => c.unwrap_key(label, &PrivateKey::from_bytes(scalar))?,
        Key::Data(dk) => SecretKey::from_bytes(*dk),
    };
    let r = c.open(&dk)?;
    r.verify_all()?;
    let mut out = vec![0u8; r.len() as usize];
    let n = r.read_at(0, &mut out)?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Outcome as recorded in negative.json: `{"kind": "Ok", "plaintext_sha256": ..}` or an error.
fn outcome<E>(r: Result<Vec<u8>, E>, to_kind: impl Fn(&E) -> Value) -> Value {
    match r {
        Ok(p) => json!({"kind": "Ok", "plaintext_sha256": sha256_hex(&p)}),
        Err(e) => to_kind(&e),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks (run by `cargo test`)
// ---------------------------------------------------------------------------------------------

fn json_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(vectors_dir())
        .expect("tests/vectors exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn vectors_of_type(ty: &str) -> Vec<Value> {
    json_files()
        .iter()
        .map(|p| read_json(p))
        .filter(|v| v["type"] == ty)
        .collect()
}

fn container_bytes(v: &Value) -> Vec<u8> {
    let name = v["container"].as_str().expect("container file name");
    let bytes = fs::read(vectors_dir().join(name)).expect("container file");
    assert_eq!(
        sha256_hex(&bytes),
        v["container_sha256"],
        "{name} was altered"
    );
    bytes
}

#[test]
fn container_vectors() {
    let vectors = vectors_of_type("container");
    assert!(vectors.len() >= 6, "expected at least 6 container vectors");
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let bytes = container_bytes(v);
        assert_eq!(bytes.len() as u64, v["layout"]["total"], "{name}");
        let pt = &v["plaintext"];
        let expected = plaintext(
            pt["len"].as_u64().unwrap() as usize,
            pt["seed"].as_u64().unwrap(),
        );
        assert_eq!(
            sha256_hex(&expected),
            pt["sha256"],
            "{name}: plaintext rule"
        );
        if let Some(h) = pt.get("hex") {
            assert_eq!(unhex_vec(h), expected, "{name}");
        }
        let dk: [u8; 32] = unhex(&v["data_key"]);

        // Through the crate.
        let c = Container::parse(bytes.clone()).unwrap();
        let hd = c.header();
        assert_eq!(hd.version, v["header"]["version"], "{name}");
        assert_eq!(hex::encode(hd.file_id), v["header"]["file_id"], "{name}");
        assert_eq!(hd.chunk_log2, v["header"]["chunk_log2"], "{name}");
        assert_eq!(hd.plaintext_len, v["header"]["plaintext_len"], "{name}");
        assert_eq!(hd.slots_len, v["header"]["slots_len"], "{name}");
        let layout = hd.layout().unwrap();
        assert_eq!(layout.data, v["layout"]["data"], "{name}");
        assert_eq!(layout.table, v["layout"]["table"], "{name}");
        assert_eq!(layout.mac, v["layout"]["mac"], "{name}");
        assert_eq!(hd.chunk_count(), v["layout"]["chunk_count"], "{name}");
        let own = &v["ownership"];
        let expected_own = ownership_of(own);
        assert_eq!(c.ownership(), &expected_own, "{name}");
        match own["record"].as_str() {
            Some(record) => {
                assert_eq!(hd.version, 2, "{name}");
                let at = layout.data as usize - record.len() / 2;
                assert_eq!(
                    hex::encode(&bytes[at..layout.data as usize]),
                    record,
                    "{name}"
                );
            }
            None => {
                // Version 1: the default, owned by the first slot's user.
                assert_eq!(hd.version, 1, "{name}");
                assert_eq!(own["owner"], v["recipients"][0]["label"], "{name}");
                assert_eq!(
                    (own["gid"].as_u64(), own["mode"].as_str()),
                    (Some(0), Some("0644"))
                );
            }
        }
        for r in v["recipients"].as_array().unwrap() {
            let label = r["label"].as_str().unwrap();
            let sk: [u8; 32] = unhex(&r["private_key"]);
            let private = PrivateKey::from_bytes(&sk);
            assert_eq!(
                keyring::format_public_key(&private.public_key()),
                r["public_key"],
                "{name}"
            );
            assert_eq!(private.public_key().fingerprint(), r["fingerprint"]);
            let got = c.unwrap_key(label, &private).unwrap();
            assert_eq!(got.as_bytes(), &dk, "{name}: data key from {label}'s slot");
            assert_eq!(
                crate_decrypt(bytes.clone(), &Key::Slot(label, sk)).unwrap(),
                expected,
                "{name}: plaintext via {label}"
            );
        }
        let reader = c.open(&SecretKey::from_bytes(dk)).unwrap();
        let mut chunk = vec![0u8; reader.chunk_size() as usize];
        let mut joined = Vec::new();
        for i in 0..reader.chunk_count() {
            let n = reader.read_chunk(i, &mut chunk).unwrap();
            assert_eq!(n as u64, v["chunks"][i as usize]["len"], "{name}");
            joined.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(joined, expected, "{name}");

        // Through the reference reader, recomputing every recorded value.
        let p = reference::parse(&bytes).unwrap();
        assert_eq!(p.slots_len, v["header"]["slots_len"]);
        assert_eq!(p.version, v["header"]["version"]);
        match &p.ownership {
            Some(r) => assert_eq!(
                (&r.owner, r.gid, r.mode),
                (&expected_own.owner, expected_own.gid, expected_own.mode),
                "{name}: reference record"
            ),
            None => assert!(own["record"].is_null(), "{name}"),
        }
        assert_eq!(p.slots.len(), v["recipients"].as_array().unwrap().len());
        for r in v["recipients"].as_array().unwrap() {
            let label = r["label"].as_str().unwrap();
            let sk: [u8; 32] = unhex(&r["private_key"]);
            let slot = p.slots.iter().find(|s| s.label == label).unwrap();
            let public = reference::public_key(sk);
            assert_eq!(
                format!("tvault-x25519:{}", hex::encode(public)),
                r["public_key"]
            );
            assert_eq!(hex::encode(slot.ephemeral), r["ephemeral_public"], "{name}");
            assert_eq!(hex::encode(slot.nonce), r["wrap_nonce"], "{name}");
            assert_eq!(hex::encode(slot.sealed), r["wrapped_key"], "{name}");
            let shared = reference::x25519(sk, slot.ephemeral);
            assert_eq!(hex::encode(shared), r["ecdh_shared_secret"], "{name}");
            let wk = reference::wrap_key(&shared, &slot.ephemeral, &public);
            assert_eq!(hex::encode(wk), r["wrap_key"], "{name}");
            let aad = reference::slot_aad(&p.file_id, label);
            assert_eq!(hex::encode(&aad), r["slot_aad"], "{name}");
            assert_eq!(reference::unwrap(&p, label, sk).unwrap(), dk, "{name}");
            assert_eq!(
                reference::decrypt(&bytes, Key::Slot(label, sk)).unwrap(),
                expected,
                "{name}"
            );
        }
        let chunk_key = reference::hkdf(&dk, &p.file_id, reference::INFO_CHUNK);
        let mac_key = reference::hkdf(&dk, &p.file_id, reference::INFO_MAC);
        assert_eq!(hex::encode(chunk_key), v["chunk_key"], "{name}");
        assert_eq!(hex::encode(mac_key), v["mac_key"], "{name}");
        let mac = reference::header_mac(&mac_key, &bytes[..60], &bytes[p.table..p.mac]);
        assert_eq!(hex::encode(mac), v["header_mac"], "{name}");
        assert_eq!(&bytes[p.mac..], &mac[..], "{name}");
        let chunks = v["chunks"].as_array().unwrap();
        assert_eq!(chunks.len() as u64, p.chunk_count);
        for c in chunks {
            let i = c["index"].as_u64().unwrap();
            let last = c["last"].as_bool().unwrap();
            assert_eq!(last, i + 1 == p.chunk_count);
            let aad = reference::chunk_aad(&p.file_id, i, last);
            assert_eq!(hex::encode(&aad), c["aad"], "{name}");
            let off = c["offset"].as_u64().unwrap() as usize;
            let len = c["len"].as_u64().unwrap() as usize;
            assert_eq!(off, p.data + i as usize * CS);
            let e = &bytes[p.table + 28 * i as usize..][..28];
            assert_eq!(hex::encode(&e[..12]), c["nonce"]);
            assert_eq!(hex::encode(&e[12..]), c["tag"]);
            let pt = reference::open(&chunk_key, &e[..12], &aad, &bytes[off..off + len], &e[12..])
                .unwrap();
            assert_eq!(
                pt,
                expected[i as usize * CS..i as usize * CS + len],
                "{name}"
            );
        }
    }
}

#[test]
fn negative_vectors() {
    let sets = vectors_of_type("negative");
    assert_eq!(
        sets.len(),
        2,
        "negative.json (version 1) and negative-v2.json"
    );
    let cases: Vec<&Value> = sets
        .iter()
        .flat_map(|set| set["cases"].as_array().unwrap())
        .collect();
    assert!(cases.len() >= 27);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bytes = container_bytes(case);
        let label = case["open_as"].as_str().unwrap();
        let sk: [u8; 32] = unhex(&case["private_key"]);
        let dk: [u8; 32] = unhex(&case["data_key"]);
        for (key, expect) in [
            (Key::Slot(label, sk), &case["expect"]),
            (Key::Data(dk), &case["expect_with_data_key"]),
        ] {
            let via_crate = outcome(crate_decrypt(bytes.clone(), &key), kind);
            assert_eq!(&via_crate, expect, "{name}: crate");
            let via_reference = outcome(reference::decrypt(&bytes, key), Value::clone);
            assert_eq!(&via_reference, expect, "{name}: reference reader");
        }
        // An alteration that opens: the ownership a reader then sees.
        if let Some(own) = case.get("ownership_seen") {
            let c = Container::parse(bytes.clone()).unwrap();
            assert_eq!(c.ownership(), &ownership_of(own), "{name}");
        }
    }
}

/// The ownership a vector records: owner (null: root), gid, mode as four octal digits.
fn ownership_of(v: &Value) -> Ownership {
    let mode = u32::from_str_radix(v["mode"].as_str().expect("mode"), 8).expect("octal mode");
    Ownership::new(
        v["owner"].as_str().map(str::to_string),
        v["gid"].as_u64().expect("gid") as u32,
        mode,
    )
}

#[test]
fn keyring_vector() {
    let vectors = vectors_of_type("keyring");
    assert_eq!(vectors.len(), 1);
    let v = &vectors[0];
    let text = fs::read(vectors_dir().join(v["keyring_file"].as_str().unwrap())).unwrap();
    let passphrase = v["passphrase"].as_str().unwrap().as_bytes();
    let expected: [u8; 32] = unhex(&v["private_key"]);

    let k = Keyring::from_json(&text).unwrap();
    assert_eq!(k.name, v["name"]);
    assert_eq!(k.uid, v["uid"]);
    let private = k.unlock(passphrase).unwrap();
    assert_eq!(*private.to_bytes(), expected);
    assert!(k.unlock(b"not the passphrase").is_err());
    // The file is exactly what this build would write.
    assert_eq!(k.to_json().as_bytes(), &text[..]);

    // Reference: Argon2id, then AES-256-GCM-SIV with the documented AAD.
    let j: Value = serde_json::from_slice(&text).unwrap();
    let sealed = &j["sealed_private_key"];
    let kdf = &sealed["kdf"];
    assert_eq!(kdf["algorithm"], "argon2id");
    let params = argon2::Params::new(
        kdf["m_kib"].as_u64().unwrap() as u32,
        kdf["t"].as_u64().unwrap() as u32,
        kdf["p"].as_u64().unwrap() as u32,
        Some(32),
    )
    .unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(passphrase, &unhex_vec(&kdf["salt"]), &mut key)
        .unwrap();
    assert_eq!(hex::encode(key), v["kdf_key"]);
    let public = reference::public_key(expected);
    assert_eq!(
        j["public_key"],
        format!("tvault-x25519:{}", hex::encode(public))
    );
    let aad = [
        reference::KEYRING_AAD_PREFIX,
        &public[..],
        j["name"].as_str().unwrap().as_bytes(),
    ]
    .concat();
    assert_eq!(hex::encode(&aad), v["seal_aad"]);
    let ct = unhex_vec(&sealed["ciphertext"]);
    let opened = reference::open(
        &key,
        &unhex_vec(&sealed["nonce"]),
        &aad,
        &ct[..32],
        &ct[32..],
    );
    assert_eq!(opened.as_deref(), Some(&expected[..]));
}

/// Every file under tests/vectors/ is referenced by a vector, and every vector's file exists.
#[test]
fn no_orphan_vector_files() {
    let mut referenced = vec![];
    for p in json_files() {
        let v = read_json(&p);
        referenced.push(p.file_name().unwrap().to_string_lossy().into_owned());
        match v["type"].as_str() {
            Some("container") => referenced.push(v["container"].as_str().unwrap().to_string()),
            Some("negative") => {
                for c in v["cases"].as_array().unwrap() {
                    referenced.push(c["container"].as_str().unwrap().to_string());
                }
            }
            Some("keyring") => referenced.push(v["keyring_file"].as_str().unwrap().to_string()),
            Some("link") => referenced.push(v["link_file"].as_str().unwrap().to_string()),
            Some("audit") => {
                for f in v["files"].as_array().unwrap() {
                    referenced.push(f.as_str().unwrap().to_string());
                }
                referenced.push(v["key_file"].as_str().unwrap().to_string());
                referenced.push(v["head_file"].as_str().unwrap().to_string());
            }
            other => panic!("{p:?}: unknown vector type {other:?}"),
        }
    }
    let mut total = 0;
    for entry in walk(&vectors_dir()) {
        let rel = entry.strip_prefix(vectors_dir()).unwrap();
        let rel = rel.to_string_lossy().into_owned();
        assert!(
            referenced.contains(&rel),
            "{rel} is not referenced by any vector"
        );
        total += fs::metadata(&entry).unwrap().len();
    }
    assert!(total < 256 * 1024, "vectors take {total} bytes");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `.tvault/store.json` is as docs/FORMAT.md describes it.
#[test]
fn store_json_format() {
    let dir = tempfile::tempdir().unwrap();
    tensorvault::store::Store::init(dir.path(), 13).unwrap();
    let text = fs::read_to_string(dir.path().join(".tvault/store.json")).unwrap();
    assert_eq!(
        text,
        "{\n  \"format\": \"tensorvault-store\",\n  \"version\": 1,\n  \"chunk_size\": 8192\n}\n"
    );
    assert!(dir.path().join(".tvault/users").is_dir());
}

// ---------------------------------------------------------------------------------------------
// The audit log (docs/FORMAT.md, "Audit log")
// ---------------------------------------------------------------------------------------------

/// An independent reader of audit lines, written from docs/FORMAT.md: it shares no code with
/// `src/audit`, only the primitives (HMAC-SHA256, SHA-256) and a JSON parser to pick the
/// members out; the bytes are rebuilt by hand from the rules in the document.
mod audit_reference {
    use hmac::{Hmac, Mac};
    use serde_json::{Map, Value};
    use sha2::{Digest, Sha256};

    /// Every member a line may have, in the order it is written.
    pub const FIELDS: [&str; 19] = [
        "time", "seq", "event", "uid", "user", "pid", "process", "exe", "path", "target", "flags",
        "decision", "reason", "detail", "count", "first", "last", "prev", "mac",
    ];
    pub const REQUIRED: [&str; 5] = ["time", "seq", "event", "prev", "mac"];
    const U32: [&str; 2] = ["uid", "pid"];
    const U64: [&str; 2] = ["seq", "count"];
    pub const EVENTS: [&str; 22] = [
        "open",
        "unlock",
        "unlock-failed",
        "lock",
        "grant",
        "revoke",
        "integrity-failure",
        "mount",
        "unmount",
        "create",
        "write-open",
        "rename",
        "unlink",
        "mkdir",
        "rmdir",
        "truncate",
        "set-times",
        "chmod",
        "chown",
        "xattr",
        "rotate",
        "suppressed",
    ];

    /// A JSON string as the format writes it: `"` `\` and the control characters escaped,
    /// everything else as its UTF-8 bytes.
    fn string(s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\u{08}' => out.extend_from_slice(b"\\b"),
                '\u{0c}' => out.extend_from_slice(b"\\f"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if u32::from(c) < 0x20 => {
                    out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes())
                }
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out.push(b'"');
    }

    /// The line holding `members`, with or without its `mac` (without: the MAC input).
    pub fn encode(members: &Map<String, Value>, with_mac: bool) -> Result<Vec<u8>, String> {
        let mut out = vec![b'{'];
        for name in FIELDS {
            let Some(value) = members.get(name) else {
                continue;
            };
            if name == "mac" && !with_mac {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            string(name, &mut out);
            out.push(b':');
            if U32.contains(&name) || U64.contains(&name) {
                let n = value
                    .as_u64()
                    .ok_or(format!("{name} is not an unsigned integer"))?;
                if U32.contains(&name) && n > u64::from(u32::MAX) {
                    return Err(format!("{name} does not fit 32 bits"));
                }
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                string(
                    value.as_str().ok_or(format!("{name} is not a string"))?,
                    &mut out,
                );
            }
        }
        out.push(b'}');
        Ok(out)
    }

    pub fn mac(key: &[u8], canonical: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(canonical);
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn hash(line: &[u8]) -> String {
        hex::encode(Sha256::digest(line))
    }

    pub fn is_hex64(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn is_written_time(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 24
            && b.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'.',
                23 => c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }
}

fn audit_files(v: &Value) -> Vec<PathBuf> {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| vectors_dir().join(f.as_str().unwrap()))
        .collect()
}

/// The log in tests/vectors/audit/, checked line by line from the document, then through the
/// crate's verifier, which must accept it and refuse every one-byte change of it.
#[test]
fn audit_vector() {
    use audit_reference as r;
    let vectors = vectors_of_type("audit");
    assert_eq!(vectors.len(), 1);
    let v = &vectors[0];
    let key_text = fs::read_to_string(vectors_dir().join(v["key_file"].as_str().unwrap())).unwrap();
    assert_eq!(
        key_text,
        format!("{}\n", v["key"].as_str().unwrap()),
        "key file layout"
    );
    let key = unhex::<32>(&v["key"]);
    let files = audit_files(v);
    let expected_lines = v["lines"].as_array().unwrap();

    // (a) Every line, its MAC and its link, from the document alone.
    let mut last: Option<(u64, String)> = None;
    let (mut events, mut n) = (0u64, 0usize);
    let (mut counted, mut rotated, mut escaped) = (false, false, false);
    for (index, file) in files.iter().enumerate() {
        let bytes = fs::read(file).unwrap();
        let body = bytes
            .strip_suffix(b"\n")
            .expect("a file ends with a newline");
        for (number, line) in body.split(|&b| b == b'\n').enumerate() {
            let what = format!("{}, line {}", file.display(), number + 1);
            let members: serde_json::Map<String, Value> =
                serde_json::from_slice(line).unwrap_or_else(|e| panic!("{what}: {e}"));
            for name in members.keys() {
                assert!(r::FIELDS.contains(&name.as_str()), "{what}: member {name}");
            }
            for name in r::REQUIRED {
                assert!(members.contains_key(name), "{what}: no {name}");
            }
            let rebuilt = r::encode(&members, true).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&rebuilt),
                String::from_utf8_lossy(line),
                "{what}: not canonical"
            );
            let canonical = r::encode(&members, false).unwrap();
            assert_eq!(
                members["mac"],
                r::mac(&key, &canonical).as_str(),
                "{what}: MAC"
            );
            assert!(
                r::EVENTS.contains(&members["event"].as_str().unwrap()),
                "{what}"
            );
            if let Some(d) = members.get("decision") {
                assert!(d == "allow" || d == "deny", "{what}");
            }
            for t in ["time", "first", "last"] {
                if let Some(t) = members.get(t) {
                    assert!(r::is_written_time(t.as_str().unwrap()), "{what}: {t}");
                }
            }
            let seq = members["seq"].as_u64().unwrap();
            let prev = members["prev"].as_str().unwrap();
            assert!(r::is_hex64(prev) && r::is_hex64(members["mac"].as_str().unwrap()));
            match &last {
                None => {
                    assert_eq!(seq, 1, "{what}: a new log starts at seq 1");
                    assert_eq!(prev, v["anchor"], "{what}: the anchor");
                }
                Some((last_seq, last_hash)) => {
                    assert_eq!(seq, last_seq + 1, "{what}: seq");
                    assert_eq!(
                        prev, last_hash,
                        "{what}: prev is the hash of the line before"
                    );
                }
            }
            if index > 0 && number == 0 {
                assert_eq!(
                    members["event"], "rotate",
                    "{what}: a later file opens with rotate"
                );
                assert_eq!(members["reason"], "max-size");
                let previous = members["detail"].as_str().unwrap();
                assert!(previous.starts_with("previous file: "), "{what}");
                rotated = true;
            }
            if let Some(count) = members.get("count") {
                assert!(members.contains_key("first") && members.contains_key("last"));
                events += count.as_u64().unwrap();
                counted = true;
            } else {
                events += 1;
            }
            escaped |= [
                &b"\\t"[..],
                b"\\u0001",
                b"\\\"",
                b"\\\\",
                "é".as_bytes(),
                b"\x7f",
            ]
            .iter()
            .all(|needle| line.windows(needle.len()).any(|w| w == *needle));
            let hash = r::hash(line);
            let e = &expected_lines[n];
            assert_eq!(
                (e["seq"].as_u64(), e["hash"].as_str(), e["mac"].as_str()),
                (Some(seq), Some(hash.as_str()), members["mac"].as_str()),
                "{what}: audit.json"
            );
            n += 1;
            last = Some((seq, hash));
        }
    }
    assert!(
        counted && rotated && escaped,
        "the vector covers counted lines, rotation, escapes"
    );
    let (last_seq, last_hash) = last.unwrap();
    assert_eq!(
        (n, events),
        (expected_lines.len(), v["events"].as_u64().unwrap())
    );
    let head = fs::read(vectors_dir().join(v["head_file"].as_str().unwrap())).unwrap();
    let record = format!("{{\"seq\":{last_seq},\"hash\":\"{last_hash}\"}}");
    assert_eq!(head.len(), 128, "head record layout");
    assert_eq!(&head[..record.len()], record.as_bytes());
    assert!(head[record.len()..127].iter().all(|&b| b == b' ') && head[127] == b'\n');

    // (b) The crate's verifier agrees, with the key and the head record.
    use tensorvault::audit::{verify, HeadCheck, HeadRecord, Start};
    let head = HeadRecord {
        seq: last_seq,
        hash: last_hash.clone(),
    };
    let report = verify(&files, Some(&key), Some(&last_hash), Some(&head)).unwrap();
    assert_eq!(report.entries, n as u64);
    assert_eq!(report.events, events);
    assert_eq!(report.start, Start::Beginning);
    assert_eq!(report.head, HeadCheck::Matched { seq: last_seq });
    assert_eq!(report.anchor.as_deref(), v["anchor"].as_str());
    assert!(
        verify(&files, Some(&[0x55; 32]), None, None).is_err(),
        "the wrong key"
    );
    // ...and refuses every one-byte change, even without the head record's help.
    let tmp = tempfile::tempdir().unwrap();
    let copies: Vec<PathBuf> = files
        .iter()
        .map(|f| tmp.path().join(f.file_name().unwrap()))
        .collect();
    for (file, copy) in files.iter().zip(&copies) {
        fs::copy(file, copy).unwrap();
    }
    verify(&copies, Some(&key), None, None).unwrap();
    for (file, copy) in files.iter().zip(&copies) {
        let bytes = fs::read(file).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            fs::write(copy, &changed).unwrap();
            assert!(
                verify(&copies, Some(&key), None, None).is_err(),
                "{} with byte {i} changed was accepted",
                file.display()
            );
        }
        fs::write(copy, &bytes).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Generator (ignored; rewrites tests/vectors/)
// ---------------------------------------------------------------------------------------------

struct Identity {
    label: &'static str,
    scalar: [u8; 32],
}

impl Identity {
    /// Fixed test identities: the private scalar is SHA-256("tensorvault test vector " ‖ label).
    fn new(label: &'static str) -> Self {
        let scalar = Sha256::digest(format!("tensorvault test vector {label}")).into();
        Identity { label, scalar }
    }

    fn private(&self) -> PrivateKey {
        PrivateKey::from_bytes(&self.scalar)
    }

    fn public(&self) -> PublicKey {
        self.private().public_key()
    }
}

fn data_key_for(name: &str) -> [u8; 32] {
    Sha256::digest(format!("tensorvault test vector data key {name}")).into()
}

/// Encrypts through the crate's streaming writer, as `tvault put` does (version 2).
fn encrypt_v2(dk: &[u8; 32], who: &[&Identity], data: &[u8], ownership: &Ownership) -> Vec<u8> {
    let recipients: Vec<_> = who
        .iter()
        .map(|i| (i.label.to_string(), i.public()))
        .collect();
    let mut w = Writer::new(
        Cursor::new(Vec::new()),
        &SecretKey::from_bytes(*dk),
        LOG2,
        &recipients,
        ownership,
    )
    .unwrap();
    for piece in data.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `bytes` with its slot section replaced by what `edit` makes of it, and the slot-section
/// length set to match (the header MAC does not cover it). `version` sets the version field.
fn with_section(bytes: &[u8], version: u16, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut header = FixedHeader::decode(bytes).unwrap();
    let data = FIXED_HEADER_LEN + header.slots_len as usize;
    let mut section = bytes[FIXED_HEADER_LEN..data].to_vec();
    edit(&mut section);
    header.slots_len = section.len() as u32;
    header.version = version;
    [&header.encode()[..], &section, &bytes[data..]].concat()
}

/// A version 2 container as version 1 writes it: the record dropped, the version set to 1.
/// The header MAC does not change (it takes the version as 1 either way).
fn to_v1(bytes: &[u8]) -> Vec<u8> {
    let slots = Container::parse(bytes).unwrap().slots().to_vec();
    with_section(bytes, container::VERSION_1, |s| {
        *s = container::encode_slots(&slots).unwrap()
    })
}

/// A version 1 container, as earlier builds wrote them (the first six positive vectors and
/// negative.json).
fn encrypt(dk: &[u8; 32], who: &[&Identity], data: &[u8]) -> Vec<u8> {
    let legacy = Ownership::legacy_file(Some(who[0].label));
    to_v1(&encrypt_v2(dk, who, data, &legacy))
}

/// Builds a container from the public low-level API with a chosen file id: two versions of a
/// file under the same data key and file id are what the rollback vectors need.
fn encrypt_with_id(dk: &[u8; 32], file_id: [u8; 16], who: &[&Identity], data: &[u8]) -> Vec<u8> {
    let dk = SecretKey::from_bytes(*dk);
    let slots: Vec<_> = who
        .iter()
        .map(|i| KeySlot::seal(&file_id, i.label, &i.public(), &dk).unwrap())
        .collect();
    let slots = container::encode_slots(&slots).unwrap();
    let header = FixedHeader {
        version: container::VERSION_1,
        file_id,
        chunk_log2: LOG2,
        plaintext_len: data.len() as u64,
        slots_len: slots.len() as u32,
    };
    let keys = FileKeys::derive(&dk, &file_id);
    let mut body = Vec::new();
    let mut table = Vec::new();
    let n = header.chunk_count();
    for i in 0..n {
        let (s, e) = header.chunk_range(i);
        let mut buf = data[s as usize..e as usize].to_vec();
        let (nonce, tag) = keys.seal_chunk(i, i + 1 == n, &mut buf).unwrap();
        body.extend_from_slice(&buf);
        table.extend_from_slice(&nonce);
        table.extend_from_slice(&tag);
    }
    let encoded = header.encode();
    let mac = keys.header_mac(&[&header.maced(), &table]);
    [&encoded[..], &slots, &body, &table, &mac].concat()
}

/// The full record of a positive vector, with every intermediate value.
fn describe(
    name: &str,
    description: &str,
    bytes: &[u8],
    seed: u64,
    len: usize,
    dk: &[u8; 32],
    who: &[&Identity],
) -> Value {
    let data = plaintext(len, seed);
    let c = Container::parse(bytes).unwrap();
    let h = *c.header();
    let layout = h.layout().unwrap();
    let mut plain = json!({"len": len, "seed": seed, "rule": RULE, "sha256": sha256_hex(&data)});
    if len <= 64 {
        plain["hex"] = json!(hex::encode(&data));
    }
    let own = c.ownership();
    let record = (h.version == container::VERSION).then(|| {
        let mut r = Vec::new();
        own.encode(&mut r).unwrap();
        hex::encode(r)
    });
    let ownership = json!({
        "owner": own.owner,
        "gid": own.gid,
        "mode": format!("{:04o}", own.mode),
        "record": record,
    });
    let recipients: Vec<Value> = who
        .iter()
        .map(|i| {
            let slot = c.slot(i.label).unwrap();
            let w = &slot.wrapped;
            let shared = x25519_dalek::x25519(i.scalar, w.ephemeral_public);
            let wk = reference::wrap_key(&shared, &w.ephemeral_public, i.public().as_bytes());
            json!({
                "label": i.label,
                "private_key": hex::encode(i.scalar),
                "public_key": keyring::format_public_key(&i.public()),
                "fingerprint": i.public().fingerprint(),
                "slot_aad": hex::encode(reference::slot_aad(&h.file_id, i.label)),
                "ephemeral_public": hex::encode(w.ephemeral_public),
                "ecdh_shared_secret": hex::encode(shared),
                "wrap_key": hex::encode(wk),
                "wrap_nonce": hex::encode(w.nonce),
                "wrapped_key": hex::encode(w.sealed),
            })
        })
        .collect();
    let chunks: Vec<Value> = (0..h.chunk_count())
        .map(|i| {
            let (s, e) = h.chunk_range(i);
            let last = i + 1 == h.chunk_count();
            let at = layout.table as usize + i as usize * TABLE_ENTRY_LEN;
            json!({
                "index": i,
                "offset": layout.data + s,
                "len": e - s,
                "last": last,
                "aad": hex::encode(reference::chunk_aad(&h.file_id, i, last)),
                "nonce": hex::encode(&bytes[at..at + 12]),
                "tag": hex::encode(&bytes[at + 12..at + 28]),
            })
        })
        .collect();
    json!({
        "type": "container",
        "name": name,
        "description": description,
        "container": format!("{name}.tvlt"),
        "container_sha256": sha256_hex(bytes),
        "plaintext": plain,
        "data_key": hex::encode(dk),
        "header": {
            "version": h.version,
            "chunk_log2": h.chunk_log2,
            "file_id": hex::encode(h.file_id),
            "plaintext_len": h.plaintext_len,
            "slots_len": h.slots_len,
        },
        "layout": {
            "slots": FIXED_HEADER_LEN,
            "data": layout.data,
            "table": layout.table,
            "mac": layout.mac,
            "total": layout.total,
            "chunk_count": h.chunk_count(),
        },
        "ownership": ownership,
        "chunk_key": hex::encode(reference::hkdf(dk, &h.file_id, reference::INFO_CHUNK)),
        "mac_key": hex::encode(reference::hkdf(dk, &h.file_id, reference::INFO_MAC)),
        "header_mac": hex::encode(&bytes[layout.mac as usize..]),
        "recipients": recipients,
        "chunks": chunks,
    })
}

fn write_json(name: &str, v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap() + "\n";
    fs::write(vectors_dir().join(name), text).unwrap();
}

/// Replaces the key slots of version 1 container `bytes` (as `tvault grant` does, though it
/// writes version 2) and returns the new container, still version 1.
fn with_slots(bytes: &[u8], slots: &[KeySlot]) -> Vec<u8> {
    let mut out = Vec::new();
    Container::parse(bytes)
        .unwrap()
        .write_with_slots(slots, &mut out)
        .unwrap();
    to_v1(&out)
}

#[test]
#[ignore = "rewrites tests/vectors/; run with `cargo test --test vectors -- --ignored generate`"]
fn generate() {
    let dir = vectors_dir();
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(dir.join("users")).unwrap();
    let alice = Identity::new("alice");
    let bob = Identity::new("bob");

    // Positive vectors.
    let positives: [(&str, &str, usize, u64, Vec<&Identity>); 6] = [
        (
            "empty",
            "empty plaintext: one empty, final chunk",
            0,
            0,
            vec![&alice],
        ),
        ("one-byte", "a single byte", 1, 0x42, vec![&alice]),
        (
            "one-chunk",
            "exactly one full 4 KiB chunk",
            CS,
            1,
            vec![&alice],
        ),
        (
            "chunk-plus-one",
            "one full chunk and a final 1-byte chunk",
            CS + 1,
            2,
            vec![&alice],
        ),
        (
            "three-chunks",
            "two full chunks and a 100-byte final chunk (base of most negative vectors)",
            2 * CS + 100,
            3,
            vec![&alice],
        ),
        (
            "two-recipients",
            "four chunks (the last one 1000 bytes), key slots for alice and bob",
            3 * CS + 1000,
            4,
            vec![&alice, &bob],
        ),
    ];
    let mut bases = std::collections::HashMap::new();
    for (name, description, len, seed, who) in &positives {
        let dk = data_key_for(name);
        let bytes = encrypt(&dk, who, &plaintext(*len, *seed));
        fs::write(dir.join(format!("{name}.tvlt")), &bytes).unwrap();
        write_json(
            &format!("{name}.json"),
            &describe(name, description, &bytes, *seed, *len, &dk, who),
        );
        bases.insert(*name, (bytes, dk, *seed, *len));
    }

    // Negative vectors: header, slot, table and length edits on one-byte; chunk edits on
    // three-chunks (two full chunks are needed to swap them).
    let (small, small_dk, small_seed, _) = bases["one-byte"].clone();
    let (base, dk, seed, len) = bases["three-chunks"].clone();
    let p = reference::parse(&base).unwrap();
    let (data, table) = (p.data, p.table);
    let entry = |i: usize| table + TABLE_ENTRY_LEN * i..table + TABLE_ENTRY_LEN * (i + 1);
    let chunk = |i: usize| data + CS * i..data + (CS * (i + 1)).min(len);
    let swap = |b: &mut Vec<u8>, x: std::ops::Range<usize>, y: std::ops::Range<usize>| {
        let (bx, by) = (b[x.clone()].to_vec(), b[y.clone()].to_vec());
        b[x].copy_from_slice(&by);
        b[y].copy_from_slice(&bx);
    };
    // alice's slot starts after the 2-byte count: label length (1), "alice" (5), ephemeral
    // public key (32), nonce (12), wrapped key (48).
    let eph = FIXED_HEADER_LEN + 2 + 1 + 5;
    let wrapped = eph + 32 + 12;
    // An unrelated file: same plaintext and recipient, its own data key and file id.
    let other_dk = data_key_for("other");
    let other = encrypt(&other_dk, &[&alice], &plaintext(len, seed));
    // An older version of three-chunks: same data key and file id, different plaintext.
    let older = encrypt_with_id(&dk, p.file_id, &[&alice], &plaintext(len, seed + 100));
    assert_eq!(older.len(), base.len());
    let foreign_slot = Container::parse(&other[..]).unwrap().slots()[0].clone();
    let small_parsed = reference::parse(&small).unwrap();
    let substituted = KeySlot::seal(
        &small_parsed.file_id,
        "alice",
        &alice.public(),
        &SecretKey::from_bytes(other_dk),
    )
    .unwrap();

    let k = |kind: &str| json!({ "kind": kind });
    let header_auth = k("HeaderAuthentication");
    let slot_auth = json!({"kind": "SlotAuthentication", "label": "alice"});
    let chunk_auth = |i: u64| json!({"kind": "ChunkAuthentication", "index": i});
    let small_ok = json!({"kind": "Ok", "plaintext_sha256": sha256_hex(&plaintext(1, small_seed))});
    let size =
        |actual: usize| json!({"kind": "SizeMismatch", "expected": small.len(), "actual": actual});

    // (name, base, what was done, edit, expected via alice's slot, expected with the data key)
    type Edit<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    let cases: Vec<(&str, &str, &str, Edit, Value, Value)> = vec![
        (
            "bad-magic",
            "one-byte",
            "magic changed to \"TVLX\"",
            Box::new(|b| b[3] = b'X'),
            k("NotAContainer"),
            k("NotAContainer"),
        ),
        (
            "unsupported-version",
            "one-byte",
            "version field set to 3",
            Box::new(|b| b[4] = 3),
            json!({"kind": "UnsupportedVersion", "version": 3}),
            json!({"kind": "UnsupportedVersion", "version": 3}),
        ),
        (
            "chunk-size-too-small",
            "one-byte",
            "chunk_log2 set to 11",
            Box::new(|b| b[6] = 11),
            json!({"kind": "ChunkSize", "log2": 11}),
            json!({"kind": "ChunkSize", "log2": 11}),
        ),
        (
            "reserved-byte",
            "one-byte",
            "reserved byte 40 set to 1",
            Box::new(|b| b[40] = 1),
            k("Malformed"),
            k("Malformed"),
        ),
        (
            "short-header",
            "one-byte",
            "cut to its first 63 bytes",
            Box::new(|b| b.truncate(63)),
            k("Malformed"),
            k("Malformed"),
        ),
        (
            "header-file-id-flip",
            "one-byte",
            "bit 0 of byte 8 (the first file id byte) flipped; the slot AAD catches it first, \
             the header MAC catches it when the slot is skipped",
            Box::new(|b| b[8] ^= 1),
            slot_auth.clone(),
            header_auth.clone(),
        ),
        (
            "header-length-consistent-truncation",
            "three-chunks",
            "plaintext_len lowered to 8192 and the last chunk and its table entry removed, so \
             the total-length rule holds; the header MAC does not",
            Box::new(|b| {
                b.drain(entry(2));
                b.drain(chunk(2));
                b[24..32].copy_from_slice(&(2 * CS as u64).to_le_bytes());
            }),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "slot-flip",
            "one-byte",
            "one byte of alice's wrapped data key flipped",
            Box::new(|b| b[wrapped] ^= 0x10),
            slot_auth.clone(),
            small_ok.clone(),
        ),
        (
            "slot-low-order-ephemeral",
            "one-byte",
            "alice's ephemeral public key replaced by the all-zero (low-order) point",
            Box::new(|b| b[eph..eph + 32].fill(0)),
            slot_auth.clone(),
            small_ok.clone(),
        ),
        (
            "slot-from-other-file",
            "one-byte",
            "alice's slot replaced by her slot from another file (bound to that file's id)",
            Box::new(|b| *b = with_slots(b, std::slice::from_ref(&foreign_slot))),
            slot_auth.clone(),
            small_ok.clone(),
        ),
        (
            "slot-wraps-other-data-key",
            "one-byte",
            "alice's slot replaced by a valid slot for this file id that wraps a different \
             data key: the slot opens, the header MAC (a commitment to the data key) does not",
            Box::new(|b| *b = with_slots(b, std::slice::from_ref(&substituted))),
            header_auth.clone(),
            small_ok.clone(),
        ),
        (
            "table-flip",
            "one-byte",
            "one byte of the (only) chunk's tag in the chunk table flipped",
            Box::new(|b| b[small_parsed.table + 20] ^= 0x01),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "mac-flip",
            "one-byte",
            "last byte of the header MAC flipped",
            Box::new(|b| *b.last_mut().unwrap() ^= 0x80),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "chunk-flip",
            "three-chunks",
            "one ciphertext byte of chunk 1 flipped",
            Box::new(|b| b[chunk(1).start + 7] ^= 0x04),
            chunk_auth(1),
            chunk_auth(1),
        ),
        (
            "chunk-swap",
            "three-chunks",
            "ciphertexts of chunks 0 and 1 swapped, chunk table unchanged",
            Box::new(|b| swap(b, chunk(0), chunk(1))),
            chunk_auth(0),
            chunk_auth(0),
        ),
        (
            "chunk-swap-with-table",
            "three-chunks",
            "chunks 0 and 1 swapped together with their table entries",
            Box::new(|b| {
                swap(b, chunk(0), chunk(1));
                swap(b, entry(0), entry(1));
            }),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "cross-file-chunk",
            "three-chunks",
            "chunk 1 replaced by chunk 1 of another file (same plaintext and chunk size, its \
             own data key and file id)",
            Box::new(|b| b[chunk(1)].copy_from_slice(&other[chunk(1)])),
            chunk_auth(1),
            chunk_auth(1),
        ),
        (
            "cross-file-chunk-with-table",
            "three-chunks",
            "chunk 1 and its table entry replaced by those of another file",
            Box::new(|b| {
                b[chunk(1)].copy_from_slice(&other[chunk(1)]);
                b[entry(1)].copy_from_slice(&other[entry(1)]);
            }),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "rollback-chunk",
            "three-chunks",
            "chunk 1 replaced by chunk 1 of an older version of this file (same data key and \
             file id, different plaintext), chunk table unchanged",
            Box::new(|b| b[chunk(1)].copy_from_slice(&older[chunk(1)])),
            chunk_auth(1),
            chunk_auth(1),
        ),
        (
            "rollback-chunk-with-table",
            "three-chunks",
            "chunk 1 and its table entry replaced by those of an older version of this file",
            Box::new(|b| {
                b[chunk(1)].copy_from_slice(&older[chunk(1)]);
                b[entry(1)].copy_from_slice(&older[entry(1)]);
            }),
            header_auth.clone(),
            header_auth.clone(),
        ),
        (
            "truncated",
            "one-byte",
            "last byte removed",
            Box::new(|b| {
                b.pop();
            }),
            size(small.len() - 1),
            size(small.len() - 1),
        ),
        (
            "truncated-to-slots",
            "one-byte",
            "cut right after the key slots",
            Box::new(|b| b.truncate(small_parsed.data)),
            size(small_parsed.data),
            size(small_parsed.data),
        ),
        (
            "extended",
            "one-byte",
            "one zero byte appended",
            Box::new(|b| b.push(0)),
            size(small.len() + 1),
            size(small.len() + 1),
        ),
    ];

    let mut records = Vec::new();
    for (name, from, what, edit, expect, expect_dk) in cases {
        let (mut bytes, data_key) = match from {
            "one-byte" => (small.clone(), small_dk),
            _ => (base.clone(), dk),
        };
        edit(&mut bytes);
        // The outcomes recorded are the ones claimed above; check the code agrees.
        let got = outcome(
            crate_decrypt(bytes.clone(), &Key::Slot("alice", alice.scalar)),
            kind,
        );
        assert_eq!(got, expect, "{name}");
        let got = outcome(crate_decrypt(bytes.clone(), &Key::Data(data_key)), kind);
        assert_eq!(got, expect_dk, "{name} with the data key");
        let file = format!("neg-{name}.tvlt");
        fs::write(dir.join(&file), &bytes).unwrap();
        records.push(json!({
            "name": name,
            "base": from,
            "tamper": what,
            "container": file,
            "container_sha256": sha256_hex(&bytes),
            "open_as": "alice",
            "private_key": hex::encode(alice.scalar),
            "data_key": hex::encode(data_key),
            "expect": expect,
            "expect_with_data_key": expect_dk,
        }));
    }
    write_json(
        "negative.json",
        &json!({
            "type": "negative",
            "description": "Altered containers. Each is opened twice, with alice's private key \
                through her key slot (expect) and with the data key directly, skipping the \
                slots (expect_with_data_key); then every chunk is read. The outcome is the \
                first error in the reader's verification order (docs/FORMAT.md), or Ok with \
                the SHA-256 of the plaintext.",
            "cases": records,
        }),
    );

    // Keyring file for alice, sealed under a passphrase with cheap Argon2id parameters.
    let passphrase = "correct horse battery staple";
    let params = KdfParams {
        m_kib: 256,
        t: 2,
        p: 1,
    };
    let mut k = Keyring::import("alice", 1001, alice.public()).unwrap();
    k.reseal(&alice.private(), passphrase.as_bytes(), params)
        .unwrap();
    let text = k.to_json();
    fs::write(dir.join("users/alice.json"), &text).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    let kdf = &j["sealed_private_key"]["kdf"];
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m_kib, params.t, params.p, Some(32)).unwrap(),
    );
    let mut kdf_key = [0u8; 32];
    argon
        .hash_password_into(
            passphrase.as_bytes(),
            &unhex_vec(&kdf["salt"]),
            &mut kdf_key,
        )
        .unwrap();
    let aad = [
        reference::KEYRING_AAD_PREFIX,
        alice.public().as_bytes(),
        b"alice",
    ]
    .concat();
    write_json(
        "keyring.json",
        &json!({
            "type": "keyring",
            "description": "alice's keyring file as it would lie at .tvault/users/alice.json",
            "keyring_file": "users/alice.json",
            "name": "alice",
            "uid": 1001,
            "passphrase": passphrase,
            "kdf_key": hex::encode(kdf_key),
            "seal_aad": hex::encode(aad),
            "private_key": hex::encode(alice.scalar),
        }),
    );
    write_audit_vectors(&dir);
    write_v2_vectors(&dir);
    write_link_vector(&dir);
}

/// Rewrites only the version 2 vectors (`generate` rewrites them with everything else).
#[test]
#[ignore = "rewrites the version 2 vectors; run with `cargo test --test vectors -- --ignored --exact rewrite_v2_vectors`"]
fn rewrite_v2_vectors() {
    write_v2_vectors(&vectors_dir());
}

/// (name, description, plaintext length, plaintext seed), the recipients and the
/// ownership record of one positive version 2 vector.
type V2Positive<'a> = (
    &'a str,
    &'a str,
    usize,
    u64,
    Vec<&'a Identity>,
    &'a Ownership,
);

/// The version 2 vectors: two positive ones (`owned`, `root-owned`) and `negative-v2.json`,
/// alterations of `owned`'s slot section. Some of those open: the record is outside the
/// header MAC, which docs/FORMAT.md (and SECURITY.md) say a store writer can change.
fn write_v2_vectors(dir: &Path) {
    let alice = Identity::new("alice");
    let bob = Identity::new("bob");
    let alice_owns = Ownership::new(Some("alice".into()), 1001, 0o640);
    let root_owns = Ownership::new(None, 0, 0o600);
    let positives: [V2Positive; 2] = [
        (
            "owned",
            "version 2: owned by alice, group 1001, mode 0640; key slots for alice and bob \
             (base of negative-v2.json)",
            100,
            5,
            vec![&alice, &bob],
            &alice_owns,
        ),
        (
            "root-owned",
            "version 2: owned by root (an empty owner name), group 0, mode 0600; two chunks",
            CS + 10,
            6,
            vec![&alice],
            &root_owns,
        ),
    ];
    let mut base = None;
    for (name, description, len, seed, who, own) in &positives {
        let dk = data_key_for(name);
        let bytes = encrypt_v2(&dk, who, &plaintext(*len, *seed), own);
        fs::write(dir.join(format!("{name}.tvlt")), &bytes).unwrap();
        write_json(
            &format!("{name}.json"),
            &describe(name, description, &bytes, *seed, *len, &dk, who),
        );
        base.get_or_insert((bytes, dk, *len, *seed));
    }
    let (base, dk, len, seed) = base.unwrap();
    let record_len = alice_owns.encoded_len();
    let ok = json!({"kind": "Ok", "plaintext_sha256": sha256_hex(&plaintext(len, seed))});
    let bad_record = json!({"kind": "Ownership"});
    let v2 = container::VERSION;
    // The record: owner_len, owner, gid, mode at the end of the section.
    let record_at = move |s: &Vec<u8>| s.len() - record_len;
    let bob_record = || Ownership::new(Some("bob".into()), 0, 0o777);
    let bob_owns = bob_record();
    let legacy = Ownership::legacy_file(Some("alice"));
    type Edit = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let cases: Vec<(&str, &str, Edit, Value, Option<&Ownership>)> =
        vec![
        (
            "record-truncated",
            "the ownership record's last byte (the mode's high byte) removed, the slot-section \
             length lowered to match",
            Box::new(move |b| with_section(b, v2, |s| {
                    s.pop();
                })),
            bad_record.clone(),
            None,
        ),
        (
            "record-trailing-byte",
            "a zero byte appended after the ownership record, the slot-section length raised \
             to match",
            Box::new(move |b| with_section(b, v2, |s| s.push(0))),
            json!({"kind": "Malformed"}),
            None,
        ),
        (
            "record-bad-mode",
            "mode 0640 of the record changed to 010640 (a file-type bit)",
            Box::new(move |b| with_section(b, v2, |s| *s.last_mut().unwrap() |= 0x10)),
            bad_record.clone(),
            None,
        ),
        (
            "record-owner-too-long",
            "the owner name replaced by 33 bytes (\"a\" × 33): longer than a user name can be",
            Box::new(move |b| {
                with_section(b, v2, |s| {
                    let at = record_at(s);
                    let tail = s[at + 1 + 5..].to_vec();
                    s.truncate(at);
                    s.push(33);
                    s.extend_from_slice(&[b'a'; 33]);
                    s.extend_from_slice(&tail);
                })
            }),
            bad_record.clone(),
            None,
        ),
        (
            "record-missing",
            "the ownership record removed, version 2 kept: a version 2 slot section must end \
             with one",
            Box::new(move |b| with_section(b, v2, |s| s.truncate(record_at(s)))),
            bad_record.clone(),
            None,
        ),
        (
            "record-rewritten",
            "the record replaced by one for bob, group 0, mode 0777, as a store writer (or \
             `tvault chown`) can: it is outside the header MAC, and the file opens",
            Box::new(move |b| {
                with_section(b, v2, |s| {
                    s.truncate(record_at(s));
                    bob_record().encode(s).unwrap();
                })
            }),
            ok.clone(),
            Some(&bob_owns),
        ),
        (
            "downgraded-to-v1",
            "the record removed and the version set to 1: the header MAC takes the version as \
             1 either way, so the file opens, with version 1's default ownership",
            Box::new(to_v1),
            ok.clone(),
            Some(&legacy),
        ),
    ];
    let mut records = Vec::new();
    for (name, what, edit, expect, seen) in cases {
        let bytes = edit(&base);
        for key in [Key::Slot("alice", alice.scalar), Key::Data(dk)] {
            let got = outcome(crate_decrypt(bytes.clone(), &key), kind);
            assert_eq!(got, expect, "{name}");
        }
        let file = format!("neg-v2-{name}.tvlt");
        fs::write(dir.join(&file), &bytes).unwrap();
        let mut record = json!({
            "name": format!("v2-{name}"),
            "base": "owned",
            "tamper": what,
            "container": file,
            "container_sha256": sha256_hex(&bytes),
            "open_as": "alice",
            "private_key": hex::encode(alice.scalar),
            "data_key": hex::encode(dk),
            "expect": expect,
            "expect_with_data_key": expect,
        });
        if let Some(own) = seen {
            record["ownership_seen"] = json!({
                "owner": own.owner,
                "gid": own.gid,
                "mode": format!("{:04o}", own.mode),
            });
        }
        records.push(record);
    }
    write_json(
        "negative-v2.json",
        &json!({
            "type": "negative",
            "description": "Alterations of the slot section of the version 2 vector `owned`, \
                opened as in negative.json. The ownership record must parse and end the \
                section; it is not authenticated, so a well-formed replacement opens \
                (ownership_seen is what a reader then reports).",
            "cases": records,
        }),
    );
}

/// Rewrites only the audit vectors (`generate` rewrites them with everything else).
#[test]
#[ignore = "rewrites tests/vectors/audit*; run with `cargo test --test vectors -- --ignored --exact rewrite_audit_vectors`"]
fn rewrite_audit_vectors() {
    write_audit_vectors(&vectors_dir());
}

/// Writes tests/vectors/audit/ with the crate's own writer: a fixed key (bytes 0 to 31), a few
/// events with fixed process fields, a rotation by size, and a counted line written at close.
/// The time stamps, the anchor and the rotate entry's process are whatever they are when this
/// runs, so the vector is checked, not regenerated.
fn write_audit_vectors(dir: &Path) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use tensorvault::audit::{AuditLog, Event, EventKind};

    let work = std::env::temp_dir().join("tvault-audit-vectors");
    if work.exists() {
        fs::remove_dir_all(&work).unwrap();
    }
    fs::DirBuilder::new().mode(0o700).create(&work).unwrap();
    let key: Vec<u8> = (0u8..32).collect();
    let key_path = work.join("audit.key");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .unwrap()
        .write_all(format!("{}\n", hex::encode(&key)).as_bytes())
        .unwrap();
    let log = work.join("audit.jsonl");
    let by = |e: Event, pid: u32, process: &str, exe: &str| Event {
        pid: Some(pid),
        process: Some(process.into()),
        exe: Some(exe.into()),
        ..e
    };
    let tvault = "/usr/local/bin/tvault";
    let python = "/usr/bin/python3.11";
    // Four lines fit in the first file, the rest in the second.
    let audit = AuditLog::open(&log, &key_path, Some(1600)).unwrap();
    let events = [
        by(
            Event::new(EventKind::Mount).uid(0).detail("/mnt/models"),
            4000,
            "tvault",
            tvault,
        ),
        by(
            Event::new(EventKind::Unlock)
                .uid(1001)
                .user("alice")
                .allow(),
            4000,
            "tvault",
            tvault,
        ),
        by(
            Event {
                flags: Some("O_RDONLY|O_LARGEFILE".into()),
                ..Event::new(EventKind::Open)
                    .uid(1001)
                    .user("alice")
                    .path("m/model.safetensors")
                    .allow()
            },
            4100,
            "python3",
            python,
        ),
        by(
            Event::new(EventKind::Rename)
                .uid(1001)
                .user("alice")
                .path("m/a.bin")
                .target("m/b \"odd\"\\name\t\u{1}é\u{7f}.bin")
                .allow(),
            4101,
            "mv",
            "/usr/bin/mv",
        ),
    ];
    for e in &events {
        audit.record(e).unwrap();
    }
    // Three identical denials: the first gets a line, the other two a counted line at close.
    for pid in [4200, 4201, 4202] {
        let denied = Event::new(EventKind::Open)
            .uid(1002)
            .user("bob")
            .path("m/model.safetensors")
            .deny("no-key-slot");
        audit
            .record(&by(denied, pid, "cat", "/usr/bin/cat"))
            .unwrap();
    }
    audit
        .record(&Event::new(EventKind::Lock).uid(1001).user("alice"))
        .unwrap();
    audit.close().unwrap();
    assert!(!work.join("audit.jsonl.2").exists(), "one rotation only");

    let out = dir.join("audit");
    fs::create_dir_all(&out).unwrap();
    let names = [
        "audit.jsonl.1",
        "audit.jsonl",
        "audit.key",
        "audit.key.head",
    ];
    for name in names {
        fs::copy(work.join(name), out.join(name)).unwrap();
    }
    let mut lines = Vec::new();
    let mut anchor = None;
    let mut events = 0;
    for name in &names[..2] {
        let text = fs::read_to_string(out.join(name)).unwrap();
        for line in text.lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            anchor.get_or_insert_with(|| entry["prev"].clone());
            events += entry["count"].as_u64().unwrap_or(1);
            lines.push(json!({
                "file": format!("audit/{name}"),
                "seq": entry["seq"],
                "event": entry["event"],
                "hash": sha256_hex(line.as_bytes()),
                "mac": entry["mac"],
            }));
        }
    }
    write_json(
        "audit.json",
        &json!({
            "type": "audit",
            "description": "an audit log rotated once by size (max_size 1600), with a counted \
                line and a path that needs JSON escapes, under the key 000102…1f",
            "key": hex::encode(&key),
            "key_file": "audit/audit.key",
            "files": ["audit/audit.jsonl.1", "audit/audit.jsonl"],
            "head_file": "audit/audit.key.head",
            "anchor": anchor,
            "events": events,
            "lines": lines,
        }),
    );
    fs::remove_dir_all(&work).unwrap();
}

/// The link file of the vector: alice's link into a Hugging Face cache's blobs.
const LINK_TARGET: &str =
    "../../blobs/3db4015cf6811ea56316a598310755678dcb49741336a763dd98678390d6377a";

/// Link files every reader must refuse: (what is wrong, the bytes).
fn bad_links(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let with = |at: usize, byte: u8| {
        let mut b = good.to_vec();
        b[at] = byte;
        b
    };
    // The target length sits after magic, version and alice's 12-byte ownership record.
    let len_at = 4 + 1 + 12;
    vec![
        ("bad magic", with(0, b'X')),
        ("version 2", with(4, 2)),
        ("owner longer than 32 bytes", with(5, 33)),
        ("a file-type bit in the mode", with(5 + 1 + 5 + 4 + 1, 0x10)),
        ("target length 0", [&good[..len_at], &[0, 0]].concat()),
        (
            "target longer than the file",
            with(len_at, good[len_at] + 1),
        ),
        ("a byte after the target", [good, b"x"].concat()),
        ("NUL in the target", with(good.len() - 1, 0)),
        ("cut before the target length", good[..len_at + 1].to_vec()),
    ]
}

/// An independent reader of the link file, from docs/FORMAT.md: (owner, gid, mode, target).
fn link_reference(b: &[u8]) -> Option<(String, u32, u16, Vec<u8>)> {
    if b.get(..5)? != b"TVLN\x01" {
        return None;
    }
    let owner_len = *b.get(5)? as usize;
    if owner_len > 32 {
        return None;
    }
    let owner = std::str::from_utf8(b.get(6..6 + owner_len)?)
        .ok()?
        .to_string();
    let at = 6 + owner_len;
    let gid = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
    let mode = u16::from_le_bytes(b.get(at + 4..at + 6)?.try_into().ok()?);
    let len = u16::from_le_bytes(b.get(at + 6..at + 8)?.try_into().ok()?) as usize;
    let target = b.get(at + 8..)?;
    if mode > 0o7777 || !(1..=4095).contains(&len) || target.len() != len || target.contains(&0) {
        return None;
    }
    Some((owner, gid, mode, target.to_vec()))
}

#[test]
fn link_vector() {
    use tensorvault::store::Link;
    let vectors = vectors_of_type("link");
    assert_eq!(vectors.len(), 1);
    let v = &vectors[0];
    let bytes = fs::read(vectors_dir().join(v["link_file"].as_str().unwrap())).unwrap();
    assert_eq!(sha256_hex(&bytes), v["link_sha256"], "link file altered");
    let (owner, gid, mode, target) = link_reference(&bytes).expect("reference reads it");
    assert_eq!(
        (owner.as_str(), u64::from(gid), u64::from(mode)),
        (
            v["owner"].as_str().unwrap(),
            v["gid"].as_u64().unwrap(),
            v["mode"].as_u64().unwrap()
        )
    );
    assert_eq!(target, v["target"].as_str().unwrap().as_bytes());
    let link = Link::decode(&bytes).unwrap();
    assert_eq!(link.own.owner.as_deref(), Some(owner.as_str()));
    assert_eq!((link.own.gid, link.own.mode), (gid, mode));
    assert_eq!(link.target, target);
    assert_eq!(
        link.encode().unwrap(),
        bytes,
        "this build writes the same bytes"
    );
    let cases = v["negative"].as_array().unwrap();
    assert_eq!(cases.len(), bad_links(&bytes).len());
    for (case, (what, bad)) in cases.iter().zip(bad_links(&bytes)) {
        assert_eq!(case["description"], what);
        assert_eq!(case["hex"], hex::encode(&bad), "{what}");
        assert!(link_reference(&bad).is_none(), "reference accepts: {what}");
        assert!(Link::decode(&bad).is_err(), "crate accepts: {what}");
    }
}

/// Rewrites only the link vector (`generate` rewrites it with everything else).
#[test]
#[ignore = "rewrites tests/vectors/link*; run with `cargo test --test vectors -- --ignored --exact rewrite_link_vector`"]
fn rewrite_link_vector() {
    write_link_vector(&vectors_dir());
}

/// Writes `link.tvln` and `link.json` (deterministic: the same bytes every time).
fn write_link_vector(dir: &Path) {
    use tensorvault::container::Ownership;
    use tensorvault::store::Link;
    let link = Link {
        own: Ownership::new(Some("alice".into()), 1001, 0o777),
        target: LINK_TARGET.as_bytes().to_vec(),
    };
    let bytes = link.encode().unwrap();
    fs::write(dir.join("link.tvln"), &bytes).unwrap();
    let negative: Vec<Value> = bad_links(&bytes)
        .into_iter()
        .map(|(what, bad)| json!({"description": what, "hex": hex::encode(bad)}))
        .collect();
    write_json(
        "link.json",
        &json!({
            "type": "link",
            "description": "a symbolic link as it would lie at STORE/REL.tvln: owner alice, gid 1001, mode 0o777, and its target; then bytes every reader refuses",
            "link_file": "link.tvln",
            "link_sha256": sha256_hex(&bytes),
            "owner": "alice",
            "gid": 1001,
            "mode": 0o777,
            "target": LINK_TARGET,
            "negative": negative,
        }),
    );
}
