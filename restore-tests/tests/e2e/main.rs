//! End-to-end tests against the real `tresor-agent` binary. They start processes, so nextest runs
//! them one at a time (see .config/nextest.toml).

mod bad_input;
mod cluster;
mod control;
mod copy;
mod corruption;
mod crash;
mod disaster;
mod drills;
mod durability;
mod gc;
mod gc_kills;
mod golden_vault;
mod keys;
mod memory;
mod object_lock;
mod reports;
mod restore_safety;
mod roundtrip;
mod s3;
mod sources;
