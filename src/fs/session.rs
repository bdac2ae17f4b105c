//! A write session: the next version of one file, built while it is open for writing.
//!
//! A session builds the file's next version as a store draft beside the target. Chunks
//! are sealed into the draft as soon as they are complete, so only partly written chunks are
//! held in memory (at most `MAX_DIRTY_BYTES`); rewriting a sealed chunk re-seals it with a
//! fresh nonce. A commit (on close, fsync or the last release) seals what is left, writes the
//! chunk table, MAC and header last, and renames the draft over the target: readers see the
//! old version or the new one, never a mix. Every version gets a new data key.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::limits::{Charge, Limit, LimitError};
use super::versions::{FileVersion, VersionKey};
use crate::container::{self, Ownership};
use crate::crypto::PublicKey;
use crate::store::{Store, StoreDraft, StoreError};

/// Bound on plaintext of partly written chunks per session: a 10 GB save does not need
/// 10 GB of memory.
const MAX_DIRTY_BYTES: u64 = 16 << 20;

/// Threads that seal one large write side by side (a 1 MiB request is 16 chunks of 64 KiB):
/// one per core, at most 8.
static SEAL_THREADS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(8)));
/// Memory the draft's chunk table and the committed version's table take per chunk, charged
/// as the file grows (a write at a 1 TB offset must not allocate gigabytes unaccounted).
const TABLE_COST_PER_CHUNK: u64 = 96;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Container(#[from] container::ContainerError),
    #[error("file is too large")]
    TooLarge,
    /// A thread panicked while changing the session: what it holds may be half-written, so
    /// it is never committed; its handles fail and the previous version stays.
    #[error("write session broken by an internal error; the file keeps its previous version")]
    Poisoned,
    #[error("no draft to seal into")]
    NoDraft,
}

pub struct WriteSession {
    /// The largest size the file may reach: one whose chunk table a reader of the mount can
    /// hold. Beyond it writes and truncations fail with `EFBIG`, before anything is sealed.
    max_size: u64,
    recipients: Vec<(String, PublicKey)>,
    /// The owner, group and mode every version this session commits carries.
    ownership: Ownership,
    chunk_log2: u8,
    /// The committed version this session started from (None: starts empty).
    base: Option<Arc<FileVersion>>,
    /// Bytes of `base` still part of the file: truncations lower it, so that growing the
    /// file again exposes zeros, not old data.
    base_valid: u64,
    size: u64,
    draft: Option<StoreDraft>,
    /// Partly written chunks, each a full chunk-size buffer (zeros past the data).
    dirty: BTreeMap<u64, Zeroizing<Vec<u8>>>,
    scratch: Zeroizing<Vec<u8>>,
    modified: bool,
    /// The writer's charge for this session's memory: `dirty_budget` plus a chunk for the
    /// final one, plus the chunk table at the current size.
    memory: Charge,
    dirty_budget: u64,
}

/// Reserves the memory of a new session of `uid` on a file of `size` bytes: its chunk table,
/// and room for 16 MiB of dirty chunks or, when the uid's share is short, for two (writes
/// then seal sooner). `EMFILE`/`ENFILE` when not even that is left.
pub fn reserve(
    limit: &Arc<Limit>,
    uid: u32,
    chunk_log2: u8,
    size: u64,
) -> Result<(Charge, u64), LimitError> {
    let cs = 1u64 << chunk_log2;
    let table = container::chunk_count(size, chunk_log2).saturating_mul(TABLE_COST_PER_CHUNK);
    match limit.charge(uid, MAX_DIRTY_BYTES + cs + table) {
        Ok(c) => Ok((c, MAX_DIRTY_BYTES)),
        Err(_) => limit.charge(uid, 3 * cs + table).map(|c| (c, 2 * cs)),
    }
}

