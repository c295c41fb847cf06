//! The controller's one curated error, mapped to `tonic::Status` once, at the gRPC edge.

use tonic::Status;

/// What can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or policy text is invalid; the message names the field.
    #[error("{0}")]
    Config(String),
    /// A request names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is well-formed but cannot be done in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The catalog (sled) failed.
    #[error("catalog: {0}")]
    Catalog(#[from] sled::Error),
    /// A controller file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// The file and the operation.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server on {addr}: {detail}")]
    Serve {
        /// Listen address.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// Certificate work failed.
    #[error("certificates: {0}")]
    Pki(String),
    /// Stored catalog data could not be decoded.
    #[error("catalog record {key}: {detail}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

/// Result with the controller's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Config(_) | Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Catalog(_) | Error::Io { .. } | Error::Serve { .. } | Error::Pki(_) | Error::Corrupt { .. } => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}
