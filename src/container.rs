//! The `.tvlt` container: one encrypted file. See docs/FORMAT.md for the byte layout.
//!
//! ```text
//! [fixed header 64 B][key slots][chunk ciphertexts][chunk table 28 B × n][header MAC 32 B]
//! ```
//! Chunk ciphertexts carry no inline tag: each chunk's nonce and tag live in the chunk table,
//! which the header MAC covers. Rolling a chunk back, swapping, truncating or extending is
//! therefore caught either by the MAC or by the chunk's AEAD check against the table.

use std::io::{self, Seek, SeekFrom, Write};

use crate::crypto::{
    self, CryptoError, FileKeys, PrivateKey, PublicKey, SecretKey, WrappedKey, FILE_ID_LEN,
    MAC_LEN, NONCE_LEN, TAG_LEN, WRAPPED_KEY_LEN,
};

pub(crate) const MAGIC: [u8; 4] = *b"TVLT";
pub(crate) const VERSION: u16 = 1;
pub const FIXED_HEADER_LEN: usize = 64;
/// The header MAC covers the fixed header up to the slot-section length, which is excluded so
/// that key slots can be added or removed by someone who does not hold the data key.
pub const MACED_HEADER_LEN: usize = 60;
pub const TABLE_ENTRY_LEN: usize = NONCE_LEN + TAG_LEN;
pub(crate) const MIN_CHUNK_LOG2: u8 = 12;
pub(crate) const MAX_CHUNK_LOG2: u8 = 20;
pub(crate) const DEFAULT_CHUNK_LOG2: u8 = 16;
/// Bounds what a hostile file can make a parser allocate for key slots.
pub const MAX_SLOTS_LEN: u32 = 1 << 20;
pub(crate) const MAX_LABEL_LEN: usize = 255;
const SLOT_FIXED_LEN: usize = 32 + NONCE_LEN + WRAPPED_KEY_LEN;
const SLOT_AAD_PREFIX: &[u8] = b"tensorvault v1 slot";

/// What is wrong with a container, or with how one was used. The structural variants (up to
/// `SizeMismatch`) need no key to detect; docs/FORMAT.md, "Reading", gives their order.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("not a tensorvault container (bad magic)")]
    NotAContainer,
    #[error("{0} bytes is shorter than the {FIXED_HEADER_LEN}-byte container header")]
    TruncatedHeader(u64),
    #[error("unsupported container version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("invalid chunk size 2^{0}: must be a power of two from 4 KiB to 1 MiB")]
    ChunkSize(u8),
    #[error(
        "invalid chunk size {0} bytes: must be a power of two from 4096 (4 KiB) to 1048576 (1 MiB)"
    )]
    ChunkSizeBytes(u64),
    #[error("reserved header byte {offset} is {value:#04x}, not zero")]
    ReservedNotZero { offset: usize, value: u8 },
    #[error("key-slot section length {0} is out of range (2 to {MAX_SLOTS_LEN} bytes)")]
    SlotsLenOutOfRange(u32),
    #[error(
        "region lengths overflow 64 bits (plaintext length {plaintext_len}, key-slot section \
         {slots_len} bytes)"
    )]
    LayoutOverflow { plaintext_len: u64, slots_len: u32 },
    #[error(
        "container is {actual} bytes but its header implies {expected} (truncated or extended)"
    )]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("key-slot section of {0} bytes has no room for its 2-byte slot count")]
    NoSlotCount(usize),
    #[error("key-slot section ends inside slot {index} of {count}")]
    TruncatedSlot { index: u16, count: u16 },
    #[error("key-slot section: {0} bytes after the last slot")]
    TrailingSlotBytes(usize),
    #[error("key slot {index}: label is not UTF-8")]
    LabelNotUtf8 { index: u16 },
    #[error("empty key slot label")]
    EmptyLabel,
    #[error("key slot label of {0} bytes is longer than {MAX_LABEL_LEN}")]
    LabelTooLong(usize),
    #[error("key slot label {0:?} contains a control character")]
    LabelControlCharacter(String),
    #[error("two key slots for {0:?}")]
    DuplicateSlot(String),
    #[error("{0} key slots is too many (at most {max})", max = u16::MAX)]
    TooManySlots(usize),
    #[error("key-slot section of {0} bytes exceeds the {MAX_SLOTS_LEN}-byte limit")]
    SlotsTooLarge(usize),
    #[error("no key slot for {0:?}")]
    NoSlot(String),
    #[error("key slot for {0:?} does not open with this key")]
    SlotAuthentication(String),
    #[error("header authentication failed (header or chunk table altered, or wrong data key)")]
    HeaderAuthentication,
    #[error("chunk {index} failed authentication (altered, swapped or rolled back)")]
    ChunkAuthentication { index: u64 },
    #[error(
        "chunk table of {len} bytes exceeds this reader's {limit}-byte limit (a file this large needs a larger cache, or was crafted to exhaust memory)"
    )]
    TableTooLarge { len: u64, limit: u64 },
    // The caller's mistakes, not the file's.
    #[error("chunk {index} is past the last chunk (the file has {count})")]
    ChunkOutOfRange { index: u64, count: u64 },
    #[error("buffer of {have} bytes for a {need}-byte chunk")]
    BufferTooSmall { have: usize, need: usize },
    #[error("chunk {index} of {len} bytes exceeds the {chunk_size}-byte chunk size")]
    ChunkTooLong {
        index: u64,
        len: usize,
        chunk_size: u64,
    },
    #[error("chunk {0} of the draft is not sealed")]
    ChunkNotSealed(u64),
    #[error("chunk {index} of the draft is missing, or sealed for another length or final flag")]
    DraftIncomplete { index: u64 },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Reading or writing the file failed (EIO, ENOMEM, ENOSPC…): never a sign of tampering.
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub(crate) type Result<T> = std::result::Result<T, ContainerError>;

