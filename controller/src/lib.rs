//! # tresor-controller
//!
//! The control plane: its own CA and agent enrollment, the job table with leases, the
//! scheduler, the sled catalog, policies, receipts and status. It holds no vault keys and touches
//! no backup data: every operation on a vault is a job an agent runs.
//!
//! Layers, bottom up: `ids`, `fsutil`, `error`, `fields`, `schedule` -> `config`, `drill_plan` -> `policy`, `pki`, `state`, `job` -> `catalog`
//! -> `jobs` -> `core` -> `scheduler`, `status`, `metrics` -> `grpc` -> `server`.

pub mod alerts;
pub mod audit_log;
pub mod auditing;
pub mod catalog;
pub mod config;
pub mod copies;
pub mod core;
pub mod drill_plan;
pub mod drills;
pub mod error;
pub mod fields;
pub mod fsutil;
pub mod grpc;
pub mod ids;
pub mod job;
pub mod jobs;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod refusals;
pub mod results;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod status;
pub mod web;

pub use error::{Error, Result};