impl WriteSession {
    pub fn new(
        max_size: u64,
        recipients: Vec<(String, PublicKey)>,
        ownership: Ownership,
        chunk_log2: u8,
        base: Option<Arc<FileVersion>>,
        (memory, dirty_budget): (Charge, u64),
    ) -> Self {
        let size = base.as_ref().map_or(0, |b| b.reader.len());
        let base_is_none = base.is_none();
        WriteSession {
            memory,
            dirty_budget,
            max_size,
            recipients,
            ownership,
            chunk_log2,
            base_valid: size,
            size,
            base,
            draft: None,
            dirty: BTreeMap::new(),
            scratch: Zeroizing::new(Vec::new()),
            // A session without a base (new file, O_TRUNC) replaces whatever was there.
            modified: base_is_none,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The owner, group and mode its versions are written with.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The users this session's versions are encrypted to.
    pub fn recipient_names(&self) -> Vec<String> {
        self.recipients.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Charges the chunk table of a file of `size` bytes before the session grows to it:
    /// `EFBIG` past the writer's bound.
    fn grow_to(&mut self, size: u64) -> Result<(), WriteError> {
        if size <= self.size {
            return Ok(());
        }
        let table =
            container::chunk_count(size, self.chunk_log2).saturating_mul(TABLE_COST_PER_CHUNK);
        let want = self.dirty_budget + self.chunk_size() + table;
        if want > self.memory.amount() {
            self.memory.resize(want).map_err(|_| WriteError::TooLarge)?;
        }
        Ok(())
    }

    /// The committed version this session builds on (the last one it committed, or the one
    /// it started from).
    pub fn base_key(&self) -> Option<VersionKey> {
        self.base.as_ref().map(|b| b.key)
    }

    fn chunk_size(&self) -> u64 {
        1 << self.chunk_log2
    }

    /// Plaintext length of chunk `index` at the current size.
    fn chunk_len(&self, index: u64) -> usize {
        let start = index << self.chunk_log2;
        self.size.saturating_sub(start).min(self.chunk_size()) as usize
    }

    fn ensure_draft(&mut self, store: &Store, rel: &str) -> Result<(), WriteError> {
        if self.draft.is_none() {
            self.draft =
                Some(store.start_draft(rel, self.chunk_log2, &self.recipients, &self.ownership)?);
        }
        Ok(())
    }

    /// The current plaintext of chunk `index` as a full chunk-size buffer: from the dirty
    /// set, the draft, the base version, or zeros.
    fn load(&self, index: u64) -> Result<Zeroizing<Vec<u8>>, WriteError> {
        let cs = self.chunk_size() as usize;
        if let Some(buf) = self.dirty.get(&index) {
            return Ok(buf.clone());
        }
        let mut buf = Zeroizing::new(vec![0u8; cs]);
        if let Some(draft) = &self.draft {
            if draft.sealed(index).is_some() {
                draft.open(index, &mut buf)?;
                return Ok(buf);
            }
        }
        let start = index << self.chunk_log2;
        if let Some(base) = &self.base {
            let valid = self.base_valid.min(base.reader.len());
            if start < valid {
                let n = (valid - start).min(cs as u64) as usize;
                base.reader.read_at(start, &mut buf[..n])?;
            }
        }
        Ok(buf)
    }

    fn seal(&mut self, index: u64, last: bool) -> Result<(), WriteError> {
        let len = self.chunk_len(index);
        let buf = match self.dirty.remove(&index) {
            Some(b) => b,
            None => self.load(index)?,
        };
        let draft = self.draft.as_mut().ok_or(WriteError::NoDraft)?;
        draft.seal(index, &buf[..len], last, &mut self.scratch)?;
        Ok(())
    }

    pub fn write(
        &mut self,
        store: &Store,
        rel: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), WriteError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= self.max_size.max(self.size))
            .ok_or(WriteError::TooLarge)?;
        self.grow_to(end)?;
        self.ensure_draft(store, rel)?;
        self.modified = true;
        if end > self.size {
            self.size = end;
        }
        let cs = self.chunk_size();
        let mut pos = offset;
        while pos < end {
            let index = pos >> self.chunk_log2;
            let chunk_start = index << self.chunk_log2;
            let chunk_end = chunk_start + cs;
            let upto = end.min(chunk_end);
            // Whole chunks in one request (sequential writers with large writes) are sealed
            // straight from the request: no chunk buffer to fill, copy and wipe; a run of
            // several is sealed on every core.
            if pos == chunk_start && upto == chunk_end {
                let run = (end - pos) / cs;
                let run_end = pos + run * cs;
                for i in index..index + run {
                    self.dirty.remove(&i);
                }
                let piece = &data[(pos - offset) as usize..(run_end - offset) as usize];
                let draft = self.draft.as_mut().ok_or(WriteError::NoDraft)?;
                if run > 1 {
                    draft.seal_run(index, piece, *SEAL_THREADS, &mut self.scratch)?;
                } else {
                    draft.seal(index, piece, false, &mut self.scratch)?;
                }
                pos = run_end;
                continue;
            }
            if !self.dirty.contains_key(&index) {
                let buf = self.load(index)?;
                self.dirty.insert(index, buf);
            }
            if let Some(buf) = self.dirty.get_mut(&index) {
                let from = (pos - chunk_start) as usize;
                let to = (upto - chunk_start) as usize;
                buf[from..to]
                    .copy_from_slice(&data[(pos - offset) as usize..(upto - offset) as usize]);
            }
            // A write reaching a chunk's end completes it (sequential writers): seal it now.
            // If it turns out to be the final chunk, commit re-seals it with the final flag.
            if upto == chunk_end {
                self.seal(index, false)?;
            }
            pos = upto;
        }
        self.bound_dirty()
    }

    /// Seals the oldest complete dirty chunks once the dirty set exceeds its bound.
    fn bound_dirty(&mut self) -> Result<(), WriteError> {
        let cs = self.chunk_size();
        while self.dirty.len() as u64 * cs > self.dirty_budget {
            let final_index = self.size.saturating_sub(1) >> self.chunk_log2;
            let Some(&index) = self.dirty.keys().find(|&&i| i != final_index) else {
                break;
            };
            self.seal(index, false)?;
        }
        Ok(())
    }

    pub fn truncate(&mut self, store: &Store, rel: &str, new_size: u64) -> Result<(), WriteError> {
        if new_size > self.max_size.max(self.size) {
            return Err(WriteError::TooLarge);
        }
        self.grow_to(new_size)?;
        self.ensure_draft(store, rel)?;
        self.modified = true;
        if new_size < self.size {
            self.base_valid = self.base_valid.min(new_size);
            let keep = container::chunk_count(new_size, self.chunk_log2);
            self.dirty.retain(|&i, _| i < keep);
            if new_size > 0 {
                // Zero the tail of the new final chunk so a later extension reads zeros.
                let index = (new_size - 1) >> self.chunk_log2;
                let mut buf = self.load(index)?;
                let from = (new_size - (index << self.chunk_log2)) as usize;
                buf[from..].iter_mut().for_each(|b| *b = 0);
                self.dirty.insert(index, buf);
            }
            if let Some(draft) = &mut self.draft {
                draft.forget_from(keep);
            }
        }
        self.size = new_size;
        Ok(())
    }

    /// Reads the session's current content (for handles open read-write).
    pub fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, WriteError> {
        let end = self.size.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos >> self.chunk_log2;
            let chunk_start = index << self.chunk_log2;
            let upto = end.min(chunk_start + self.chunk_size());
            let buf = self.load(index)?;
            out.extend_from_slice(
                &buf[(pos - chunk_start) as usize..(upto - chunk_start) as usize],
            );
            pos = upto;
        }
        Ok(out)
    }

