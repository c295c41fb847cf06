//! Typed ids and roles.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An enrolled agent's id, as in its certificate's common name (`a-` and 16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    /// Wrap an id read from a certificate or the catalog.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// A fresh random id.
    pub fn random() -> Self {
        Self(format!("a-{}", hex::encode(rand::random::<[u8; 8]>())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's id (`j-` and 16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Wrap an id from a request or the catalog.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// A fresh id; ids sort by creation time.
    pub fn generate() -> Self {
        let ms = chrono::Utc::now().timestamp_millis();
        Self(format!("j-{ms:013x}{}", hex::encode(rand::random::<[u8; 3]>())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a person may do. Ordered: each role can do what the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only.
    Auditor,
    /// Backups, restores, drills.
    Operator,
    /// Everything, including tokens, revocation and policies.
    Admin,
}

impl Role {
    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auditor" => Some(Self::Auditor),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auditor => "auditor",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}
