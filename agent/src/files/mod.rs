//! The files source: plain paths.

pub mod meta;
pub mod restore;
pub mod walk;
