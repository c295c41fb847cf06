//! The gRPC API between controller, agents and tresorctl, generated from `tresor.proto`.
//!
//! No chunk data crosses this API; messages carry commands and metadata only, so both sides cap
//! their size at [`MAX_MESSAGE_BYTES`].

pub mod retention;

/// Generated messages and services (`tresor.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("tresor.v1");
}

/// The protobuf runtime the generated code uses.
pub use prost;

/// The API definition, for tools that want to read it.
pub const PROTO: &str = include_str!("../tresor.proto");

/// The encoded `FileDescriptorSet` of `tresor.proto` (for reflection and API checks).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tresor_descriptor.bin"));

/// The largest message either side sends or accepts: 4 MiB. The biggest legitimate message is a
/// snapshot listing; a catalog scan of 10,000 snapshots is about 3 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The bytes a receipt signature covers: a fixed tag, then each field length-prefixed, so no two
/// receipts share an encoding.
pub fn receipt_signing_bytes(r: &pb::Receipt) -> Vec<u8> {
    // v2 binds the job too; a receipt without a job id is a v1 receipt, signed before it was
    // bound, and verifies as one (a v2 signature never verifies over v1 bytes, or back).
    let (tag, job): (&[u8], Option<&[u8]>) = if r.job_id.is_empty() {
        (b"tresor-receipt-v1", None)
    } else {
        (b"tresor-receipt-v2", Some(r.job_id.as_bytes()))
    };
    let mut out = tag.to_vec();
    let fields = [r.vault_id.as_bytes(), r.snapshot_id.as_bytes(), r.agent.as_bytes(), r.source.as_bytes()];
    for field in fields.into_iter().chain(job) {
        out.extend_from_slice(&(field.len() as u64).to_le_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&r.committed_unix_ms.to_le_bytes());
    out
}

/// Source kinds a policy may name as `KIND:SPEC` beside plain paths; the agent's
/// `tresor_sources::spec::Kind` is the authority and a test keeps the two equal.
pub const SOURCE_KINDS: &[&str] = &["model", "sqlite", "postgres", "faiss", "hnswlib", "chroma", "qdrant", "vectors"];

/// The kinds whose SPEC is a path (the others take a connection string or a URL).
const PATH_KINDS: &[&str] = &["model", "sqlite", "faiss", "hnswlib", "chroma", "vectors"];

/// Whether a policy's backup item is a plain path (else it is `KIND:SPEC`).
pub fn is_plain_path(item: &str) -> bool {
    item.starts_with('/')
}

/// Whether a policy's backup item is an absolute path, or `KIND:SPEC` of a known kind whose SPEC
/// is an absolute path for path kinds (a daemon has no working directory to resolve against).
pub fn is_backup_item(item: &str) -> bool {
    is_plain_path(item)
        || item.split_once(':').is_some_and(|(kind, rest)| {
            SOURCE_KINDS.contains(&kind) && !rest.is_empty() && (!PATH_KINDS.contains(&kind) || rest.starts_with('/'))
        })
}

/// A restore target (or restore root) made absolute and plain by text alone: `.` and empty
/// components dropped, `..` refused rather than resolved (`/tmp/..` is not a way to say `/`).
/// The controller checks a target with this before it queues a restore, and the agent again,
/// against its own restore roots.
///
/// # Errors
/// Names the path and what is wrong with it.
pub fn normalize_target(target: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let refused = |why: &str| Err(format!("restore target {}: {why}", target.display()));
    if !target.is_absolute() {
        return refused("give an absolute path");
    }
    if target.as_os_str().as_encoded_bytes().contains(&0) {
        return refused("the path holds a NUL byte");
    }
    let mut out = std::path::PathBuf::from("/");
    for c in target.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return refused("a path with `..` is refused"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod target_tests {
    use std::path::{Path, PathBuf};

    use super::normalize_target;

    #[test]
    fn targets_are_plain_absolute_paths_and_dot_dot_is_refused() {
        assert_eq!(normalize_target(Path::new("/srv//restore/./a/")).unwrap(), PathBuf::from("/srv/restore/a"));
        assert_eq!(normalize_target(Path::new("/")).unwrap(), PathBuf::from("/"));
        for bad in ["/tmp/..", "/tmp/../etc", "relative/dir", "", "/a/b/../../..", "/a\0b"] {
            assert!(normalize_target(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}

/// Parse a duration as written in Tresor's TOML files and flags: a number and a unit, `s`, `m`,
/// `h`, `d` or `w` (e.g. `90s`, `15m`, `26h`, `7d`).
///
/// # Errors
/// Names the text and the expected form.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration (expected e.g. 90s, 15m, 26h, 7d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?} has no valid unit (use s, m, h, d or w)")),
    };
    n.checked_mul(secs).map(std::time::Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("26h").unwrap().as_secs(), 26 * 3600);
        assert_eq!(parse_duration("2w").unwrap().as_secs(), 14 * 86_400);
        assert!(parse_duration("10").unwrap_err().contains("\"10\""));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5 years").is_err());
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_both_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor decodes");
        let services: Vec<&str> =
            fds.file.iter().flat_map(|f| f.service.iter()).filter_map(|s| s.name.as_deref()).collect();
        assert_eq!(services, ["AgentService", "AdminService"]);
    }

    #[test]
    fn receipt_encoding_separates_fields() {
        let a = super::pb::Receipt { vault_id: "ab".into(), snapshot_id: "c".into(), ..Default::default() };
        let b = super::pb::Receipt { vault_id: "a".into(), snapshot_id: "bc".into(), ..Default::default() };
        assert_ne!(super::receipt_signing_bytes(&a), super::receipt_signing_bytes(&b));
    }

    #[test]
    fn backup_items_are_absolute_paths_or_known_kinds() {
        assert!(super::is_backup_item("/srv/models"));
        assert!(super::is_backup_item("model:/srv/models"));
        assert!(super::is_backup_item("postgres:host=/run/postgresql port=5432"));
        assert!(super::is_backup_item("qdrant:http://q:6333/collections/docs"));
        assert!(!super::is_backup_item("model:srv/models"), "a daemon cannot resolve a relative path");
        assert!(
            !super::is_backup_item("mongo:/x") && !super::is_backup_item("sqlite:") && !super::is_backup_item("srv")
        );
    }
}
