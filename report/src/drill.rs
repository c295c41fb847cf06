//! The drill report: what a restore drill did and found, as the JSON an auditor reads and the
//! controller signs. docs/DRILLS.md documents every field; [`crate::html`] renders the same data.

use serde::{Deserialize, Serialize};

/// The `type` of a drill report.
pub const REPORT_TYPE: &str = "tresor.drill-report.v1";

/// PASS or FAIL, written as words everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Held.
    #[serde(rename = "PASS")]
    Pass,
    /// Did not hold.
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    /// PASS when `ok`.
    pub fn of(ok: bool) -> Self {
        if ok { Self::Pass } else { Self::Fail }
    }
}

/// A measured duration against its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Measured, seconds.
    pub measured_s: f64,
    /// Target, seconds.
    pub target_s: f64,
    /// PASS when measured ≤ target.
    pub result: Verdict,
}

impl Target {
    /// A measurement against a target.
    pub fn new(measured_s: f64, target_s: f64) -> Self {
        Self { measured_s, target_s, result: Verdict::of(measured_s <= target_s) }
    }
}

/// Which verification level a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every referenced chunk present, every index and snapshot readable.
    Structure,
    /// Chunks decrypted and their hashes checked.
    Read,
    /// The source's own verifier on the restored copy.
    Application,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Level.
    pub level: Level,
    /// What was checked (a file, a tensor, a table, the vault).
    pub subject: String,
    /// Which check.
    pub check: String,
    /// Outcome.
    pub result: Verdict,
    /// Numbers and details in words.
    pub detail: String,
}

/// Which plan ran the drill, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The policy.
    pub policy: String,
    /// The plan's name in it.
    pub name: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// Who started it (a token id or `scheduler`).
    pub operator: String,
}

/// A drill report (unsigned; [`crate::sign::sign`] adds the signature member).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// Always [`REPORT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Drill id.
    pub drill_id: String,
    /// Plan and trigger.
    pub plan: Plan,
    /// `AGENT/SOURCE`.
    pub source: String,
    /// Source kind (`files`, `model`, `postgres`, ...).
    pub source_kind: String,
    /// Snapshot id.
    pub snapshot: String,
    /// Snapshot time, RFC 3339.
    pub snapshot_time: String,
    /// Achieved RPO (drill start minus the newest good snapshot) against the target.
    pub rpo: Target,
    /// RTO (drill start until the application check passed) against the target.
    pub rto: Target,
    /// Seconds the cryptographic read check took (timed apart from the RTO).
    pub read_check_s: f64,
    /// Share of the data read by the read check, percent, and the seed of the sample.
    pub read_share_percent: f64,
    /// Seed of a sampled read check.
    pub read_seed: Option<u64>,
    /// Agent that restored, and where.
    pub sandbox: String,
    /// Start, RFC 3339.
    pub started: String,
    /// End, RFC 3339.
    pub ended: String,
    /// Bytes restored.
    pub bytes: u64,
    /// Restore throughput, bytes per second.
    pub throughput_bps: f64,
    /// Every check.
    pub checks: Vec<Check>,
    /// Retries, transient errors and other things worth a look.
    pub anomalies: Vec<String>,
    /// Tool and format versions.
    pub tresor_version: String,
    /// Storage format version.
    pub format_version: u32,
    /// The key slot used to open the vault (a label, never a secret).
    pub key_slot: String,
    /// The IT-Grundschutz requirements this report evidences.
    pub evidences: Vec<String>,
    /// PASS only when every check and both targets hold: set by [`DrillReport::finished`], never
    /// by hand.
    pub verdict: Verdict,
}

impl DrillReport {
    /// A stored report read back (its `signature` member, not part of the schema, is ignored).
    ///
    /// # Errors
    /// Not JSON, or not this schema.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// The report with its verdict set from its parts; call it last, before signing.
    pub fn finished(mut self) -> Self {
        self.verdict = self.computed_verdict();
        self
    }

    /// The verdict the parts give: every check and both targets PASS.
    fn computed_verdict(&self) -> Verdict {
        Verdict::of(
            self.rpo.result == Verdict::Pass
                && self.rto.result == Verdict::Pass
                && !self.checks.is_empty()
                && self.checks.iter().all(|c| c.result == Verdict::Pass),
        )
    }

