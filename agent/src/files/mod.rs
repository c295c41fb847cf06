//! The files source: plain paths.

pub mod backup;
pub mod meta;
pub mod restore;
pub mod walk;
