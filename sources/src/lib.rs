//! # tresor-sources
//!
//! What agents back up beyond plain files, and how a restored copy is proven good:
//! model weights parsed into tensors ([`model`]), and the verifier that checks a restored tree
//! against its snapshot ([`verify`]).
//!
//! Layering: `model` parses untrusted file headers (pure, no I/O beyond a reader) -> `verify`
//! reads restored files. The vault data path is used only through its public sink API.

pub mod capture;
pub mod hooks;
pub mod model;
pub mod postgres;
pub mod spec;
pub mod sqlite;
pub mod tar;
pub mod vector;
pub mod verify;