/// Number of chunks for a plaintext length. An empty file still has one (empty, final) chunk,
/// so that truncating a file to nothing is detected like any other truncation.
pub fn chunk_count(plaintext_len: u64, chunk_log2: u8) -> u64 {
    let cs = 1u64 << chunk_log2;
    plaintext_len.div_ceil(cs).max(1)
}

pub fn chunk_log2_from_size(size: u64) -> Result<u8> {
    let log2 = u8::try_from(size.trailing_zeros()).unwrap_or(u8::MAX);
    if !size.is_power_of_two() || !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&log2) {
        // The size itself: its trailing zeros would call 3 or 65537 "2^0".
        return Err(ContainerError::ChunkSizeBytes(size));
    }
    Ok(log2)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    pub file_id: [u8; FILE_ID_LEN],
    pub chunk_log2: u8,
    pub plaintext_len: u64,
    pub slots_len: u32,
}

impl FixedHeader {
    pub fn encode(&self) -> [u8; FIXED_HEADER_LEN] {
        let mut b = [0u8; FIXED_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.chunk_log2;
        b[8..24].copy_from_slice(&self.file_id);
        b[24..32].copy_from_slice(&self.plaintext_len.to_le_bytes());
        b[60..64].copy_from_slice(&self.slots_len.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let b: &[u8; FIXED_HEADER_LEN] = bytes
            .get(..FIXED_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                if bytes.len() >= 4 && bytes[..4] != MAGIC {
                    ContainerError::NotAContainer
                } else {
                    ContainerError::TruncatedHeader(bytes.len() as u64)
                }
            })?;
        if b[0..4] != MAGIC {
            return Err(ContainerError::NotAContainer);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(ContainerError::UnsupportedVersion(version));
        }
        let chunk_log2 = b[6];
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(ContainerError::ChunkSize(chunk_log2));
        }
        if let Some(offset) = (7..8).chain(32..MACED_HEADER_LEN).find(|&i| b[i] != 0) {
            return Err(ContainerError::ReservedNotZero {
                offset,
                value: b[offset],
            });
        }
        let mut file_id = [0u8; FILE_ID_LEN];
        file_id.copy_from_slice(&b[8..24]);
        let plaintext_len = u64::from_le_bytes(le8(&b[24..32]));
        let slots_len = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if !(2..=MAX_SLOTS_LEN).contains(&slots_len) {
            return Err(ContainerError::SlotsLenOutOfRange(slots_len));
        }
        Ok(FixedHeader {
            file_id,
            chunk_log2,
            plaintext_len,
            slots_len,
        })
    }

