//! tensorvault: an encrypted store for model weights, mounted with FUSE for per-user access.
//!
//! Layers, lowest first (a module only imports the ones before it):
//! `crypto`, `safetensors`, `fsutil` → `container`, `keyring` → `store` → `audit`, `access`,
//! `fsck` → `fs`, `control` → `daemon` → `cli`.
//! See docs/ARCHITECTURE.md.

pub mod access;
pub mod audit;
pub mod cli;
pub mod container;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod fs;
pub mod fsck;
pub mod fsutil;
pub mod keyring;
mod memlock;
pub mod safetensors;
pub mod store;
