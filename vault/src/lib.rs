//! # tresor-vault
//!
//! The storage format and data path of Tresor: content-defined chunking, keyed BLAKE3 chunk ids,
//! per-chunk codecs, AES-256-GCM with per-pack keys, packs, index segments, snapshot manifests,
//! key slots, storage backends and `check`. No gRPC, no scheduling.
//!
//! Layering inside the crate, bottom up: `ids`, `crypto`, `codec`, `chunker` (pure functions) ->
//! `pack`, `object`, `index`, `snapshot`, `keys`, `config` (formats) -> `backend` (storage) ->
//! `vault` (an opened vault) -> `session` (what writers and GC agree on) -> `backup`, `restore`,
//! `check`, `gc` (operations).
//!
//! The byte layout is frozen in docs/FORMAT.md and pinned by golden vectors in
//! `tests/golden.rs`; changing either is a format change.

pub mod backend;
pub mod backup;
pub mod check;
pub mod check_snapshot;
pub mod chunker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod epochs;
mod error;
pub mod failpoint;
pub mod gc;
pub mod hidden;
pub mod ids;
pub mod index;
mod keyring;
pub mod keys;
pub mod layout;
pub mod localfile;
pub mod lock;
pub mod object;
pub mod pack;
mod probe;
pub mod restore;
mod reused;
pub mod session;
pub mod snapshot;
mod vault;

pub use error::{Error, Result};
pub use vault::{EpochReport, InitReport, Secret, Vault};
