//! Parsing and validation of safetensors headers.
//!
//! A safetensors file is an 8-byte little-endian header length `N`, `N` bytes
//! of UTF-8 JSON describing the tensors, then the raw tensor bytes. This module
//! accepts what the reference implementation (huggingface/safetensors 0.8)
//! accepts, with differences only on inputs no writer produces:
//! - duplicate JSON keys are rejected, where the reference silently keeps the
//!   last one: a file whose meaning depends on which duplicate wins is not
//!   something we want to store;
//! - a dtype in serde's enum-as-map form (`{"F32": null}`) is rejected;
//! - unknown fields nested deeper than serde_json's recursion limit (128) are
//!   skipped, where the reference's buffering hits the limit and rejects them.

use std::borrow::Cow;
use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Largest header the reference implementation will read.
pub(crate) const MAX_HEADER_LEN: u64 = 100_000_000;

/// Size of the little-endian `u64` header length that starts every file.
const PREFIX_LEN: u64 = 8;

/// The one top-level key that is not a tensor.
const METADATA_KEY: &str = "__metadata__";

/// Element types, in the reference implementation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    F4,
    F6E2M3,
    F6E3M2,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// Every dtype, so that `name` is the only place spellings are written.
    const ALL: [Dtype; 22] = [
        Dtype::Bool,
        Dtype::F4,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::F8E4M3Fnuz,
        Dtype::F8E5M2Fnuz,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Parses the on-disk spelling (case-sensitive, like the reference).
    pub(crate) fn parse(s: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The on-disk spelling, e.g. `"F8_E4M3"`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Size of one element in bits; sub-byte types (F4, F6_*) are packed.
    pub(crate) fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8E5M2
            | Dtype::F8E4M3
            | Dtype::F8E8M0
            | Dtype::F8E4M3Fnuz
            | Dtype::F8E5M2Fnuz => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Offset of the first byte, relative to the start of the data buffer.
    pub begin: u64,
    /// Offset one past the last byte, relative to the start of the data buffer.
    pub end: u64,
}

impl TensorInfo {
    /// Size of the tensor's data in bytes.
    pub(crate) fn len(&self) -> u64 {
        // Saturating because the fields are public and may not have been validated.
        self.end.saturating_sub(self.begin)
    }
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `N`, the length of the JSON header, not counting the 8-byte prefix.
    pub header_len: u64,
    /// Sorted by `(begin, end, name)`; contiguous from offset 0.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, empty when absent or null.
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Absolute file offset of the data buffer: `8 + N`.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN.saturating_add(self.header_len)
    }

    /// Length of the data buffer: the end of the last tensor, or 0.
    pub(crate) fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    pub fn file_len(&self) -> u64 {
        self.data_start().saturating_add(self.data_len())
    }

    /// Tensor whose data contains absolute file offset `off` (binary search), for prefetch.
    /// Zero-size tensors contain no offset and are never returned.
    pub fn tensor_at_file_offset(&self, off: u64) -> Option<&TensorInfo> {
        let rel = off.checked_sub(self.data_start())?;
        // Tensors are sorted and contiguous, so the first one ending after `rel`
        // is the one holding it, unless `rel` is past the buffer.
        let i = self.tensors.partition_point(|t| t.end <= rel);
        self.tensors.get(i).filter(|t| t.begin <= rel)
    }
}

/// Why a file or header was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SafetensorsError {
    #[error("file is {file_len} bytes, too short for the 8-byte header length")]
    FileTooShort { file_len: u64 },
    #[error("header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit")]
    HeaderTooLarge { header_len: u64 },
    #[error(
        "file is {file_len} bytes but its header claims {header_len} bytes after the 8-byte length"
    )]
    HeaderBeyondFile { header_len: u64, file_len: u64 },
    #[error("only {given} bytes were given but the header ends at byte {needed}")]
    PrefixTooShort { given: u64, needed: u64 },
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("header is not a JSON object")]
    NotAnObject,
    #[error("header is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("duplicate __metadata__ key {0:?}")]
    DuplicateMetadataKey(String),
    #[error("__metadata__ must map strings to strings ({0})")]
    MetadataNotStrings(String),
    #[error("tensor {name:?}: {reason}")]
    InvalidTensorEntry { name: String, reason: String },
    #[error("tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype { name: String, dtype: String },
    #[error("tensor {name:?}: data_offsets begin at {begin} but end at {end}")]
    BeginAfterEnd { name: String, begin: u64, end: u64 },
    #[error("tensor {name:?} starts at {begin} but the data before it ends at {expected} (gap)")]
    Gap {
        name: String,
        begin: u64,
        expected: u64,
    },
    #[error(
        "tensor {name:?} starts at {begin} but the previous tensor ends at {expected} (overlap)"
    )]
    Overlap {
        name: String,
        begin: u64,
        expected: u64,
    },
    #[error("tensor {name:?}: element count of shape {shape:?} × {} overflows 64 bits", .dtype.name())]
    SizeOverflow {
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
    },
    #[error("tensor {name:?}: {} data of {bits} bits does not end on a byte boundary", .dtype.name())]
    NotByteAligned {
        name: String,
        dtype: Dtype,
        bits: u64,
    },
    #[error("tensor {name:?}: shape {shape:?} × {} is {expected} bytes but data_offsets span {actual}", .dtype.name())]
    SizeMismatch {
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },
    #[error("buffer is {buffer_len} bytes but tensors cover {covered}")]
    BufferMismatch { buffer_len: u64, covered: u64 },
}

