//! The wall clock of this process, as every time this crate stamps or compares is read.
//!
//! Tests shift it with `TRESOR_CLOCK_SKEW_SECS` (seconds, signed, read once), to run an agent or a
//! maintainer hours ahead of or behind the others, like a host whose clock is off. Like the
//! failpoints (decision 0004) it is in every build; unset, it is the system clock.

use std::sync::OnceLock;

/// The skew in seconds (0 unless the test variable is set).
pub fn skew_secs() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| std::env::var("TRESOR_CLOCK_SKEW_SECS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0))
}

/// Now, by this process's clock.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::seconds(skew_secs())
}