    pub fn chunk_size(&self) -> u64 {
        1u64 << self.chunk_log2
    }

    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.plaintext_len, self.chunk_log2)
    }

    /// Offsets of each region, or `None` if they overflow a u64 (a hostile length field).
    pub fn layout(&self) -> Option<Layout> {
        let data = (FIXED_HEADER_LEN as u64).checked_add(u64::from(self.slots_len))?;
        let table = data.checked_add(self.plaintext_len)?;
        let mac = self
            .chunk_count()
            .checked_mul(TABLE_ENTRY_LEN as u64)?
            .checked_add(table)?;
        let total = mac.checked_add(MAC_LEN as u64)?;
        Some(Layout {
            data,
            table,
            mac,
            total,
        })
    }

    /// Plaintext range of chunk `index`.
    pub fn chunk_range(&self, index: u64) -> (u64, u64) {
        let start = index << self.chunk_log2;
        let end = (start + self.chunk_size()).min(self.plaintext_len);
        (start, end.max(start))
    }
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&s[..8]);
    a
}

/// Byte offsets of the regions of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub data: u64,
    pub table: u64,
    pub mac: u64,
    pub total: u64,
}

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

pub(crate) fn decode_slots(bytes: &[u8]) -> Result<Vec<KeySlot>> {
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
    if !rest.is_empty() {
        return Err(ContainerError::TrailingSlotBytes(rest.len()));
    }
    Ok(slots)
}

/// Positional reads of a container's bytes: a file in the store, or memory (tests, vectors).
/// Containers are read, never mapped: a store writer can truncate a file under a reader, and
/// a mapping then raises SIGBUS, where a read returns an error.
pub trait Source: Send + Sync {
    /// The length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        buf.copy_from_slice(self.get(start..end).ok_or_else(eof)?);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        Source::size(self.as_slice())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Source::read_exact_at(self.as_slice(), buf, offset)
    }
}

impl<S: Source + ?Sized> Source for &S {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// The largest chunk table the CLI reads into memory (a store writer can make a sparse file
/// whose header claims billions of chunks). The mount passes its own, smaller bound.
pub(crate) const MAX_TABLE_LEN: u64 = 1 << 30;

/// A structurally checked container whose contents are not yet authenticated. Opening it
/// needs the data key, obtained from one of its key slots. Only the fixed header and the key
/// slots have been read.
pub struct Container<B> {
    source: B,
    header: FixedHeader,
    layout: Layout,
    slots: Vec<KeySlot>,
}

impl<B: Source> Container<B> {
    /// Checks magic, version, reserved bytes, the slot section and that the total length is
    /// exactly what the header implies. No key is needed.
    pub fn parse(source: B) -> Result<Self> {
        let actual = source.size()?;
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let have = actual.min(FIXED_HEADER_LEN as u64) as usize;
        source.read_exact_at(&mut fixed[..have], 0)?;
        let header = FixedHeader::decode(&fixed[..have])?;
        let layout = header.layout().ok_or(ContainerError::LayoutOverflow {
            plaintext_len: header.plaintext_len,
            slots_len: header.slots_len,
        })?;
        if actual != layout.total {
            return Err(ContainerError::SizeMismatch {
                expected: layout.total,
                actual,
            });
        }
        // slots_len is at most MAX_SLOTS_LEN (checked by `decode`).
        let mut encoded = vec![0u8; header.slots_len as usize];
        source.read_exact_at(&mut encoded, FIXED_HEADER_LEN as u64)?;
        let slots = decode_slots(&encoded)?;
        Ok(Container {
            source,
            header,
            layout,
            slots,
        })
    }

    pub fn header(&self) -> &FixedHeader {
        &self.header
    }

    pub fn slots(&self) -> &[KeySlot] {
        &self.slots
    }

    pub fn slot(&self, label: &str) -> Option<&KeySlot> {
        self.slots.iter().find(|s| s.label == label)
    }

    /// Bytes of the chunk table plus the MAC, which `open` reads into memory.
    pub(crate) fn table_len(&self) -> u64 {
        self.layout.total - self.layout.table
    }

    /// Unwraps the data key from `label`'s slot.
    pub fn unwrap_key(&self, label: &str, key: &PrivateKey) -> Result<SecretKey> {
        self.slot(label)
            .ok_or_else(|| ContainerError::NoSlot(label.to_string()))?
            .open(&self.header.file_id, key)
    }