use SafetensorsError as E;

/// Reads the 8-byte prefix; checks N <= MAX_HEADER_LEN and 8 + N <= file_len.
pub(crate) fn header_len(prefix: &[u8; 8], file_len: u64) -> Result<u64, SafetensorsError> {
    let n = u64::from_le_bytes(*prefix);
    check_header_len(n, file_len)?;
    Ok(n)
}

fn check_header_len(header_len: u64, file_len: u64) -> Result<(), SafetensorsError> {
    if header_len > MAX_HEADER_LEN {
        return Err(E::HeaderTooLarge { header_len });
    }
    // Cannot overflow: header_len is at most MAX_HEADER_LEN.
    if PREFIX_LEN + header_len > file_len {
        return Err(E::HeaderBeyondFile {
            header_len,
            file_len,
        });
    }
    Ok(())
}

/// Parses the N header bytes and validates everything, including that file_len == 8 + N + data_len.
pub(crate) fn parse_header(header_json: &[u8], file_len: u64) -> Result<Header, SafetensorsError> {
    // usize is at most 64 bits on every supported target.
    let header_len = header_json.len() as u64;
    check_header_len(header_len, file_len)?;
    let text = std::str::from_utf8(header_json).map_err(|_| E::InvalidUtf8)?;
    // Anything else (arrays, numbers, garbage) gets one clear error instead of
    // serde's "invalid type" wording. Only JSON whitespace may come first.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(E::NotAnObject);
    }
    let (mut tensors, metadata) = read_json(text)?;
    reject_duplicate_names(&tensors)?;
    // The name only orders zero-size tensors sharing an offset, so that the
    // result does not depend on the order of keys in the file.
    tensors.sort_unstable_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let covered = check_layout(&tensors)?;
    // Cannot underflow: check_header_len ensured 8 + N <= file_len.
    let buffer_len = file_len - PREFIX_LEN - header_len;
    if covered != buffer_len {
        return Err(E::BufferMismatch {
            buffer_len,
            covered,
        });
    }
    Ok(Header {
        header_len,
        tensors,
        metadata,
    })
}

/// Convenience over a whole file's bytes (or a prefix that holds at least 8+N bytes) with the true file length.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, SafetensorsError> {
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(if file_len < PREFIX_LEN {
            E::FileTooShort { file_len }
        } else {
            E::PrefixTooShort {
                given: bytes.len() as u64,
                needed: PREFIX_LEN,
            }
        });
    };
    let n = header_len(prefix, file_len)?;
    let needed = PREFIX_LEN + n;
    // `needed` fits in usize: n is at most MAX_HEADER_LEN.
    let json = bytes
        .get(PREFIX_LEN as usize..needed as usize)
        .ok_or(E::PrefixTooShort {
            given: bytes.len() as u64,
            needed,
        })?;
    parse_header(json, file_len)
}

/// Why [`read_header`] failed: reading the file, or what it read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadHeaderError<R> {
    #[error("{0}")]
    Read(R),
    #[error(transparent)]
    Invalid(#[from] SafetensorsError),
}

/// Reads and validates the header of a file of `file_len` bytes through `read_exact_at`,
/// which fills its buffer from the given file offset: the 8-byte length, then exactly the JSON
/// it announces (checked against `file_len` before anything is allocated for it). The JSON
/// buffer is wiped afterwards: for a stored file it is decrypted plaintext.
pub(crate) fn read_header<R>(
    file_len: u64,
    mut read_exact_at: impl FnMut(u64, &mut [u8]) -> Result<(), R>,
) -> Result<Header, ReadHeaderError<R>> {
    if file_len < PREFIX_LEN {
        return Err(E::FileTooShort { file_len }.into());
    }
    let mut prefix = [0u8; PREFIX_LEN as usize];
    read_exact_at(0, &mut prefix).map_err(ReadHeaderError::Read)?;
    // At most MAX_HEADER_LEN, so it fits in usize.
    let n = header_len(&prefix, file_len)?;
    let mut json = zeroize::Zeroizing::new(vec![0u8; n as usize]);
    read_exact_at(PREFIX_LEN, &mut json).map_err(ReadHeaderError::Read)?;
    Ok(parse_header(&json, file_len)?)
}

/// Where the JSON walk stopped. serde errors carry only text, so the visitor
/// records here what it knows, and `read_json` turns it into a precise error.
enum Stop {
    /// The visitor itself found the problem.
    Found(SafetensorsError),
    /// serde_json failed while reading this tensor's entry.
    InTensor(String),
    /// serde_json failed while reading `__metadata__`.
    InMetadata,
}

