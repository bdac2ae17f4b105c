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
/// The version every writer writes: the key-slot section ends with an ownership record.
pub const VERSION: u16 = 2;
/// The first version, still read: no ownership record (see [`Ownership::legacy_file`]).
pub const VERSION_1: u16 = 1;
pub const FIXED_HEADER_LEN: usize = 64;
/// The header MAC covers the fixed header up to the slot-section length, which is excluded so
/// that key slots can be added or removed by someone who does not hold the data key. The
/// version field enters the MAC as 1 whatever it says (see [`FixedHeader::maced`]).
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
    #[error(
        "unsupported container version {0} (this build reads versions {VERSION_1} and {VERSION})"
    )]
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
    #[error("key-slot section: {0} bytes after the ownership record")]
    TrailingRecordBytes(usize),
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
    #[error("ownership record: expected {0}")]
    Ownership(&'static str),
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
    /// [`VERSION`] or [`VERSION_1`]: whether the key-slot section ends with an ownership
    /// record.
    pub version: u16,
    pub file_id: [u8; FILE_ID_LEN],
    pub chunk_log2: u8,
    pub plaintext_len: u64,
    pub slots_len: u32,
}

impl FixedHeader {
    pub fn encode(&self) -> [u8; FIXED_HEADER_LEN] {
        let mut b = [0u8; FIXED_HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.chunk_log2;
        b[8..24].copy_from_slice(&self.file_id);
        b[24..32].copy_from_slice(&self.plaintext_len.to_le_bytes());
        b[60..64].copy_from_slice(&self.slots_len.to_le_bytes());
        b
    }

    /// The header bytes the MAC covers: the encoded header up to the slot-section length,
    /// with the version field as 1. The version only says whether the (unauthenticated) slot
    /// section carries an ownership record, so a version 1 file gains one (`tvault chown`)
    /// without its data key, and its MAC stays valid.
    pub fn maced(&self) -> [u8; MACED_HEADER_LEN] {
        let mut b = [0u8; MACED_HEADER_LEN];
        b.copy_from_slice(&self.encode()[..MACED_HEADER_LEN]);
        b[4..6].copy_from_slice(&VERSION_1.to_le_bytes());
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
        if version != VERSION && version != VERSION_1 {
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
            version,
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

/// Positional reads of a container's bytes: a file in the store, or memory (tests, vectors).
/// Containers are read, never mapped: a store writer can truncate a file under a reader, and
/// a mapping then raises SIGBUS, where a read returns an error.
pub trait Source: Send + Sync {
    /// The length in bytes.
    fn size(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Says that `[offset, offset + len)` will be read soon, so that a remote source can
    /// start fetching it (a local file needs no warning).
    fn will_need(&self, _offset: u64, _len: u64) {}
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

mod ownership;
mod reader;
mod slots;
mod writer;

pub use ownership::{Ownership, LEGACY_FILE_MODE, MAX_OWNER_LEN, MODE_BITS};
pub use reader::{read_ownership, Container, Reader};
pub use slots::*;
pub use writer::*;

#[cfg(test)]
mod tests;
