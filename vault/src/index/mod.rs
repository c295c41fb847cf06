//! The index: segments stored in the vault and the agent's local lookup cache.

pub mod cache;
pub mod segment;

pub use cache::{CacheError, LocalIndex};
pub use segment::{IndexEntry, MAX_SEGMENT_ENTRIES, PackRef, Segment};
