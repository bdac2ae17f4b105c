//! Unit tests of `crypto`.

use super::*;

fn keys() -> FileKeys {
    FileKeys::derive(&SecretKey::from_bytes([7; 32]), &[9; FILE_ID_LEN])
}

/// RFC 4231 test case 2 (a key shorter than the block) and the FIPS 180-2 "abc" digest.
#[test]
fn hmac_and_sha256_known_answers() {
    let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(tag),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    hmac_sha256_verify(b"Jefe", b"what do ya want for nothing?", &tag).unwrap();
    let mut wrong = tag;
    wrong[31] ^= 1;
    for bad in [&wrong[..], &tag[..31], &[][..]] {
        assert_eq!(
            hmac_sha256_verify(b"Jefe", b"what do ya want for nothing?", bad),
            Err(CryptoError::Authentication)
        );
    }
    assert_eq!(
        hmac_sha256_verify(b"Jeff", b"what do ya want for nothing?", &tag),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        hex::encode(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn chunk_round_trip_and_binding() {
    let k = keys();
    let plain = b"tensor bytes".to_vec();
    let mut buf = plain.clone();
    let (nonce, tag) = k.seal_chunk(3, false, &mut buf).unwrap();
    assert_ne!(buf, plain);
    let mut good = buf.clone();
    k.open_chunk(3, false, &nonce, &tag, &mut good).unwrap();
    assert_eq!(good, plain);
    // Wrong index, wrong final flag, other file: all refused, and nothing leaks.
    for (index, last) in [(4, false), (3, true)] {
        let mut b = buf.clone();
        assert_eq!(
            k.open_chunk(index, last, &nonce, &tag, &mut b),
            Err(CryptoError::Authentication)
        );
        assert!(b.iter().all(|&x| x == 0));
    }
    let other = FileKeys::derive(&SecretKey::from_bytes([7; 32]), &[8; FILE_ID_LEN]);
    let mut b = buf.clone();
    assert!(other.open_chunk(3, false, &nonce, &tag, &mut b).is_err());
}

#[test]
fn chunk_format_matches_the_rustcrypto_implementation() {
    // The chunk AEAD runs on AWS-LC; an independent implementation must agree byte for
    // byte, in both directions.
    let data_key = SecretKey::from_bytes([3; 32]);
    let file_id = [4; FILE_ID_LEN];
    let k = FileKeys::derive(&data_key, &file_id);
    let chunk_key = hkdf_expand(data_key.as_bytes(), &file_id, &[INFO_CHUNK_KEY]);
    let rc = Aes256GcmSiv::new(chunk_key.as_ref().into());
    let aad = chunk_aad(&file_id, 9, true);
    let plain = b"cross-check".to_vec();
    let mut buf = plain.clone();
    let (nonce, tag) = k.seal_chunk(9, true, &mut buf).unwrap();
    let mut theirs = buf.clone();
    rc.decrypt_in_place_detached(
        Nonce::from_slice(&nonce),
        &aad,
        &mut theirs,
        Tag::from_slice(&tag),
    )
    .unwrap();
    assert_eq!(theirs, plain);
    let mut sealed = plain.clone();
    let rc_tag = rc
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut sealed)
        .unwrap();
    let mut out = vec![0u8; plain.len()];
    let rc_tag: [u8; TAG_LEN] = rc_tag.into();
    k.open_chunk_into(9, true, &nonce, &rc_tag, &sealed, &mut out)
        .unwrap();
    assert_eq!(out, plain);
    let mut bad = sealed.clone();
    bad[0] ^= 1;
    assert!(k
        .open_chunk_into(9, true, &nonce, &rc_tag, &bad, &mut out)
        .is_err());
    assert!(out.iter().all(|&b| b == 0), "no plaintext after a failure");
}

#[test]
fn nonces_are_fresh() {
    let k = keys();
    let (n1, _) = k.seal_chunk(0, true, &mut [0u8; 4]).unwrap();
    let (n2, _) = k.seal_chunk(0, true, &mut [0u8; 4]).unwrap();
    assert_ne!(n1, n2);
}

#[test]
fn header_mac_commits_to_data_key() {
    let a = keys();
    let b = FileKeys::derive(&SecretKey::from_bytes([6; 32]), &[9; FILE_ID_LEN]);
    let mac = a.header_mac(&[b"header", b"table"]);
    assert!(a.verify_header_mac(&[b"header", b"table"], &mac).is_ok());
    assert!(a.verify_header_mac(&[b"headex", b"table"], &mac).is_err());
    assert!(b.verify_header_mac(&[b"header", b"table"], &mac).is_err());
}

#[test]
fn wrap_unwrap() {
    let alice = PrivateKey::generate().unwrap();
    let bob = PrivateKey::generate().unwrap();
    let dk = SecretKey::generate().unwrap();
    let w = wrap_key(&alice.public_key(), &dk, b"ctx").unwrap();
    assert_eq!(
        unwrap_key(&alice, &w, b"ctx").unwrap().as_bytes(),
        dk.as_bytes()
    );
    assert!(unwrap_key(&alice, &w, b"other").is_err());
    assert!(unwrap_key(&bob, &w, b"ctx").is_err());
    let mut low_order = w.clone();
    low_order.ephemeral_public = [0; 32];
    assert!(unwrap_key(&alice, &low_order, b"ctx").is_err());
    let weak = PublicKey::from_bytes([0; 32]);
    assert!(weak.is_low_order());
    assert!(!alice.public_key().is_low_order());
    assert_eq!(
        wrap_key(&weak, &dk, b"ctx"),
        Err(CryptoError::WeakPublicKey)
    );
}

#[test]
fn passphrase_seal() {
    let params = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    let key = passphrase_key(b"hunter2", b"saltsaltsaltsalt", &params).unwrap();
    let (n, s) = seal_secret(&key, &[5; 32], b"aad").unwrap();
    assert_eq!(*open_secret(&key, &n, &s, b"aad").unwrap(), [5; 32]);
    let wrong = passphrase_key(b"hunter3", b"saltsaltsaltsalt", &params).unwrap();
    assert!(open_secret(&wrong, &n, &s, b"aad").is_err());
    let huge = KdfParams {
        m_kib: u32::MAX,
        t: 1,
        p: 1,
    };
    assert!(passphrase_key(b"x", b"saltsaltsaltsalt", &huge).is_err());
}

#[test]
fn kdf_caps() {
    let at = |m_kib, t| KdfParams { m_kib, t, p: 1 };
    KdfParams::DEFAULT.check_cap().unwrap();
    at(KdfParams::CAP_M_KIB, KdfParams::CAP_T)
        .check_cap()
        .unwrap();
    for over in [
        at(KdfParams::CAP_M_KIB + 1, 1),
        at(64 * 1024, KdfParams::CAP_T + 1),
    ] {
        over.validate().unwrap();
        let e = over.check_cap().unwrap_err();
        assert!(matches!(e, CryptoError::KdfOverCap { .. }));
        assert!(e.to_string().contains("--kdf-memory"), "{e}");
    }
}