    /// Makes the session's content the file's committed version (atomically, at `rel`).
    /// Returns the new version's key, or None if nothing was committed.
    pub fn commit(
        &mut self,
        store: &Store,
        rel: &str,
        next_id: u64,
    ) -> Result<Option<VersionKey>, WriteError> {
        if !self.modified {
            return Ok(None);
        }
        self.ensure_draft(store, rel)?;
        let count = container::chunk_count(self.size, self.chunk_log2);
        for index in 0..count {
            let last = index + 1 == count;
            let want = (self.chunk_len(index), last);
            let ready = !self.dirty.contains_key(&index)
                && self.draft.as_ref().and_then(|d| d.sealed(index)) == Some(want);
            if !ready {
                self.seal(index, last)?;
            }
        }
        self.dirty.clear();
        let Some(draft) = self.draft.take() else {
            return Ok(None);
        };
        // A session without a base makes a new file: it never replaces one that another
        // caller put there after this one's create was authorized.
        let reader = draft.commit(store, rel, self.size, self.base.is_none())?;
        self.modified = false;
        // Later writes in this session build on what was just committed.
        let version = FileVersion::new(next_id, reader);
        let key = version.key;
        self.base = Some(Arc::new(version));
        self.base_valid = self.size;
        Ok(Some(key))
    }

    /// Drops the draft (its temporary file is removed): the committed version stays.
    pub fn discard(&mut self) {
        // Dropping the draft's temporary file removes it.
        self.draft = None;
        self.dirty.clear();
        self.modified = false;
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        self.discard();
    }
}
