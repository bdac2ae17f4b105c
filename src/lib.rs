//! tensorvault: an encrypted store for model weights, mounted with FUSE for per-user access.
//!
//! Layers, lowest first (a module only imports the ones before it):
//! `crypto`, `safetensors`, `fsutil` → `container`, `keyring` → `store` → `cli`.
//! See docs/ARCHITECTURE.md.

pub mod cli;
pub mod container;
pub mod crypto;
pub mod fsutil;
pub mod keyring;
pub mod safetensors;
pub mod store;
