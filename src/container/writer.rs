//! Writing containers: in order (`Writer`, for `put` and re-encryption) or in any order
//! (`Draft`, for writes through the mount).

use super::*;

/// The header (with a fresh file id and a zero length, filled in when the container is
/// finished) and the encoded slot section (key slots and ownership record) of a new
/// container.
fn new_header(
    data_key: &SecretKey,
    chunk_log2: u8,
    recipients: &[(String, PublicKey)],
    ownership: &Ownership,
) -> Result<(FixedHeader, Vec<u8>)> {
    if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
        return Err(ContainerError::ChunkSize(chunk_log2));
    }
    let file_id: [u8; FILE_ID_LEN] = crypto::random_array()?;
    let slots = recipients
        .iter()
        .map(|(label, pk)| KeySlot::seal(&file_id, label, pk, data_key))
        .collect::<Result<Vec<_>>>()?;
    let encoded = encode_slot_section(&slots, ownership)?;
    let header = FixedHeader {
        version: VERSION,
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
    /// `recipients` are (label, public key) pairs, one key slot each; `ownership` is the
    /// record the slot section ends with.
    pub fn new(
        mut out: W,
        data_key: &SecretKey,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
        ownership: &Ownership,
    ) -> Result<Self> {
        let (header, encoded) = new_header(data_key, chunk_log2, recipients, ownership)?;
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
        let mac = self.keys.header_mac(&[&self.header.maced(), &self.table]);
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

/// A sealed chunk's nonce and tag.
type NonceTag = ([u8; NONCE_LEN], [u8; TAG_LEN]);

impl Draft {
    /// Writes the header placeholder and the slot section (key slots for `recipients`, then
    /// `ownership`) into `file` (empty).
    pub(crate) fn create(
        file: std::fs::File,
        data_key: &SecretKey,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
        ownership: &Ownership,
    ) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let (header, encoded) = new_header(data_key, chunk_log2, recipients, ownership)?;
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

    /// Seals `plaintext`, a run of whole chunks from chunk `first` on (none of them the last),
    /// on up to `threads` threads side by side, and writes the run's ciphertext with one
    /// `pwrite`: a large sequential write is sealed on every core.
    pub(crate) fn seal_run(
        &mut self,
        first: u64,
        plaintext: &[u8],
        threads: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let cs = self.chunk_size() as usize;
        if !plaintext.len().is_multiple_of(cs) {
            return Err(ContainerError::ChunkTooLong {
                index: first,
                len: plaintext.len(),
                chunk_size: self.chunk_size(),
            });
        }
        scratch.clear();
        scratch.extend_from_slice(plaintext);
        let count = plaintext.len() / cs;
        let per_thread = count.div_ceil(threads.max(1)).max(1);
        let keys = &self.keys;
        let sealed: Vec<Result<Vec<NonceTag>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = scratch
                .chunks_mut(per_thread * cs)
                .enumerate()
                .map(|(t, part)| {
                    scope.spawn(move || {
                        part.chunks_mut(cs)
                            .enumerate()
                            .map(|(i, chunk)| {
                                let index = first + (t * per_thread + i) as u64;
                                Ok(keys.seal_chunk(index, false, chunk)?)
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(ContainerError::Io(std::io::Error::other(
                            "a sealing thread panicked",
                        )))
                    })
                })
                .collect()
        });
        let mut entries = Vec::with_capacity(count);
        for part in sealed {
            entries.extend(part?);
        }
        self.file.write_all_at(
            scratch,
            self.data_offset + (first << self.header.chunk_log2),
        )?;
        for (i, (nonce, tag)) in entries.into_iter().enumerate() {
            self.table.insert(
                first + i as u64,
                DraftEntry {
                    nonce,
                    tag,
                    len: cs as u32,
                    last: false,
                },
            );
        }
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
        let mac = self.keys.header_mac(&[&self.header.maced(), &table]);
        let table_offset = self.data_offset + plaintext_len;
        self.file.write_all_at(&table, table_offset)?;
        let mac_offset = table_offset + table.len() as u64;
        self.file.write_all_at(&mac, mac_offset)?;
        self.file.set_len(mac_offset + MAC_LEN as u64)?;
        self.file.write_all_at(&encoded, 0)?;
        Ok(self.file)
    }
}