    /// Reads the chunk table and MAC (at most `limit` bytes of them) and verifies the MAC over
    /// the header as decoded and that table, under `data_key`.
    fn authenticate(
        &self,
        data_key: &SecretKey,
        limit: u64,
    ) -> Result<(FileKeys, Vec<u8>, [u8; MAC_LEN])> {
        let len = self.table_len();
        if len > limit {
            return Err(ContainerError::TableTooLarge { len, limit });
        }
        let mut table = vec![0u8; (len as usize).saturating_sub(MAC_LEN)];
        self.source.read_exact_at(&mut table, self.layout.table)?;
        let mut mac = [0u8; MAC_LEN];
        self.source.read_exact_at(&mut mac, self.layout.mac)?;
        let keys = FileKeys::derive(data_key, &self.header.file_id);
        let fixed = self.header.encode();
        keys.verify_header_mac(&[&fixed[..MACED_HEADER_LEN], &table], &mac)
            .map_err(|_| ContainerError::HeaderAuthentication)?;
        Ok((keys, table, mac))
    }

    pub fn verify_header(&self, data_key: &SecretKey) -> Result<()> {
        self.authenticate(data_key, MAX_TABLE_LEN).map(|_| ())
    }

    /// Authenticates the header under `data_key` and returns a reader.
    pub fn open(self, data_key: &SecretKey) -> Result<Reader<B>> {
        self.open_with_limit(data_key, MAX_TABLE_LEN)
    }

    /// Like `open`, refusing (`TableTooLarge`) a chunk table of more than `limit` bytes.
    pub fn open_with_limit(self, data_key: &SecretKey, limit: u64) -> Result<Reader<B>> {
        let (keys, table, mac) = self.authenticate(data_key, limit)?;
        Ok(Reader {
            source: self.source,
            header: self.header,
            layout: self.layout,
            slots: self.slots,
            keys,
            table,
            mac,
        })
    }

