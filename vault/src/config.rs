//! The `config` object: plain JSON, readable without a key, so a vault describes itself.

use serde::{Deserialize, Serialize};

use crate::ids::VaultId;

/// Magic value of the `format` field.
pub const FORMAT_NAME: &str = "tresor-vault";
/// The one format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Content-defined chunking parameters (FastCDC 2020, gear table seeded from the master key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Always "fastcdc-v2020".
    pub algorithm: ChunkerAlgorithm,
    /// Smallest chunk in bytes (except a stream's last).
    pub min_size: u32,
    /// Target average chunk size in bytes.
    pub avg_size: u32,
    /// Largest chunk in bytes.
    pub max_size: u32,
    /// FastCDC normalisation level (0..=3).
    pub normalization: u8,
}

/// The chunking algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkerAlgorithm {
    /// FastCDC as published in 2020 (fastcdc crate, `v2020`).
    #[serde(rename = "fastcdc-v2020")]
    FastCdc2020,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            algorithm: ChunkerAlgorithm::FastCdc2020,
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    /// Check the values against the chunker's limits; the config comes from storage and is untrusted.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020 as f;
        let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&self.min_size)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&self.avg_size)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker parameters out of range: min {} avg {} max {} normalization {}",
                self.min_size, self.avg_size, self.max_size, self.normalization
            ))
        }
    }
}

/// What the backend was found to guarantee when the vault was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backend kind: "local" or "s3".
    pub backend: String,
    /// A second create of the same name was refused (write-once is enforced by storage).
    pub create_once: bool,
    /// These credentials could delete an object.
    pub delete: bool,
    /// Why the storage could not confirm durability at `init` (a file system that refuses
    /// fsync); absent when it could. Added without a version bump: older readers skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability_unverified: Option<String>,
    /// What the storage keeps of replaced and deleted objects (S3 versioning, Object Lock);
    /// absent where it keeps nothing (a directory) and in vaults made before it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<crate::backend::StorageVersioning>,
    /// RFC 3339 time of the probe.
    pub probed_at: String,
}

/// The vault's `config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultConfig {
    /// Always "tresor-vault".
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random vault id.
    pub vault_id: VaultId,
    /// RFC 3339 creation time.
    pub created: String,
    /// Chunking parameters.
    pub chunker: ChunkerParams,
    /// Always "aes-256-gcm".
    pub cipher: String,
    /// Always "blake3-keyed".
    pub chunk_id: String,
    /// Packs are closed once they reach this many bytes.
    pub pack_target_size: u32,
    /// What the backend guarantees.
    pub capabilities: Capabilities,
    /// The Object Lock retention every object but the rewritten ones is written with
    /// (`init --object-lock`); absent: only the bucket's default retention, if any. Added
    /// without a version bump: older readers skip it (and write without retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::backend::Retention>,
    /// This location is a second site of the vault, made by `copy` (decision 0017): keys change
    /// at the first site only, and the host's cache keeps it apart from the first site, which
    /// has the same vault id. Added without a version bump: older readers skip it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub second_site: bool,
}

/// Longest Object Lock retention `init` takes: a typo of years would lock a compliance-mode
/// bucket's data (and its bill) for that long.
pub const MAX_RETENTION_SECS: u64 = 10 * 366 * 86_400;

/// A retention `init --object-lock` may set: at least one second, at most ten years.
pub fn check_retention(r: &crate::backend::Retention) -> Result<(), String> {
    if r.seconds == 0 || r.seconds > MAX_RETENTION_SECS {
        return Err(format!("an Object Lock retention of {} s is outside 1 s to 10 years", r.seconds));
    }
    Ok(())
}

/// Smallest and largest allowed pack target (16-64 MiB).
pub const PACK_TARGET_RANGE: std::ops::RangeInclusive<u32> = (16 << 20)..=(64 << 20);

impl VaultConfig {
    /// A new config with defaults and the given probe result.
    pub fn new(capabilities: Capabilities) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            vault_id: VaultId::random(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            chunker: ChunkerParams::default(),
            cipher: "aes-256-gcm".into(),
            chunk_id: "blake3-keyed".into(),
            pack_target_size: 16 << 20,
            capabilities,
            object_lock: None,
            second_site: false,
        }
    }

    /// Parse and validate stored bytes. Unknown fields are ignored (readers skip what they do not know).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let cfg: Self = serde_json::from_slice(bytes).map_err(|e| format!("config is not valid JSON: {e}"))?;
        if cfg.format != FORMAT_NAME {
            return Err(format!("config format is {:?}, not {FORMAT_NAME:?}", cfg.format));
        }
        if cfg.version != FORMAT_VERSION {
            return Err(format!(
                "vault format version {} is not supported by this build (it reads version {FORMAT_VERSION})",
                cfg.version
            ));
        }
        if cfg.cipher != "aes-256-gcm" || cfg.chunk_id != "blake3-keyed" {
            return Err(format!("unsupported cipher {:?} or chunk id {:?}", cfg.cipher, cfg.chunk_id));
        }
        if !PACK_TARGET_RANGE.contains(&cfg.pack_target_size) {
            return Err(format!("pack target size {} is outside 16-64 MiB", cfg.pack_target_size));
        }
        cfg.chunker.validate()?;
        Ok(cfg)
    }

    /// Serialise.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LockMode, Retention};

    #[test]
    fn a_retention_must_be_between_a_second_and_ten_years() {
        let r = |seconds| Retention { mode: LockMode::Compliance, seconds };
        assert!(check_retention(&r(1)).is_ok());
        assert!(check_retention(&r(MAX_RETENTION_SECS)).is_ok());
        for bad in [0, MAX_RETENTION_SECS + 1, u64::MAX] {
            let e = check_retention(&r(bad)).unwrap_err();
            assert!(e.contains("outside 1 s to 10 years"), "{e}");
        }
    }
}
