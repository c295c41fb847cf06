//! The gRPC API between controller, agents and tresorctl. The control-plane issue adds the tonic
//! code generated from `tresor.proto`; until then this crate only ships the file.

/// The API definition, for tools that want to read it.
pub const PROTO: &str = include_str!("../tresor.proto");
