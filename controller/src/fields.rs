//! Checks of policy fields shared by sources, vaults and drills; errors name the field.

use crate::error::{Error, Result};

/// A percentage such as "10%", between 0 and 100.
pub(crate) fn percent(field: &str, v: &str) -> Result<f64> {
    let p = v.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok());
    match p {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(Error::Config(format!("{field}: {v:?} is not a percentage between 0% and 100%"))),
    }
}

/// A name of 1-64 letters, digits, '-', '_' or '.', not starting with '.'.
pub(crate) fn name_ok(field: &str, v: &str) -> Result<()> {
    let good = !v.is_empty()
        && v.len() <= 64
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !v.starts_with('.');
    if good {
        Ok(())
    } else {
        Err(Error::Config(format!("{field}: {v:?} must be 1-64 letters, digits, '-', '_' or '.'")))
    }
}

/// Whether `id` has the shape of a snapshot id (64 hex digits); agents' results are checked with
/// it before an id becomes a catalog key.
pub(crate) fn snapshot_id_ok(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A duration as the TOML files write it (`90s`, `26h`, `7d`).
pub(crate) fn duration(field: &str, v: &str) -> Result<std::time::Duration> {
    tresor_proto::parse_duration(v).map_err(|e| Error::Config(format!("{field}: {e}")))
}