/// Records `err` and returns a serde error to unwind serde_json with.
fn found<Er: de::Error>(stop: &mut Option<Stop>, err: SafetensorsError) -> Er {
    let serde_err = Er::custom(&err);
    *stop = Some(Stop::Found(err));
    serde_err
}

type Entries = (Vec<TensorInfo>, BTreeMap<String, String>);

fn read_json(text: &str) -> Result<Entries, SafetensorsError> {
    let mut stop = None;
    let mut json = serde_json::Deserializer::from_str(text);
    let result = (&mut json)
        .deserialize_map(HeaderVisitor { stop: &mut stop })
        // Only whitespace may follow the object.
        .and_then(|entries| json.end().map(|()| entries));
    result.map_err(|e| {
        let data_error = e.classify() == serde_json::error::Category::Data;
        match stop {
            Some(Stop::Found(err)) => err,
            Some(Stop::InTensor(name)) if data_error => E::InvalidTensorEntry {
                name,
                reason: e.to_string(),
            },
            Some(Stop::InMetadata) if data_error => E::MetadataNotStrings(e.to_string()),
            _ => E::InvalidJson(e.to_string()),
        }
    })
}

/// A tensor entry as written. Like the reference, unknown fields are ignored.
#[derive(Deserialize)]
struct RawTensor<'a> {
    /// Borrowed from the header text unless it contains escapes.
    #[serde(borrow)]
    dtype: Cow<'a, str>,
    shape: Vec<u64>,
    /// Checked for exactly two elements by hand: as a tuple, serde_json would
    /// report a third element as a JSON syntax error.
    data_offsets: Vec<u64>,
}

struct HeaderVisitor<'s> {
    stop: &'s mut Option<Stop>,
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut tensors = Vec::new();
        let mut metadata = None;
        while let Some(name) = map.next_key::<String>()? {
            if name == METADATA_KEY {
                if metadata.is_some() {
                    return Err(found(self.stop, E::DuplicateKey(name)));
                }
                match map.next_value_seed(MetadataSeed {
                    stop: &mut *self.stop,
                }) {
                    Ok(m) => metadata = Some(m),
                    Err(e) => {
                        self.stop.get_or_insert(Stop::InMetadata);
                        return Err(e);
                    }
                }
                continue;
            }
            let raw: RawTensor = match map.next_value() {
                Ok(raw) => raw,
                Err(e) => {
                    *self.stop = Some(Stop::InTensor(name));
                    return Err(e);
                }
            };
            let Some(dtype) = Dtype::parse(&raw.dtype) else {
                let dtype = raw.dtype.into_owned();
                return Err(found(self.stop, E::UnknownDtype { name, dtype }));
            };
            let &[begin, end] = raw.data_offsets.as_slice() else {
                let reason = format!(
                    "data_offsets has {} elements instead of 2",
                    raw.data_offsets.len()
                );
                return Err(found(self.stop, E::InvalidTensorEntry { name, reason }));
            };
            tensors.push(TensorInfo {
                name,
                dtype,
                shape: raw.shape,
                begin,
                end,
            });
        }
        Ok((tensors, metadata.unwrap_or_default()))
    }
}

/// Reads `__metadata__`: null or an object of strings, rejecting duplicate keys.
struct MetadataSeed<'s> {
    stop: &'s mut Option<Stop>,
}

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for MetadataSeed<'_> {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null or an object of strings")
    }

    fn visit_none<Er: de::Error>(self) -> Result<Self::Value, Er> {
        Ok(BTreeMap::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            match out.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.remove_entry().0;
                    return Err(found(self.stop, E::DuplicateMetadataKey(key)));
                }
            }
        }
        Ok(out)
    }
}

fn reject_duplicate_names(tensors: &[TensorInfo]) -> Result<(), SafetensorsError> {
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(E::DuplicateKey(w[0].to_owned())),
        None => Ok(()),
    }
}

/// Checks tensors (sorted by offsets) tile the buffer from 0 with no gaps or
/// overlaps, each exactly as large as its shape and dtype imply, in the
/// reference's order of checks. Returns the number of bytes covered.
fn check_layout(tensors: &[TensorInfo]) -> Result<u64, SafetensorsError> {
    let mut expected = 0;
    for t in tensors {
        let name = || t.name.clone();
        if t.begin > t.end {
            return Err(E::BeginAfterEnd {
                name: name(),
                begin: t.begin,
                end: t.end,
            });
        }
        if t.begin > expected {
            return Err(E::Gap {
                name: name(),
                begin: t.begin,
                expected,
            });
        }
        if t.begin < expected {
            return Err(E::Overlap {
                name: name(),
                begin: t.begin,
                expected,
            });
        }
        let bits = t
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bits()))
            .ok_or_else(|| E::SizeOverflow {
                name: name(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            })?;
        if bits % 8 != 0 {
            return Err(E::NotByteAligned {
                name: name(),
                dtype: t.dtype,
                bits,
            });
        }
        if bits / 8 != t.len() {
            return Err(E::SizeMismatch {
                name: name(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                expected: bits / 8,
                actual: t.len(),
            });
        }
        expected = t.end;
    }
    Ok(expected)
}

#[cfg(test)]
mod tests;