    /// Writes this container with `slots` replacing its key slots; the data, chunk table and
    /// MAC are copied unchanged (no re-encryption).
    pub fn write_with_slots<W: Write>(&self, slots: &[KeySlot], out: &mut W) -> Result<()> {
        let encoded = encode_slots(slots)?;
        let mut header = self.header;
        header.slots_len = encoded.len() as u32;
        out.write_all(&header.encode())?;
        out.write_all(&encoded)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = self.layout.data;
        while at < self.layout.total {
            let n = (self.layout.total - at).min(buf.len() as u64) as usize;
            self.source.read_exact_at(&mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

/// An authenticated, random-access view of a container's plaintext. `Sync`: the mount reads
/// one reader from many threads at once.
pub struct Reader<B> {
    source: B,
    header: FixedHeader,
    layout: Layout,
    slots: Vec<KeySlot>,
    keys: FileKeys,
    /// The chunk table as authenticated by the header MAC, held in memory: a later in-place
    /// edit of the file cannot swap in unauthenticated nonces or tags.
    table: Vec<u8>,
    mac: [u8; MAC_LEN],
}

impl<B: Source> Reader<B> {
    pub(crate) fn header(&self) -> &FixedHeader {
        &self.header
    }

    pub(crate) fn slots(&self) -> &[KeySlot] {
        &self.slots
    }

    /// The authenticated header MAC. With the file id it names this exact version: another
    /// data key, header or chunk table gives another MAC.
    pub(crate) fn mac(&self) -> &[u8; MAC_LEN] {
        &self.mac
    }

    pub fn len(&self) -> u64 {
        self.header.plaintext_len
    }

    pub fn is_empty(&self) -> bool {
        self.header.plaintext_len == 0
    }

    pub fn chunk_size(&self) -> u64 {
        self.header.chunk_size()
    }

    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count()
    }

    fn table_entry(&self, index: u64) -> ([u8; NONCE_LEN], [u8; TAG_LEN]) {
        let at = index as usize * TABLE_ENTRY_LEN;
        let e = &self.table[at..at + TABLE_ENTRY_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut tag = [0u8; TAG_LEN];
        nonce.copy_from_slice(&e[..NONCE_LEN]);
        tag.copy_from_slice(&e[NONCE_LEN..]);
        (nonce, tag)
    }

    /// Decrypts chunk `index` into the front of `out` and returns its length. `out` must hold
    /// at least `chunk_size()` bytes (or the chunk's length).
    pub fn read_chunk(&self, index: u64, out: &mut [u8]) -> Result<usize> {
        self.read_chunk_with(index, out, &mut Vec::new())
    }

    /// Like [`Self::read_chunk`], reading the ciphertext into `scratch` (reused between calls,
    /// so that a hot path allocates nothing). A file truncated underneath gives an error.
    pub fn read_chunk_with(
        &self,
        index: u64,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<usize> {
        let (at, n) = self.chunk_location(index, out.len())?;
        scratch.resize(n, 0);
        self.source.read_exact_at(scratch, at)?;
        self.open_chunk(index, scratch, out)
    }

    /// Where chunk `index`'s ciphertext lies in the container, and its length (which must
    /// fit in `room` bytes of output).
    fn chunk_location(&self, index: u64, room: usize) -> Result<(u64, usize)> {
        let count = self.chunk_count();
        if index >= count {
            return Err(ContainerError::ChunkOutOfRange { index, count });
        }
        let (start, end) = self.header.chunk_range(index);
        let n = (end - start) as usize;
        if room < n {
            return Err(ContainerError::BufferTooSmall {
                have: room,
                need: n,
            });
        }
        Ok((self.layout.data + start, n))
    }

    fn open_chunk(&self, index: u64, ciphertext: &[u8], out: &mut [u8]) -> Result<usize> {
        let n = ciphertext.len();
        let (nonce, tag) = self.table_entry(index);
        let last = index + 1 == self.chunk_count();
        self.keys
            .open_chunk_into(index, last, &nonce, &tag, ciphertext, &mut out[..n])
            .map_err(|_| ContainerError::ChunkAuthentication { index })?;
        Ok(n)
    }

    /// Fills `buf` with plaintext from `offset`, decrypting only the chunks that overlap the
    /// range; returns the number of bytes read (short only at end of file). Whole chunks are
    /// decrypted straight into `buf`; only partially covered chunks go through a scratch
    /// buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = self.len();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let end = len.min(offset.saturating_add(buf.len() as u64));
        let want = (end - offset) as usize;
        let cs = self.chunk_size();
        let mut plain = zeroize::Zeroizing::new(Vec::new());
        let mut cipher = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos >> self.header.chunk_log2;
            let (cstart, cend) = self.header.chunk_range(index);
            let dst = (pos - offset) as usize;
            if pos == cstart && cend <= end {
                let n = (cend - cstart) as usize;
                self.read_chunk_with(index, &mut buf[dst..dst + n], &mut cipher)?;
            } else {
                if plain.is_empty() {
                    plain.resize(cs as usize, 0);
                }
                self.read_chunk_with(index, &mut plain, &mut cipher)?;
                let from = (pos - cstart) as usize;
                let to = (cend.min(end) - cstart) as usize;
                buf[dst..dst + to - from].copy_from_slice(&plain[from..to]);
            }
            pos = cend.min(end);
        }
        Ok(want)
    }

    /// Authenticates every chunk (for `fsck` and `get`), without keeping plaintext.
    pub fn verify_all(&self) -> Result<()> {
        let mut plain = zeroize::Zeroizing::new(vec![0u8; self.chunk_size() as usize]);
        let mut cipher = Vec::new();
        for index in 0..self.chunk_count() {
            self.read_chunk_with(index, &mut plain, &mut cipher)?;
        }
        Ok(())
    }
}

/// The header (with a fresh file id and a zero length, filled in when the container is
/// finished) and the encoded key slots of a new container.
fn new_header(
    data_key: &SecretKey,
    chunk_log2: u8,
    recipients: &[(String, PublicKey)],
) -> Result<(FixedHeader, Vec<u8>)> {
    if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
        return Err(ContainerError::ChunkSize(chunk_log2));
    }
    let file_id: [u8; FILE_ID_LEN] = crypto::random_array()?;
    let slots = recipients
        .iter()
        .map(|(label, pk)| KeySlot::seal(&file_id, label, pk, data_key))
        .collect::<Result<Vec<_>>>()?;
    let encoded = encode_slots(&slots)?;
    let header = FixedHeader {
        file_id,
        chunk_log2,
        plaintext_len: 0,
        slots_len: encoded.len() as u32,
    };
    Ok((header, encoded))
}

/// Streams plaintext into a new container. Full chunks are sealed and written as soon as the
/// next byte shows they are not the last; the fixed header (with the final length), the
/// chunk table and the MAC are written by `finish`.
pub struct Writer<W: Write + Seek> {
    out: W,
    keys: FileKeys,
    header: FixedHeader,
    table: Vec<u8>,
    /// Plaintext of the chunk being filled; wiped on drop.
    pending: zeroize::Zeroizing<Vec<u8>>,
    next_index: u64,
    written: u64,
}

impl<W: Write + Seek> Writer<W> {
    /// `recipients` are (label, public key) pairs, one key slot each.
    pub fn new(
        mut out: W,
        data_key: &SecretKey,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
    ) -> Result<Self> {
        let (header, encoded) = new_header(data_key, chunk_log2, recipients)?;
        out.write_all(&header.encode())?;
        out.write_all(&encoded)?;
        Ok(Writer {
            out,
            keys: FileKeys::derive(data_key, &header.file_id),
            header,
            table: Vec::new(),
            pending: zeroize::Zeroizing::new(Vec::with_capacity(1 << chunk_log2)),
            next_index: 0,
            written: 0,
        })
    }

    fn seal_pending(&mut self, last: bool) -> Result<()> {
        let (nonce, tag) =
            self.keys
                .seal_chunk(self.next_index, last, self.pending.as_mut_slice())?;
        self.out.write_all(&self.pending)?;
        self.table.extend_from_slice(&nonce);
        self.table.extend_from_slice(&tag);
        self.pending.clear();
        self.next_index += 1;
        Ok(())
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        let cs = self.header.chunk_size() as usize;
        while !data.is_empty() {
            if self.pending.len() == cs {
                // More data follows, so the buffered full chunk is not the last one.
                self.seal_pending(false)?;
            }
            let take = (cs - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            self.written += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Seals the last chunk, appends table and MAC, rewrites the fixed header with the final
    /// length, and returns the sink (not yet synced: the caller decides durability).
    pub fn finish(mut self) -> Result<W> {
        self.seal_pending(true)?;
        self.header.plaintext_len = self.written;
        let encoded = self.header.encode();
        let mac = self
            .keys
            .header_mac(&[&encoded[..MACED_HEADER_LEN], &self.table]);
        self.out.write_all(&self.table)?;
        self.out.write_all(&mac)?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&encoded)?;
        self.out.seek(SeekFrom::End(0))?;
        Ok(self.out)
    }
}

/// One sealed chunk of a [`Draft`]: where its nonce and tag are, and how it was sealed.
#[derive(Clone, Copy)]
struct DraftEntry {
    nonce: [u8; NONCE_LEN],
    tag: [u8; TAG_LEN],
    len: u32,
    last: bool,
}

/// A container being written in any order, for writes through the mount. Chunks are sealed
/// into a file at their final offsets as soon as the caller has them, and may be re-sealed
/// (with a fresh nonce) when overwritten; `finish` writes the chunk table, MAC and header
/// last. Until then the file is not a valid container, so a crash never leaves a file that
/// a reader could mistake for a complete one.
pub struct Draft {
    file: std::fs::File,
    keys: FileKeys,
    header: FixedHeader,
    data_offset: u64,
    /// Sealed chunks by index: only those, so that one chunk written far past the end (a
    /// sparse write) costs one entry, not a table up to its index.
    table: std::collections::BTreeMap<u64, DraftEntry>,
}

impl Draft {
    /// Writes the header placeholder and key slots for `recipients` into `file` (empty).
    pub(crate) fn create(
        file: std::fs::File,
        data_key: &SecretKey,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
    ) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let (header, encoded) = new_header(data_key, chunk_log2, recipients)?;
        // The placeholder header has no valid MAC or length; `finish` rewrites it.
        file.write_all_at(&header.encode(), 0)?;
        file.write_all_at(&encoded, FIXED_HEADER_LEN as u64)?;
        Ok(Draft {
            file,
            keys: FileKeys::derive(data_key, &header.file_id),
            data_offset: (FIXED_HEADER_LEN + encoded.len()) as u64,
            header,
            table: std::collections::BTreeMap::new(),
        })
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        self.header.chunk_size()
    }

    /// Seals `plaintext` as chunk `index` (overwriting any earlier version of that chunk).
    /// `scratch` is reused as the encryption buffer to avoid an allocation per chunk.
    pub(crate) fn seal(
        &mut self,
        index: u64,
        plaintext: &[u8],
        last: bool,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if plaintext.len() as u64 > self.chunk_size() {
            return Err(ContainerError::ChunkTooLong {
                index,
                len: plaintext.len(),
                chunk_size: self.chunk_size(),
            });
        }
        scratch.clear();
        scratch.extend_from_slice(plaintext);
        let (nonce, tag) = self.keys.seal_chunk(index, last, scratch)?;
        self.file.write_all_at(
            scratch,
            self.data_offset + (index << self.header.chunk_log2),
        )?;
        self.table.insert(
            index,
            DraftEntry {
                nonce,
                tag,
                len: plaintext.len() as u32,
                last,
            },
        );
        Ok(())
    }

    /// (length, last flag) of chunk `index` if it has been sealed.
    pub(crate) fn sealed(&self, index: u64) -> Option<(usize, bool)> {
        let entry = self.table.get(&index)?;
        Some((entry.len as usize, entry.last))
    }

    /// Decrypts sealed chunk `index` into the front of `out`; returns its length.
    pub(crate) fn open(&self, index: u64, out: &mut [u8]) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        let entry = self
            .table
            .get(&index)
            .copied()
            .ok_or(ContainerError::ChunkNotSealed(index))?;
        let n = entry.len as usize;
        let have = out.len();
        let buf = out
            .get_mut(..n)
            .ok_or(ContainerError::BufferTooSmall { have, need: n })?;
        FileExt::read_exact_at(
            &self.file,
            buf,
            self.data_offset + (index << self.header.chunk_log2),
        )?;
        self.keys
            .open_chunk(index, entry.last, &entry.nonce, &entry.tag, buf)
            .map_err(|_| ContainerError::ChunkAuthentication { index })?;
        Ok(n)
    }

    /// Forgets chunks from `count` on (after a truncation).
    pub(crate) fn forget_from(&mut self, count: u64) {
        drop(self.table.split_off(&count));
    }

    /// Completes the container for a plaintext of `plaintext_len` bytes: every chunk must be
    /// sealed with its exact length, and only the final one marked last. Writes the table,
    /// the MAC and then the real header, cuts the file to size and returns it (not synced).
    pub(crate) fn finish(mut self, plaintext_len: u64) -> Result<std::fs::File> {
        use std::os::unix::fs::FileExt;
        self.header.plaintext_len = plaintext_len;
        let count = self.header.chunk_count();
        // Sized by what was sealed: a header claiming more chunks fails below, unallocated.
        let sealed = count.min(self.table.len() as u64) as usize;
        let mut table = Vec::with_capacity(sealed * TABLE_ENTRY_LEN);
        for index in 0..count {
            let (start, end) = self.header.chunk_range(index);
            let last = index + 1 == count;
            match self.table.get(&index).copied() {
                Some(e) if u64::from(e.len) == end - start && e.last == last => {
                    table.extend_from_slice(&e.nonce);
                    table.extend_from_slice(&e.tag);
                }
                _ => return Err(ContainerError::DraftIncomplete { index }),
            }
        }
        let encoded = self.header.encode();
        let mac = self
            .keys
            .header_mac(&[&encoded[..MACED_HEADER_LEN], &table]);
        let table_offset = self.data_offset + plaintext_len;
        self.file.write_all_at(&table, table_offset)?;
        let mac_offset = table_offset + table.len() as u64;
        self.file.write_all_at(&mac, mac_offset)?;
        self.file.set_len(mac_offset + MAC_LEN as u64)?;
        self.file.write_all_at(&encoded, 0)?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    pub(crate) fn encrypt(data: &[u8], log2: u8, who: &[(&str, &PrivateKey)]) -> Vec<u8> {
        let dk = SecretKey::generate().unwrap();
        let recipients: Vec<_> = who
            .iter()
            .map(|(n, k)| (n.to_string(), k.public_key()))
            .collect();
        let mut w = Writer::new(Cursor::new(Vec::new()), &dk, log2, &recipients).unwrap();
        // Feed in odd-sized pieces to exercise chunk boundaries.
        for piece in data.chunks(1000) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn open(bytes: Vec<u8>, key: &PrivateKey) -> Result<Reader<Vec<u8>>> {
        let c = Container::parse(bytes)?;
        let dk = c.unwrap_key("alice", key)?;
        c.open(&dk)
    }

    #[test]
    fn round_trip_sizes() {
        let alice = PrivateKey::generate().unwrap();
        for log2 in [12u8, 16] {
            let cs = 1usize << log2;
            for size in [0, 1, cs - 1, cs, cs + 1, 3 * cs + 17] {
                let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                let enc = encrypt(&data, log2, &[("alice", &alice)]);
                let r = open(enc, &alice).unwrap();
                assert_eq!(r.len(), size as u64);
                let mut out = vec![0u8; size + 10];
                assert_eq!(r.read_at(0, &mut out).unwrap(), size);
                assert_eq!(&out[..size], &data[..]);
                r.verify_all().unwrap();
            }
        }
    }

    #[test]
    fn slots_rewrite_keeps_data() {
        let alice = PrivateKey::generate().unwrap();
        let bob = PrivateKey::generate().unwrap();
        let enc = encrypt(b"hello world", 12, &[("alice", &alice)]);
        let c = Container::parse(enc).unwrap();
        let dk = c.unwrap_key("alice", &alice).unwrap();
        let mut slots = c.slots().to_vec();
        slots.push(KeySlot::seal(&c.header().file_id, "bob", &bob.public_key(), &dk).unwrap());
        let mut out = Vec::new();
        c.write_with_slots(&slots, &mut out).unwrap();
        let c2 = Container::parse(out).unwrap();
        let dk2 = c2.unwrap_key("bob", &bob).unwrap();
        let r = c2.open(&dk2).unwrap();
        let mut buf = [0u8; 11];
        r.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello world");
    }

    #[test]
    fn relabelled_slot_does_not_open() {
        let alice = PrivateKey::generate().unwrap();
        let enc = encrypt(b"x", 12, &[("alice", &alice)]);
        let c = Container::parse(enc).unwrap();
        let mut slots = c.slots().to_vec();
        slots[0].label = "mallory".into();
        let mut out = Vec::new();
        c.write_with_slots(&slots, &mut out).unwrap();
        let c2 = Container::parse(out).unwrap();
        assert!(matches!(
            c2.unwrap_key("mallory", &alice),
            Err(ContainerError::SlotAuthentication(_))
        ));
    }

    #[test]
    fn draft_in_any_order_reads_back() {
        let alice = PrivateKey::generate().unwrap();
        let dk = SecretKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.tvlt");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut d = Draft::create(file, &dk, 12, &[("alice".into(), alice.public_key())]).unwrap();
        let mut scratch = Vec::new();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        // Chunk 2 first (final, 1808 bytes), then 0, then 1 sealed twice.
        d.seal(2, &data[8192..], true, &mut scratch).unwrap();
        d.seal(0, &data[..4096], false, &mut scratch).unwrap();
        d.seal(1, &[0u8; 4096], false, &mut scratch).unwrap();
        d.seal(1, &data[4096..8192], false, &mut scratch).unwrap();
        let mut out = vec![0u8; 4096];
        assert_eq!(d.open(1, &mut out).unwrap(), 4096);
        assert_eq!(out, &data[4096..8192]);
        assert_eq!(d.sealed(2), Some((1808, true)));
        assert!(d.open(3, &mut out).is_err());
        let file = d.finish(data.len() as u64).unwrap();
        drop(file);
        let r = open(std::fs::read(&path).unwrap(), &alice).unwrap();
        let mut back = vec![0u8; data.len()];
        r.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn draft_refuses_to_finish_with_gaps_or_wrong_final_flag() {
        let dk = SecretKey::generate().unwrap();
        let alice = PrivateKey::generate().unwrap();
        let mk = || {
            let f = tempfile::tempfile().unwrap();
            Draft::create(f, &dk, 12, &[("alice".into(), alice.public_key())]).unwrap()
        };
        let mut scratch = Vec::new();
        let mut d = mk();
        d.seal(1, &[1u8; 10], true, &mut scratch).unwrap();
        assert!(d.finish(4106).is_err(), "chunk 0 missing");
        let mut d = mk();
        d.seal(0, &[1u8; 4096], true, &mut scratch).unwrap();
        d.seal(1, &[1u8; 10], true, &mut scratch).unwrap();
        assert!(d.finish(4106).is_err(), "chunk 0 sealed as last");
        let mut d = mk();
        d.seal(0, &[], true, &mut scratch).unwrap();
        assert!(d.finish(0).is_ok(), "empty file");
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        let alice = PrivateKey::generate().unwrap();
        let enc = encrypt(&[1u8; 5000], 12, &[("alice", &alice)]);
        for i in 0..enc.len().min(300) {
            for v in [0u8, 0xff, 0x80] {
                let mut b = enc.clone();
                b[i] = v;
                let _ = open(b, &alice);
            }
        }
        for cut in 0..enc.len() {
            assert!(Container::parse(&enc[..cut]).is_err());
        }
    }
}
