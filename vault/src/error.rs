//! The crate's one public error. Module errors convert into it exactly once, here.

use crate::backend::BackendError;
use crate::index::CacheError;
use crate::keys::KeyError;
use crate::object::ObjectError;
use crate::pack::PackError;

/// What went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vault location does not exist.
    #[error("vault location {0} does not exist")]
    NoSuchLocation(String),
    /// The location exists but holds no vault.
    #[error("{0} is not a Tresor vault (it has no config object); run `tresor-agent init` to make one")]
    NotAVault(String),
    /// `init` on an existing vault.
    #[error("{0} already holds a Tresor vault; refusing to initialise it again")]
    AlreadyInitialized(String),
    /// The index changed (a garbage collection swept) between loading it and starting a backup
    /// session; load it again and start again.
    #[error("the vault's index changed while the backup started (a garbage collection ran); start again")]
    IndexChanged,
    /// No key slot accepts the password or key file.
    #[error("wrong password or key file: no key slot of this vault accepts it")]
    WrongPassword,
    /// Other key-slot trouble.
    #[error(transparent)]
    Key(KeyError),
    /// Storage failed.
    #[error("storage: {0}")]
    Backend(#[from] BackendError),
    /// Stored bytes are damaged or were altered.
    #[error("integrity: {what}: {detail}")]
    Integrity {
        /// Object or chunk.
        what: String,
        /// Why.
        detail: String,
    },
    /// Verify-before-upload caught a fault; nothing was committed.
    #[error(transparent)]
    VerifyAfterEncrypt(PackError),
    /// A snapshot id or prefix did not match.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// The local index cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Local file I/O (sources, restore targets).
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid argument or configuration.
    #[error("{0}")]
    Invalid(String),
    /// Declined for now because of what another process is doing (a GC collecting what this
    /// needs); nothing was changed, and a later run goes ahead.
    #[error("{0}")]
    Refused(String),
    /// Data sealed under a key epoch the opening slot does not reach.
    #[error(transparent)]
    KeyEpoch(#[from] crate::crypto::EpochMissing),
    /// The opening slot does not reach the vault's newest key epoch, so it may not write.
    #[error(
        "this key slot cannot write to the vault: {0}. New data is sealed under the newest key epoch only; a holder of a current slot can give you one (`tresor-agent key add`)"
    )]
    StaleEpoch(String),
    /// GC's snapshot listing lacks snapshots its maintainer expects (receipted ones, or ones this
    /// host recorded): a short or failed listing. Nothing was deleted.
    #[error(
        "the snapshot listing lacks {} snapshot(s) the maintainer expects (first: {}); a short or failed listing, so GC deletes nothing",
        .0.len(),
        .0.first().map(String::as_str).unwrap_or("")
    )]
    SnapshotsMissing(Vec<String>),
    /// A key epoch began after this handle opened the vault.
    #[error(
        "key epoch {0} began after this vault was opened (a slot was removed or the master key rotated); open the vault again to write under it"
    )]
    EpochChanged(u32),
}

impl Error {
    /// Wrap an I/O error with its path.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io { path: path.to_string(), source }
    }

    /// An integrity error about `what`.
    pub fn integrity(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        Self::Integrity { what: what.to_string(), detail: detail.to_string() }
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::WrongSecret => Self::WrongPassword,
            other => Self::Key(other),
        }
    }
}

impl From<ObjectError> for Error {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Epoch(missing) => Self::KeyEpoch(missing),
            other => Self::integrity("object", other),
        }
    }
}

impl From<PackError> for Error {
    fn from(e: PackError) -> Self {
        match e {
            PackError::VerifyAfterEncrypt(_) => Self::VerifyAfterEncrypt(e),
            PackError::Epoch(missing) => Self::KeyEpoch(missing),
            other => Self::integrity("pack", other),
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
