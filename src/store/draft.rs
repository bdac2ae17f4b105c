//! The next version of a stored file, being built: a draft container in a temporary file
//! beside the target, and its data key, which lives only here (fresh for every version,
//! wiped when the draft is committed or dropped). Dropping an uncommitted draft removes its
//! temporary file; committing replaces the target atomically.

use super::{container_err, container_rel, Blob, Result, Stage, Store, FILE_MODE};
use crate::container::{self, Draft, Ownership, Reader};
use crate::crypto::{PublicKey, SecretKey};

pub struct StoreDraft {
    stage: Box<dyn Stage>,
    draft: Draft,
    key: SecretKey,
}

impl Store {
    /// Starts a new version of `rel`, encrypted to `recipients` in chunks of `2^chunk_log2`
    /// bytes, under a data key generated now, carrying `ownership` in its slot section.
    pub(crate) fn start_draft(
        &self,
        rel: &str,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
        ownership: &Ownership,
    ) -> Result<StoreDraft> {
        let target = container_rel(rel)?;
        let path = self.backend.display_path(&target);
        let key = SecretKey::generate().map_err(|e| container_err(&path)(e.into()))?;
        let (stage, file) = self.backend.stage(&target, FILE_MODE)?;
        let draft = Draft::create(file, &key, chunk_log2, recipients, ownership)
            .map_err(container_err(&path))?;
        Ok(StoreDraft { stage, draft, key })
    }
}

impl StoreDraft {
    /// Seals chunk `index` (replacing an earlier seal of it with a fresh nonce).
    pub(crate) fn seal(
        &mut self,
        index: u64,
        plain: &[u8],
        last: bool,
        scratch: &mut Vec<u8>,
    ) -> container::Result<()> {
        self.draft.seal(index, plain, last, scratch)
    }

    /// Seals a run of whole chunks from `first` on, on up to `threads` threads.
    pub(crate) fn seal_run(
        &mut self,
        first: u64,
        plain: &[u8],
        threads: usize,
        scratch: &mut Vec<u8>,
    ) -> container::Result<()> {
        self.draft.seal_run(first, plain, threads, scratch)
    }

    /// (length, final flag) of chunk `index` if it is sealed.
    pub(crate) fn sealed(&self, index: u64) -> Option<(usize, bool)> {
        self.draft.sealed(index)
    }

    /// Decrypts sealed chunk `index` into `out`.
    pub(crate) fn open(&self, index: u64, out: &mut [u8]) -> container::Result<usize> {
        self.draft.open(index, out)
    }

    /// Forgets the chunks from `count` on (after a truncation).
    pub(crate) fn forget_from(&mut self, count: u64) {
        self.draft.forget_from(count)
    }

    /// Completes the draft as a file of `plaintext_len` bytes and atomically puts it in
    /// place at `rel` (where the file is now: it may have been renamed since the draft
    /// started). Returns the committed version, read back from the file just written and
    /// authenticated under the draft's key. On failure `rel` keeps its old version.
    /// With `new`, the file must not exist yet (the first version of a file being
    /// created): `EEXIST` if another one was put there meanwhile, which is not replaced.
    pub(crate) fn commit(
        self,
        store: &Store,
        rel: &str,
        plaintext_len: u64,
        new: bool,
    ) -> Result<Reader<Blob>> {
        let target = container_rel(rel)?;
        let path = store.backend.display_path(&target);
        let file = self
            .draft
            .finish(plaintext_len)
            .map_err(container_err(&path))?;
        let blob = self.stage.commit(file, &target, new)?;
        container::Container::parse(blob)
            .and_then(|c| c.open(&self.key))
            .map_err(container_err(&path))
    }
}
