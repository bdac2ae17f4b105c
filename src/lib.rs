//! tensorvault: an encrypted store for model weights, mounted with FUSE for per-user access.
//!
//! Layers, lowest first (a module only imports the ones before it):
//! `crypto`, `safetensors`, `fsutil` → `container`, `keyring` → `store` → `audit`, `access`,
//! `fsck` → `fs`, `control` → `daemon` → `cli`.
//! See docs/ARCHITECTURE.md.

pub(crate) mod access;
pub mod audit;
pub mod cli;
pub mod container;
pub mod control;
pub mod crypto;
pub(crate) mod daemon;
// Being rewritten by issue 13's filesystem-core work, which owns its dead code: drop this
// when the compiler says the expectation is unfulfilled.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "ChunkCache::remove_file is used only by tests")
)]
pub(crate) mod fs;
pub(crate) mod fsck;
pub(crate) mod fsutil;
pub mod keyring;
mod memlock;
pub mod safetensors;
pub mod store;
