//! The read path: a read request on a handle becomes the cached, decrypted chunks it spans.
//! Chunks are decrypted at most once while cached ([`Core::chunk`]); a request inside one
//! chunk is answered from that chunk without a copy, one across chunks is assembled in a
//! pooled (locked, wiped) buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::buffers::Plain;
use super::error::{FsError, FsResult};
use super::versions::FileVersion;
use super::{Caller, Core};
use crate::audit::{Event, EventKind};
use crate::container::ContainerError;

/// The bytes of one read reply.
pub enum ReadData {
    /// A range inside one cached chunk.
    Chunk(Arc<Plain>, usize, usize),
    /// A range across chunks, or from a write session, copied together (wiped on drop).
    Owned(Plain),
    /// At or past the end of the file.
    Empty,
}

impl ReadData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadData::Chunk(chunk, from, to) => &chunk.as_slice()[*from..*to],
            ReadData::Owned(plain) => plain.as_slice(),
            ReadData::Empty => &[],
        }
    }
}

impl Core {
    /// Reads `size` bytes at `offset` through handle `fh`.
    pub fn read(&self, caller: Caller, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let handle = self.files.get(fh).ok_or(FsError::new(libc::EBADF))?;
        // A lock applies to handles already open, too.
        if handle.user.is_locked() {
            return Err(FsError::new(libc::EACCES));
        }
        if let Some(session) = &handle.write {
            return session
                .read(offset, size)
                .map(|d| ReadData::Owned(Plain::new(d)));
        }
        let file = handle.file.as_ref().ok_or(FsError::new(libc::EBADF))?;
        self.prefetch(&handle.ahead, file, offset, size);
        let data = self.read_range(file, offset, size).map_err(|e| {
            if matches!(e, ContainerError::ChunkAuthentication { .. }) {
                let _ = self.audit.record(
                    &Event::from_pid(EventKind::IntegrityFailure, caller.pid)
                        .uid(caller.uid)
                        .user(&handle.user.name)
                        .path(&handle.rel)
                        .detail(e.to_string()),
                );
            }
            log::error!("{}: read at {offset}: {e}", handle.rel);
            FsError::from(e)
        })?;
        let n = data.as_slice().len() as u64;
        let before = handle.read_bytes.fetch_add(n, Ordering::Relaxed);
        let half = file.reader.len() / 2;
        if before < half && before + n >= half {
            self.versions.mark_read_whole(file.key);
        }
        Ok(data)
    }

    /// Decrypted chunk `index` of `file`, from the cache or freshly decrypted into it. The
    /// ciphertext is read with `pread` (never mapped: a store writer truncating the file
    /// must cause an error, not SIGBUS).
    pub(super) fn chunk(
        &self,
        file: &FileVersion,
        index: u64,
    ) -> Result<Arc<Plain>, ContainerError> {
        thread_local! {
            /// Ciphertext of a scattered chunk on its way to being decrypted.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        self.cache.get_or_load((file.id, index), || {
            let (start, end) = file.reader.header().chunk_range(index);
            let len = (end - start) as usize;
            let mut plain = self.buffers.take(len, file.reader.chunk_size() as usize);
            let read = SCRATCH.with_borrow_mut(|scratch| {
                file.reader
                    .read_chunk_with(index, plain.as_mut_slice(), scratch)
            });
            if let Err(e) = read {
                if matches!(e, ContainerError::ChunkAuthentication { .. }) {
                    Core::count(&self.stats.integrity_failures);
                }
                return Err(e);
            }
            self.stats
                .bytes_decrypted
                .fetch_add(len as u64, Ordering::Relaxed);
            Ok(plain)
        })
    }

    /// `[offset, offset + size)` of `file`, clipped at its end.
    fn read_range(
        &self,
        file: &FileVersion,
        offset: u64,
        size: u32,
    ) -> Result<ReadData, ContainerError> {
        let len = file.reader.len();
        if offset >= len || size == 0 {
            return Ok(ReadData::Empty);
        }
        let end = len.min(offset + u64::from(size));
        let log2 = file.reader.header().chunk_log2;
        let (first, last) = (offset >> log2, (end - 1) >> log2);
        if first == last {
            let base = first << log2;
            let chunk = self.chunk(file, first)?;
            return Ok(ReadData::Chunk(
                chunk,
                (offset - base) as usize,
                (end - base) as usize,
            ));
        }
        // Sized in powers of two, so that each request size reuses the same few buffers.
        let total = (end - offset) as usize;
        let mut out = self.buffers.take(total, total.next_power_of_two());
        let mut at = 0;
        for index in first..=last {
            let chunk = self.chunk(file, index)?;
            let base = index << log2;
            let from = (offset.max(base) - base) as usize;
            let to = (end.min(base + chunk.as_slice().len() as u64) - base) as usize;
            out.as_mut_slice()[at..at + to - from].copy_from_slice(&chunk.as_slice()[from..to]);
            at += to - from;
        }
        Ok(ReadData::Owned(out))
    }

    /// Fills `buf` from `offset` of `file`; returns how many bytes there were.
    pub(super) fn read_into(
        &self,
        file: &FileVersion,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ContainerError> {
        let size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let data = self.read_range(file, offset, size)?;
        let bytes = data.as_slice();
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(bytes.len())
    }
}
