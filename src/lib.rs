//! tensorvault: an encrypted store for model weights, mounted with FUSE for per-user access.
//! Layers (lower never imports higher): crypto, safetensors → container, keyring → store.

pub mod container;
pub mod crypto;
pub mod keyring;
