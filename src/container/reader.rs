//! Reading a container: structural checks without a key (`Container`), then authenticated
//! random access under the data key (`Reader`).

use super::*;

/// The largest chunk table the CLI reads into memory (a store writer can make a sparse file
/// whose header claims billions of chunks). The mount passes its own, smaller bound.
pub(crate) const MAX_TABLE_LEN: u64 = 1 << 30;

/// A structurally checked container whose contents are not yet authenticated. Opening it
/// needs the data key, obtained from one of its key slots. Only the fixed header and the key
/// slot section (slots and ownership record) have been read.
pub struct Container<B> {
    source: B,
    header: FixedHeader,
    layout: Layout,
    slots: Vec<KeySlot>,
    /// The record of a version 2 file, or the default of a version 1 file.
    ownership: Ownership,
}

/// The fixed header of the container in `source`, and its ownership (the record, or a
/// version 1 file's default): what `stat` shows, read without the whole-file checks of
/// [`Container::parse`] (two reads, one of them at most [`MAX_SLOTS_LEN`] bytes).
pub fn read_ownership<S: Source + ?Sized>(source: &S) -> Result<(FixedHeader, Ownership)> {
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    source.read_exact_at(&mut fixed, 0)?;
    let header = FixedHeader::decode(&fixed)?;
    let (_, ownership) = read_slot_section(source, &header)?;
    Ok((header, ownership))
}

/// Reads and decodes the slot section `header` announces; a version 1 file gets its default
/// ownership.
fn read_slot_section<S: Source + ?Sized>(
    source: &S,
    header: &FixedHeader,
) -> Result<(Vec<KeySlot>, Ownership)> {
    // slots_len is at most MAX_SLOTS_LEN (checked by `decode`).
    let mut encoded = vec![0u8; header.slots_len as usize];
    source.read_exact_at(&mut encoded, FIXED_HEADER_LEN as u64)?;
    let (slots, recorded) = decode_slot_section(&encoded, header.version)?;
    let ownership =
        recorded.unwrap_or_else(|| Ownership::legacy_file(slots.first().map(|s| s.label.as_str())));
    Ok((slots, ownership))
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
        let (slots, ownership) = read_slot_section(&source, &header)?;
        Ok(Container {
            source,
            header,
            layout,
            slots,
            ownership,
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

    /// Owner, group and mode: the record of a version 2 file, the default of a version 1
    /// file ([`Ownership::legacy_file`]). Not authenticated (like the key slots).
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
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
        keys.verify_header_mac(&[&self.header.maced(), &table], &mac)
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
            ownership: self.ownership,
            keys,
            table,
            mac,
        })
    }

    /// Writes this container with `slots` replacing its key slots (grant, revoke), keeping
    /// its ownership; the data, chunk table and MAC are copied unchanged (no re-encryption).
    /// The copy is version 2: a version 1 file keeps its default ownership as a record.
    pub fn write_with_slots<W: Write>(&self, slots: &[KeySlot], out: &mut W) -> Result<()> {
        self.write_with(slots, &self.ownership, out)
    }

    /// Writes this container with `ownership` replacing its record (chown, chmod), keeping
    /// its key slots; like [`Self::write_with_slots`], no key is needed.
    pub fn write_with_ownership<W: Write>(&self, ownership: &Ownership, out: &mut W) -> Result<()> {
        self.write_with(&self.slots, ownership, out)
    }

    fn write_with<W: Write>(
        &self,
        slots: &[KeySlot],
        ownership: &Ownership,
        out: &mut W,
    ) -> Result<()> {
        let encoded = encode_slot_section(slots, ownership)?;
        let mut header = self.header;
        header.version = VERSION;
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
    ownership: Ownership,
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

    /// Owner, group and mode, as [`Container::ownership`] read them (not authenticated).
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
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
