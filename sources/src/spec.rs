//! `KIND:SPEC`: how a source is named on the command line, in policies and in agent configs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The kinds of source an agent can capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Model weights: a file or a Hugging Face model directory.
    Model,
    /// An SQLite database, through the online backup API.
    Sqlite,
    /// A PostgreSQL cluster, by libpq connection string, through `pg_basebackup`.
    Postgres,
    /// A FAISS index file the application saved (a pre-hook makes it save).
    Faiss,
    /// An hnswlib index file the application saved.
    Hnswlib,
    /// A Chroma persistent directory.
    Chroma,
    /// A raw float32 matrix (`.npy` or `.fvecs`) searched by brute force.
    Vectors,
    /// A Qdrant collection, `http(s)://HOST:PORT/collections/NAME`, through its snapshot API.
    Qdrant,
}

impl Kind {
    /// Every kind, for help texts.
    pub const ALL: [Kind; 8] = [
        Kind::Model,
        Kind::Sqlite,
        Kind::Postgres,
        Kind::Faiss,
        Kind::Hnswlib,
        Kind::Chroma,
        Kind::Qdrant,
        Kind::Vectors,
    ];

    /// The name used in `KIND:SPEC` and in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Faiss => "faiss",
            Self::Hnswlib => "hnswlib",
            Self::Chroma => "chroma",
            Self::Qdrant => "qdrant",
            Self::Vectors => "vectors",
        }
    }
}

/// A source as given: its kind and the rest of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// Kind.
    pub kind: Kind,
    /// What follows `KIND:` (for path kinds, an absolute path).
    pub spec: String,
}

impl SourceSpec {
    /// The path of a path-based source.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.spec)
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.spec)
    }
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let known = || Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
        let (kind, rest) =
            s.split_once(':').ok_or_else(|| format!("{s:?}: a source is KIND:SPEC, with KIND one of {}", known()))?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or_else(|| format!("{s:?}: unknown source kind {kind:?} (known: {})", known()))?;
        if rest.is_empty() {
            return Err(format!("{s:?}: nothing after {}:", kind.name()));
        }
        let spec = match kind {
            Kind::Model | Kind::Sqlite | Kind::Faiss | Kind::Hnswlib | Kind::Chroma | Kind::Vectors => {
                std::path::absolute(rest).map_err(|e| format!("{s:?}: bad path: {e}"))?.to_string_lossy().into_owned()
            }
            Kind::Postgres => rest.to_string(),
            Kind::Qdrant => {
                crate::vector::qdrant::Collection::parse(rest).map_err(|e| format!("{s:?}: {e}"))?;
                rest.to_string()
            }
        };
        Ok(Self { kind, spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_mistakes() {
        let s: SourceSpec = "model:/srv/m".parse().unwrap();
        assert_eq!((s.kind, s.spec.as_str()), (Kind::Model, "/srv/m"));
        assert_eq!(s.to_string(), "model:/srv/m");
        assert!("/srv/m".parse::<SourceSpec>().unwrap_err().contains("KIND:SPEC"));
        assert!("mongo:/x".parse::<SourceSpec>().unwrap_err().contains("unknown source kind \"mongo\""));
        assert!("sqlite:".parse::<SourceSpec>().unwrap_err().contains("nothing after"));
        let pg: SourceSpec = "postgres:host=/run/postgresql port=5433".parse().unwrap();
        assert_eq!(pg.spec, "host=/run/postgresql port=5433");
    }
}
