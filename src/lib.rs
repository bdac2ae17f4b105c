//! tensorvault: an encrypted store for model weights, mounted with FUSE for per-user access.
//!
//! Layers, lowest first (a module only imports the ones before it):
//! `crypto`, `safetensors`, `fsutil`, `memlock`, `sync`, `system` → `container`, `keyring` → `store` →
//! `audit`, `access`, `fsck` → `fs` (the filesystem core), `control` → `fuse` (its `fuser`
//! adapter) → `daemon` → `cli`.
//! See docs/ARCHITECTURE.md.

pub(crate) mod access;
pub mod audit;
pub mod cli;
pub mod container;
pub mod control;
pub mod crypto;
pub(crate) mod daemon;
pub(crate) mod fs;
pub(crate) mod fsck;
pub(crate) mod fsutil;
pub(crate) mod fuse;
pub mod keyring;
mod memlock;
pub mod ramfile;
pub mod safetensors;
pub mod store;
pub(crate) mod sync;
pub(crate) mod system;
