//! Key slots: the data key wrapped to each recipient, and the slot section's encoding.

use super::*;

/// The data key wrapped to one recipient, labelled with the recipient's user name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    pub label: String,
    pub wrapped: WrappedKey,
}

fn check_label(label: &str) -> Result<()> {
    if label.is_empty() {
        return Err(ContainerError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(ContainerError::LabelTooLong(label.len()));
    }
    if label.chars().any(char::is_control) {
        return Err(ContainerError::LabelControlCharacter(label.to_string()));
    }
    Ok(())
}

/// A slot's AEAD binds it to this file and this label: a slot copied to another file, or
/// relabelled to another user, does not open.
fn slot_aad(file_id: &[u8; FILE_ID_LEN], label: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SLOT_AAD_PREFIX.len() + FILE_ID_LEN + label.len());
    aad.extend_from_slice(SLOT_AAD_PREFIX);
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(label.as_bytes());
    aad
}

impl KeySlot {
    pub fn seal(
        file_id: &[u8; FILE_ID_LEN],
        label: &str,
        recipient: &PublicKey,
        data_key: &SecretKey,
    ) -> Result<Self> {
        check_label(label)?;
        let wrapped = crypto::wrap_key(recipient, data_key, &slot_aad(file_id, label))?;
        Ok(KeySlot {
            label: label.to_string(),
            wrapped,
        })
    }

    pub(crate) fn open(&self, file_id: &[u8; FILE_ID_LEN], key: &PrivateKey) -> Result<SecretKey> {
        crypto::unwrap_key(key, &self.wrapped, &slot_aad(file_id, &self.label))
            .map_err(|_| ContainerError::SlotAuthentication(self.label.clone()))
    }
}

/// The slot section of a version 1 container: `count u16 ‖ slots`.
pub fn encode_slots(slots: &[KeySlot]) -> Result<Vec<u8>> {
    let count =
        u16::try_from(slots.len()).map_err(|_| ContainerError::TooManySlots(slots.len()))?;
    let mut out = Vec::with_capacity(2 + slots.len() * (1 + 16 + SLOT_FIXED_LEN));
    out.extend_from_slice(&count.to_le_bytes());
    for slot in slots {
        check_label(&slot.label)?;
        if slots.iter().filter(|s| s.label == slot.label).count() > 1 {
            return Err(ContainerError::DuplicateSlot(slot.label.clone()));
        }
        out.push(slot.label.len() as u8);
        out.extend_from_slice(slot.label.as_bytes());
        out.extend_from_slice(&slot.wrapped.ephemeral_public);
        out.extend_from_slice(&slot.wrapped.nonce);
        out.extend_from_slice(&slot.wrapped.sealed);
    }
    if out.len() > MAX_SLOTS_LEN as usize {
        return Err(ContainerError::SlotsTooLarge(out.len()));
    }
    Ok(out)
}

/// The slot section of a version 2 container, which writers write: `count u16 ‖ slots ‖
/// ownership record`.
pub fn encode_slot_section(slots: &[KeySlot], ownership: &Ownership) -> Result<Vec<u8>> {
    let mut out = encode_slots(slots)?;
    ownership.encode(&mut out)?;
    if out.len() > MAX_SLOTS_LEN as usize {
        return Err(ContainerError::SlotsTooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes the slot section of a container of `version`: its key slots, and its ownership
/// record (`None` in version 1, which has none). Nothing may follow the last slot (version 1)
/// or the record (version 2).
pub(crate) fn decode_slot_section(
    bytes: &[u8],
    version: u16,
) -> Result<(Vec<KeySlot>, Option<Ownership>)> {
    let (slots, rest) = decode_slots(bytes)?;
    if version == VERSION_1 {
        if !rest.is_empty() {
            return Err(ContainerError::TrailingSlotBytes(rest.len()));
        }
        return Ok((slots, None));
    }
    let (ownership, used) = Ownership::decode(rest)?;
    if used != rest.len() {
        return Err(ContainerError::TrailingRecordBytes(rest.len() - used));
    }
    Ok((slots, Some(ownership)))
}

/// The key slots at the start of `bytes`, and what follows them.
fn decode_slots(bytes: &[u8]) -> Result<(Vec<KeySlot>, &[u8])> {
    let (count, mut rest) = match bytes {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return Err(ContainerError::NoSlotCount(bytes.len())),
    };
    let mut slots: Vec<KeySlot> = Vec::with_capacity(usize::from(count).min(1024));
    for index in 0..count {
        let (&len, tail) = rest
            .split_first()
            .ok_or(ContainerError::TruncatedSlot { index, count })?;
        let len = usize::from(len);
        if tail.len() < len + SLOT_FIXED_LEN {
            return Err(ContainerError::TruncatedSlot { index, count });
        }
        let label = std::str::from_utf8(&tail[..len])
            .map_err(|_| ContainerError::LabelNotUtf8 { index })?
            .to_string();
        check_label(&label)?;
        if slots.iter().any(|s| s.label == label) {
            return Err(ContainerError::DuplicateSlot(label));
        }
        let f = &tail[len..len + SLOT_FIXED_LEN];
        let mut wrapped = WrappedKey {
            ephemeral_public: [0; 32],
            nonce: [0; NONCE_LEN],
            sealed: [0; WRAPPED_KEY_LEN],
        };
        wrapped.ephemeral_public.copy_from_slice(&f[..32]);
        wrapped.nonce.copy_from_slice(&f[32..32 + NONCE_LEN]);
        wrapped.sealed.copy_from_slice(&f[32 + NONCE_LEN..]);
        slots.push(KeySlot { label, wrapped });
        rest = &tail[len + SLOT_FIXED_LEN..];
    }
    Ok((slots, rest))
}
