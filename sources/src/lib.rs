//! # tresor-sources
//!
//! What agents back up beyond plain files, and how a restored copy is proven good: model weights
//! parsed into tensors, SQLite and PostgreSQL captured consistently, vector indexes with golden
//! queries, hooks around it all, and the verifier that checks a restored tree against its snapshot.
//!
//! Layering, bottom up (dependencies point down):
//! 1. `report`, `spec`, `proc` (programs run with a time limit), `hooks`, `tar`, `model` (parsers
//!    of untrusted bytes, no vault I/O)
//! 2. `sqlite`, `postgres`, `vector` (each source's capture and its checker)
//! 3. `capture` (sources made ready before the walk), `verify` (dispatch to every checker),
//!    `files` (writing a restored tree below its root, never through a link)
//!
//! The vault is used only through its public sink API (`ChunkSink`).

pub mod capture;
pub mod files;
pub mod hooks;
pub mod model;
pub mod postgres;
pub mod proc;
pub mod report;
pub mod spec;
pub mod sqlite;
pub mod tar;
pub mod vector;
pub mod verify;