    /// A sample for the crate's tests.
    #[cfg(test)]
    pub(crate) fn sample() -> Self {
        Self {
            kind: REPORT_TYPE.into(),
            drill_id: "drill-20261129-0201-gpu-01-models".into(),
            plan: Plan {
                policy: "nightly".into(),
                name: "models-weekly".into(),
                trigger: "schedule".into(),
                operator: "scheduler".into(),
            },
            source: "gpu-01/models".into(),
            source_kind: "model".into(),
            snapshot: "3fa2c1d0".into(),
            snapshot_time: "2026-11-29T02:00:07.120Z".into(),
            rpo: Target::new(3_600.0, 93_600.0),
            rto: Target::new(412.5, 3_600.0),
            read_check_s: 61.0,
            read_share_percent: 10.0,
            read_seed: Some(42),
            sandbox: "drill-01:/var/lib/tresor-drills/3fa2c1d0".into(),
            started: "2026-11-29T03:00:07Z".into(),
            ended: "2026-11-29T03:08:00Z".into(),
            bytes: 16_106_127_360,
            throughput_bps: 39_045_157.0,
            checks: vec![
                Check {
                    level: Level::Structure,
                    subject: "vault".into(),
                    check: "all referenced chunks present".into(),
                    result: Verdict::Pass,
                    detail: "1,204 packs, 61,022 chunks".into(),
                },
                Check {
                    level: Level::Read,
                    subject: "vault".into(),
                    check: "chunks decrypted and hashed".into(),
                    result: Verdict::Pass,
                    detail: "10 % of packs, seed 42".into(),
                },
                Check {
                    level: Level::Application,
                    subject: "/srv/models/llama/model-00001-of-00004.safetensors".into(),
                    check: "tensor BLAKE3".into(),
                    result: Verdict::Pass,
                    detail: "291 tensors".into(),
                },
            ],
            anomalies: vec!["2 ranged reads retried after HTTP 503 (transient)".into()],
            tresor_version: "0.1.0".into(),
            format_version: 1,
            key_slot: "drill-01".into(),
            evidences: vec!["CON.3.A15".into(), "NOT.4.16".into(), "NOT.4.17".into()],
            verdict: Verdict::Fail,
        }
        .finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_report_signs_round_trips_and_a_missed_target_fails_it() {
        let mut r = DrillReport::sample();
        assert_eq!(r.verdict, Verdict::Pass);
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut doc = serde_json::to_value(&r).unwrap();
        crate::sign::sign(&mut doc, &key).unwrap();
        crate::sign::verify(&doc, &key.verifying_key()).unwrap();
        let back: DrillReport = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(back, r);
        assert_eq!(doc["rto"]["result"], "PASS");

        r.rto = Target::new(4_000.0, 3_600.0);
        assert_eq!(r.rto.result, Verdict::Fail);
        let v = serde_json::to_value(r.finished()).unwrap();
        assert_eq!(v["verdict"], "FAIL", "a missed target fails the drill");
        assert_eq!((v["rto"]["measured_s"].as_f64(), v["rto"]["target_s"].as_f64()), (Some(4000.0), Some(3600.0)));
    }

    /// A read seed above 2^53 would share its canonical bytes with its neighbours, so a changed
    /// seed would keep the signature: such integers have no canonical form, in signing and in
    /// verifying. Seeds are drawn below 2^53 (controller `drills.rs`).
    #[test]
    fn integers_beyond_2_pow_53_are_refused_in_signing_and_verifying() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut r = DrillReport::sample();
        r.read_seed = Some((1 << 53) + 1);
        let mut doc = serde_json::to_value(&r).unwrap();
        let e = crate::sign::sign(&mut doc, &key).unwrap_err().to_string();
        assert!(e.contains("9007199254740993") && e.contains("2^53"), "{e}");

        r.read_seed = Some(1 << 53);
        let mut doc = serde_json::to_value(&r).unwrap();
        crate::sign::sign(&mut doc, &key).unwrap();
        crate::sign::verify(&doc, &key.verifying_key()).unwrap();
        // 2^53 + 1 and 2^53 are the same double: the change is refused, not vouched for.
        doc["read_seed"] = serde_json::json!((1u64 << 53) + 1);
        assert!(crate::sign::verify(&doc, &key.verifying_key()).unwrap_err().to_string().contains("2^53"));
        doc["read_seed"] = serde_json::json!(-((1i64 << 53) + 2));
        assert!(crate::sign::verify(&doc, &key.verifying_key()).is_err());
    }
}
