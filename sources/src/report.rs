//! What a verification found: one [`Finding`] per check, gathered in a [`Report`]. The bottom of
//! the crate's verifiers: every source's checker writes into it.

use serde::Serialize;

/// One check and its outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (a path, a tensor, a probe).
    pub subject: String,
    /// Which check.
    pub check: String,
    /// Whether it held.
    pub ok: bool,
    /// Details: what differed, or what was seen.
    pub detail: String,
}

/// All findings of one verification.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Findings, failures included.
    pub findings: Vec<Finding>,
    /// Files checked.
    pub files: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Tensors checked.
    pub tensors: u64,
}

impl Report {
    /// True when every check held.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.ok)
    }

    /// Record one check.
    pub fn push(&mut self, subject: impl Into<String>, check: &str, ok: bool, detail: impl Into<String>) {
        self.findings.push(Finding { subject: subject.into(), check: check.into(), ok, detail: detail.into() });
    }
}
