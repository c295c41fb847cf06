//! Drill plans, the `[[drill]]` tables of a policy: when a source's restore is rehearsed, which
//! snapshot, on which agent, and the targets the drill is judged by.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::fields::{duration as dur, name_ok, percent};
use crate::schedule::Schedule;

/// Which snapshot a drill restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotChoice {
    /// The newest.
    Latest,
    /// One drawn at random among those committed within this long before the drill.
    RandomWithin(Duration),
}

/// One drill plan.
#[derive(Debug, Clone)]
pub struct DrillPlan {
    /// Name, unique in the policy.
    pub name: String,
    /// The source's agent.
    pub agent: String,
    /// The source's name on that agent.
    pub source: String,
    /// The agent that restores (a sandbox host may differ from the source's).
    pub sandbox_agent: String,
    /// When it runs.
    pub schedule: Schedule,
    /// Which snapshot.
    pub snapshot: SnapshotChoice,
    /// Recovery time objective.
    pub rto: Duration,
    /// Recovery point objective (the source's unless set).
    pub rpo: Duration,
    /// Share of packs the read check decrypts, percent (100 = all).
    pub read_data_percent: f64,
    /// Keep the sandbox after the drill (for inspection).
    pub keep: bool,
    /// Restore setuid/setgid bits and file capabilities in the sandbox; without it they are left
    /// out (and the report counts them), so a sandbox never holds another host's privileged
    /// programs.
    pub special_bits: bool,
    /// Drill from this vault: the source's second site (its vault's copy_to); default the
    /// source's own vault.
    pub vault: Option<String>,
}

/// A `[[drill]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDrill {
    name: String,
    /// `AGENT/SOURCE`.
    source: String,
    sandbox_agent: Option<String>,
    schedule: String,
    timezone: Option<String>,
    #[serde(default)]
    snapshot: Option<String>,
    rto: String,
    rpo: Option<String>,
    read_data: Option<String>,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    special_bits: bool,
    vault: Option<String>,
}

/// A source a drill may name: (agent, name, its RPO).
pub(crate) type SourceRef<'a> = (&'a str, &'a str, Duration);

/// Check the drill tables against the policy's sources.
pub(crate) fn parse(raw: Vec<RawDrill>, sources: &[SourceRef<'_>], tz_default: &str) -> Result<Vec<DrillPlan>> {
    let mut plans: Vec<DrillPlan> = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let f = format!("drill[{i}]");
        name_ok(&format!("{f}.name"), &d.name)?;
        if plans.iter().any(|p| p.name == d.name) {
            return Err(Error::Config(format!("{f}.name: drill {:?} is listed twice", d.name)));
        }
        let (agent, source) = d
            .source
            .split_once('/')
            .ok_or_else(|| Error::Config(format!("{f}.source: {:?} is not AGENT/SOURCE", d.source)))?;
        let Some(&(_, _, source_rpo)) = sources.iter().find(|(a, n, _)| *a == agent && *n == source) else {
            return Err(Error::Config(format!("{f}.source: {:?} is not a source of this policy", d.source)));
        };
        let sandbox_agent = d.sandbox_agent.unwrap_or_else(|| agent.to_string());
        name_ok(&format!("{f}.sandbox_agent"), &sandbox_agent)?;
        let tz = d.timezone.as_deref().unwrap_or(tz_default);
        let schedule = Schedule::parse(&f, &d.schedule, tz, Duration::ZERO)?;
        let snapshot = match d.snapshot.as_deref().map(str::trim) {
            None | Some("latest") => SnapshotChoice::Latest,
            Some(s) => match s.strip_prefix("random within ") {
                Some(w) => SnapshotChoice::RandomWithin(dur(&format!("{f}.snapshot"), w)?),
                None => {
                    return Err(Error::Config(format!(
                        "{f}.snapshot: {s:?}: give \"latest\" or \"random within DURATION\" (e.g. \"random within 30d\")"
                    )));
                }
            },
        };
        let rto = dur(&format!("{f}.rto"), &d.rto)?;
        let rpo = match &d.rpo {
            Some(r) => dur(&format!("{f}.rpo"), r)?,
            None => source_rpo,
        };
        let read_data_percent = match &d.read_data {
            Some(p) => percent(&format!("{f}.read_data"), p)?,
            None => 100.0,
        };
        plans.push(DrillPlan {
            name: d.name,
            agent: agent.to_string(),
            source: source.to_string(),
            sandbox_agent,
            schedule,
            snapshot,
            rto,
            rpo,
            read_data_percent,
            keep: d.keep,
            special_bits: d.special_bits,
            vault: d.vault,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use crate::policy::Policy;

    const BASE: &str = r#"
name = "p"
[[vault]]
name = "nas"
maintainer = "gpu-01"
[[source]]
agent = "gpu-01"
name = "models"
vault = "nas"
paths = ["/srv/models"]
schedule = "0 2 * * *"
rpo = "26h"
"#;

    #[test]
    fn drills_parse_with_defaults_and_bad_ones_name_the_field() {
        let p = Policy::parse(
            &format!("{BASE}[[drill]]\nname = \"weekly\"\nsource = \"gpu-01/models\"\nsandbox_agent = \"drill-01\"\nschedule = \"0 4 * * 0\"\nsnapshot = \"random within 30d\"\nrto = \"1h\"\nread_data = \"10%\"\n"),
            "p.toml",
        )
        .unwrap();
        let d = &p.drills[0];
        assert_eq!((d.agent.as_str(), d.source.as_str(), d.sandbox_agent.as_str()), ("gpu-01", "models", "drill-01"));
        assert_eq!(d.snapshot, super::SnapshotChoice::RandomWithin(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!((d.rto.as_secs(), d.rpo.as_secs(), d.read_data_percent), (3_600, 26 * 3_600, 10.0));
        assert_eq!(d.schedule.timezone, "Europe/Berlin");

        let err = |drill: &str| Policy::parse(&format!("{BASE}[[drill]]\n{drill}"), "p.toml").unwrap_err().to_string();
        let e = err("name = \"x\"\nsource = \"gpu-01/logs\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\n");
        assert!(e.contains("drill[0].source") && e.contains("gpu-01/logs"), "{e}");
        let e = err(
            "name = \"x\"\nsource = \"gpu-01/models\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nsnapshot = \"oldest\"\n",
        );
        assert!(e.contains("drill[0].snapshot"), "{e}");
        let e = err("name = \"x\"\nsource = \"gpu-01/models\"\nschedule = \"0 4 * * 0\"\n");
        assert!(e.contains("missing field `rto`"), "{e}");
        let e = err(
            "name = \"x\"\nsource = \"gpu-01/models\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\nread_data = \"200%\"\n",
        );
        assert!(e.contains("drill[0].read_data"), "{e}");
    }
}
