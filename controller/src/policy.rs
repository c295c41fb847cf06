//! Policies: which agent backs up what, to which vault, when, and how long snapshots are kept.
//! Written in TOML by admins (config/*.policy.toml are examples, each parsed by a test).
//! Unknown fields are refused and every error names the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fields::{name_ok, percent};
pub use crate::schedule::Schedule;

/// The default time zone of schedules.
pub const DEFAULT_TZ: &str = "Europe/Berlin";

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's name; applying a policy of the same name replaces it.
    pub name: String,
    /// The vaults it uses.
    pub vaults: Vec<VaultPolicy>,
    /// The sources it backs up.
    pub sources: Vec<SourcePolicy>,
    /// Its restore drills.
    pub drills: Vec<crate::drill_plan::DrillPlan>,
}

/// How the controller treats a vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultPolicy {
    /// The name agents list the vault under in their agent.toml.
    pub name: String,
    /// The only agent that runs prune and GC on it.
    pub maintainer: String,
    /// At most this many jobs run against the vault at once.
    pub max_concurrent_jobs: u32,
    /// When prune and GC run.
    pub prune: Option<Schedule>,
    /// Packs unreferenced for this long may be deleted by GC.
    pub gc_grace: Duration,
    /// Its second site: another vault of the policy it is copied to.
    #[serde(default)]
    pub copy: Option<CopyPolicy>,
}

/// A vault's second site (decision 0017): where, when, by whom, and how much it keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyPolicy {
    /// The vault copies go to (a `[[vault]]` of the same policy that no source backs up to).
    pub to: String,
    /// When copies run.
    pub schedule: Schedule,
    /// The agent that runs them: it opens both vaults (default: the source vault's maintainer).
    pub agent: String,
    /// The second site's RPO: alert when a snapshot has been at one site only for longer.
    pub rpo: Duration,
    /// What the copy keeps, per source (default: each source's own retention).
    pub retention: Option<Retention>,
}

/// One source on one agent.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// The agent's name.
    pub agent: String,
    /// The source's name, unique per agent.
    pub name: String,
    /// The vault's name.
    pub vault: String,
    /// Paths to back up.
    pub paths: Vec<String>,
    /// Tags for its snapshots.
    pub tags: Vec<String>,
    /// When backups run.
    pub schedule: Schedule,
    /// The age past which the last good backup is overdue.
    pub rpo: Duration,
    /// What to keep.
    pub retention: Retention,
    /// Scheduled `check --read-data-subset`.
    pub check: Option<CheckPolicy>,
}

pub use tresor_proto::retention::Retention;

/// A scheduled data check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckPolicy {
    /// When it runs.
    pub schedule: Schedule,
    /// Share of packs to read, in percent.
    pub read_data_percent: f64,
}

// --- the TOML as written -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    schedule: Option<String>,
    read_data_subset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    schedule: Option<String>,
    timezone: Option<String>,
    jitter: Option<String>,
    rpo: Option<String>,
    retention: Option<Retention>,
    check: Option<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    name: String,
    maintainer: String,
    max_concurrent_jobs: Option<u32>,
    prune_schedule: Option<String>,
    gc_grace: Option<String>,
    copy_to: Option<String>,
    copy_schedule: Option<String>,
    copy_agent: Option<String>,
    copy_rpo: Option<String>,
    copy_retention: Option<Retention>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    agent: String,
    name: String,
    vault: String,
    paths: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    schedule: Option<String>,
    timezone: Option<String>,
    jitter: Option<String>,
    rpo: Option<String>,
    retention: Option<Retention>,
    check: Option<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "vault")]
    vaults: Vec<RawVault>,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
    #[serde(default, rename = "drill")]
    drills: Vec<crate::drill_plan::RawDrill>,
}

fn dur(field: &str, v: Option<&str>, default: &str) -> Result<Duration> {
    crate::fields::duration(field, v.unwrap_or(default))
}

impl Policy {
    /// Parse and validate policy text; `origin` (a file name) prefixes every error.
    ///
    /// # Errors
    /// Names the field that is wrong.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let field = e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default();
            Error::Config(format!("{origin}: {}{field}", e.message().trim_end()))
        })?;
        Self::from_raw(raw).map_err(|e| Error::Config(format!("{origin}: {e}")))
    }

    fn from_raw(raw: RawPolicy) -> Result<Self> {
        name_ok("name", &raw.name)?;
        let d = &raw.defaults;
        let tz_default = d.timezone.clone().unwrap_or_else(|| DEFAULT_TZ.to_string());
        let jitter_default = dur("defaults.jitter", d.jitter.as_deref(), "0s")?;
        let mut vaults = Vec::new();
        for (i, v) in raw.vaults.into_iter().enumerate() {
            let f = format!("vault[{i}]");
            name_ok(&format!("{f}.name"), &v.name)?;
            name_ok(&format!("{f}.maintainer"), &v.maintainer)?;
            if vaults.iter().any(|o: &VaultPolicy| o.name == v.name) {
                return Err(Error::Config(format!("{f}.name: vault {:?} is listed twice", v.name)));
            }
            let max = v.max_concurrent_jobs.unwrap_or(2);
            if max == 0 {
                return Err(Error::Config(format!("{f}.max_concurrent_jobs: must be at least 1")));
            }
            let prune = v
                .prune_schedule
                .as_deref()
                .map(|c| Schedule::parse(&format!("{f}.prune"), c, &tz_default, Duration::ZERO))
                .transpose()?;
            let gc_grace = dur(&format!("{f}.gc_grace"), v.gc_grace.as_deref(), "1h")?;
            let copy = copy_policy(&f, &v, &tz_default)?;
            vaults.push(VaultPolicy {
                name: v.name,
                maintainer: v.maintainer,
                max_concurrent_jobs: max,
                prune,
                gc_grace,
                copy,
            });
        }
        check_copies(&vaults)?;
        let mut sources: Vec<SourcePolicy> = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let f = format!("source[{i}]");
            name_ok(&format!("{f}.agent"), &s.agent)?;
            name_ok(&format!("{f}.name"), &s.name)?;
            if !vaults.iter().any(|v| v.name == s.vault) {
                return Err(Error::Config(format!(
                    "{f}.vault: {:?} is not a vault of this policy (add a [[vault]] with that name)",
                    s.vault
                )));
            }
            if let Some(from) = vaults.iter().find(|v| v.copy.as_ref().is_some_and(|c| c.to == s.vault)) {
                return Err(Error::Config(format!(
                    "{f}.vault: {:?} is the second site of vault {:?}; sources back up to {:?} and copies reach {:?}",
                    s.vault, from.name, from.name, s.vault
                )));
            }
            if sources.iter().any(|o| o.agent == s.agent && o.name == s.name) {
                return Err(Error::Config(format!("{f}.name: {}/{} is listed twice", s.agent, s.name)));
            }
            if s.paths.is_empty() {
                return Err(Error::Config(format!("{f}.paths: give one or more absolute paths or KIND:SPEC sources")));
            }
            if let Some(p) = s.paths.iter().find(|p| !tresor_proto::is_backup_item(p)) {
                return Err(Error::Config(format!(
                    "{f}.paths: {p:?} is neither an absolute path nor KIND:SPEC with KIND one of {}",
                    tresor_proto::SOURCE_KINDS.join(", ")
                )));
            }
            let cron = s
                .schedule
                .as_deref()
                .or(d.schedule.as_deref())
                .ok_or_else(|| Error::Config(format!("{f}.schedule: missing (set it here or in [defaults])")))?;
            let tz = s.timezone.as_deref().unwrap_or(&tz_default);
            let jitter = match &s.jitter {
                Some(j) => dur(&format!("{f}.jitter"), Some(j), "0s")?,
                None => jitter_default,
            };
            let schedule = Schedule::parse(&f, cron, tz, jitter)?;
            let rpo = dur(&format!("{f}.rpo"), s.rpo.as_deref().or(d.rpo.as_deref()), "26h")?;
            let retention = s.retention.or_else(|| d.retention.clone()).unwrap_or_default();
            if let Some(w) = &retention.keep_within {
                dur(&format!("{f}.retention.keep_within"), Some(w), "0s")?;
            }
            let check = match s.check.as_ref().or(d.check.as_ref()) {
                None => None,
                Some(c) => {
                    let cron =
                        c.schedule.as_deref().ok_or_else(|| Error::Config(format!("{f}.check.schedule: missing")))?;
                    let pct =
                        percent(&format!("{f}.check.read_data_subset"), c.read_data_subset.as_deref().unwrap_or("5%"))?;
                    Some(CheckPolicy {
                        schedule: Schedule::parse(&format!("{f}.check"), cron, tz, Duration::ZERO)?,
                        read_data_percent: pct,
                    })
                }
            };
            sources.push(SourcePolicy {
                agent: s.agent,
                name: s.name,
                vault: s.vault,
                paths: s.paths,
                tags: s.tags,
                schedule,
                rpo,
                retention,
                check,
            });
        }
        let refs: Vec<crate::drill_plan::SourceRef<'_>> =
            sources.iter().map(|s| (s.agent.as_str(), s.name.as_str(), s.rpo)).collect();
        let drills = crate::drill_plan::parse(raw.drills, &refs, &tz_default)?;
        for (i, d) in drills.iter().enumerate() {
            let Some(v) = &d.vault else { continue };
            let home = sources.iter().find(|s| s.agent == d.agent && s.name == d.source).map(|s| s.vault.as_str());
            let second = vaults.iter().find(|x| Some(x.name.as_str()) == home).and_then(|x| x.copy.as_ref());
            if Some(v.as_str()) != home && second.is_none_or(|c| c.to != *v) {
                return Err(Error::Config(format!(
                    "drill[{i}].vault: {v:?} is neither the vault {}/{} backs up to nor its second site (copy_to)",
                    d.agent, d.source
                )));
            }
        }
        Ok(Self { name: raw.name, vaults, sources, drills })
    }
}

/// The `copy_*` fields of `[[vault]]` `f`.
fn copy_policy(f: &str, v: &RawVault, tz: &str) -> Result<Option<CopyPolicy>> {
    let Some(to) = &v.copy_to else {
        let set = [
            ("copy_schedule", v.copy_schedule.is_some()),
            ("copy_agent", v.copy_agent.is_some()),
            ("copy_rpo", v.copy_rpo.is_some()),
            ("copy_retention", v.copy_retention.is_some()),
        ];
        let stray = set.into_iter().find(|(_, given)| *given);
        if let Some((field, _)) = stray {
            return Err(Error::Config(format!("{f}.{field}: set only with copy_to")));
        }
        return Ok(None);
    };
    name_ok(&format!("{f}.copy_to"), to)?;
    if *to == v.name {
        return Err(Error::Config(format!("{f}.copy_to: a vault cannot be its own second site")));
    }
    let cron = v
        .copy_schedule
        .as_deref()
        .ok_or_else(|| Error::Config(format!("{f}.copy_schedule: missing (when copies to {to:?} run)")))?;
    let agent = v.copy_agent.clone().unwrap_or_else(|| v.maintainer.clone());
    name_ok(&format!("{f}.copy_agent"), &agent)?;
    if let Some(w) = v.copy_retention.as_ref().and_then(|r| r.keep_within.as_deref()) {
        dur(&format!("{f}.copy_retention.keep_within"), Some(w), "0s")?;
    }
    Ok(Some(CopyPolicy {
        to: to.clone(),
        schedule: Schedule::parse(&format!("{f}.copy"), cron, tz, Duration::ZERO)?,
        agent,
        rpo: dur(&format!("{f}.copy_rpo"), v.copy_rpo.as_deref(), "26h")?,
        retention: v.copy_retention.clone(),
    }))
}

/// Each copy goes to a vault of the policy that is no one else's copy and copies nowhere itself.
fn check_copies(vaults: &[VaultPolicy]) -> Result<()> {
    for (i, v) in vaults.iter().enumerate() {
        let Some(c) = &v.copy else { continue };
        let f = format!("vault[{i}].copy_to");
        let Some(to) = vaults.iter().find(|o| o.name == c.to) else {
            return Err(Error::Config(format!(
                "{f}: {:?} is not a vault of this policy (add a [[vault]] with that name)",
                c.to
            )));
        };
        if to.copy.is_some() {
            return Err(Error::Config(format!(
                "{f}: {:?} copies on to another vault itself; copy from the first site",
                c.to
            )));
        }
        if vaults.iter().filter(|o| o.copy.as_ref().is_some_and(|oc| oc.to == c.to)).count() > 1 {
            return Err(Error::Config(format!("{f}: {:?} is the second site of two vaults; give each its own", c.to)));
        }
    }
    Ok(())
}

impl Policy {
    /// The vault `name` is the second site of, if it is one.
    pub fn copy_source(&self, name: &str) -> Option<&VaultPolicy> {
        self.vaults.iter().find(|v| v.copy.as_ref().is_some_and(|c| c.to == name))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    const GOOD: &str = r#"
name = "nightly"
[defaults]
schedule = "0 2 * * *"
jitter = "10m"
rpo = "26h"
retention = { keep_last = 3, keep_daily = 7, keep_within = "2d" }
[[vault]]
name = "nas"
maintainer = "backup-01"
[[source]]
agent = "db-01"
name = "models"
vault = "nas"
paths = ["/srv/models"]
"#;

    #[test]
    fn a_good_policy_parses_with_berlin_as_the_default_zone() {
        let p = Policy::parse(GOOD, "t.toml").unwrap();
        let s = &p.sources[0];
        assert_eq!(s.schedule.timezone, "Europe/Berlin");
        assert_eq!(s.retention.keep_last, Some(3));
        assert_eq!(s.retention.to_string(), "keep_last = 3, keep_daily = 7, keep_within = 2d");
        // 02:00 in Berlin is 01:00 UTC in winter.
        let now = "2026-11-29T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(s.schedule.last_slot(now).unwrap().to_rfc3339(), "2026-11-29T01:00:00+00:00");
        assert!(s.schedule.jitter_for("db-01/models") < Duration::from_secs(600));
    }

    #[test]
    fn every_example_policy_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.to_string_lossy().ends_with(".policy.toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Policy::parse(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "config/ has example policies");
    }

    fn err(text: &str) -> String {
        Policy::parse(text, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = err(&GOOD.replace("0 2 * * *", "0 25 * * *"));
        assert!(e.contains("source[0].schedule") && e.contains("not a valid cron"), "{e}");
        let e = err(&GOOD.replace("rpo = \"26h\"", "rpo = \"26h\"\nrpo_target = 1"));
        assert!(e.contains("unknown field `rpo_target`"), "{e}");
        let e = err(&GOOD.replace("vault = \"nas\"\npaths", "vault = \"tape\"\npaths"));
        assert!(e.contains("source[0].vault") && e.contains("tape"), "{e}");
        let e = err(&GOOD.replace("jitter = \"10m\"", "timezone = \"Mars/Olympus\""));
        assert!(e.contains("Mars/Olympus"), "{e}");
        let e = err(&GOOD.replace("keep_within = \"2d\"", "keep_within = \"2 days\""));
        assert!(e.contains("keep_within"), "{e}");
        let e = err(&GOOD.replace("paths = [\"/srv/models\"]", "paths = [\"mongo:/var/db\"]"));
        assert!(e.contains("source[0].paths") && e.contains("mongo:/var/db"), "{e}");
    }

    #[test]
    fn second_sites_parse_and_bad_ones_name_the_field() {
        let site = "maintainer = \"backup-01\"\ncopy_to = \"offsite\"\ncopy_schedule = \"30 3 * * *\"\n";
        let with = |extra: &str| {
            GOOD.replace("maintainer = \"backup-01\"\n", &format!("{site}{extra}"))
                + "[[vault]]\nname = \"offsite\"\nmaintainer = \"backup-02\"\n"
        };
        let p = Policy::parse(&with("copy_retention = { keep_daily = 30 }\n"), "p.toml").unwrap();
        let c = p.vaults[0].copy.as_ref().unwrap();
        assert_eq!((c.to.as_str(), c.agent.as_str(), c.rpo.as_secs()), ("offsite", "backup-01", 26 * 3600));
        assert_eq!(c.retention.as_ref().and_then(|r| r.keep_daily), Some(30));
        assert_eq!(p.copy_source("offsite").map(|v| v.name.as_str()), Some("nas"));

        let e = err(&with("").replace("copy_schedule = \"30 3 * * *\"\n", ""));
        assert!(e.contains("vault[0].copy_schedule") && e.contains("missing"), "{e}");
        let e = err(&with("").replace("copy_to = \"offsite\"", "copy_to = \"tape\""));
        assert!(e.contains("vault[0].copy_to") && e.contains("tape"), "{e}");
        let e = err(&with("").replace("copy_to = \"offsite\"", "copy_to = \"nas\""));
        assert!(e.contains("its own second site"), "{e}");
        let e = err(&GOOD.replace("maintainer = \"backup-01\"\n", "maintainer = \"backup-01\"\ncopy_rpo = \"1h\"\n"));
        assert!(e.contains("vault[0].copy_rpo") && e.contains("only with copy_to"), "{e}");
        // Sources back up to the first site only.
        let e = err(&with("").replace("vault = \"nas\"\npaths", "vault = \"offsite\"\npaths"));
        assert!(e.contains("source[0].vault") && e.contains("second site"), "{e}");
        // A drill names the source's vault or its second site.
        let drill = "[[drill]]\nname = \"d\"\nsource = \"db-01/models\"\nschedule = \"0 4 * * 0\"\nrto = \"1h\"\n";
        assert!(Policy::parse(&(with("") + drill + "vault = \"offsite\"\n"), "p.toml").is_ok());
        let e = err(&(with("") + drill + "vault = \"tape\"\n"));
        assert!(e.contains("drill[0].vault") && e.contains("tape"), "{e}");
    }

    #[test]
    fn sources_sit_beside_paths() {
        let p = Policy::parse(
            &GOOD.replace("paths = [\"/srv/models\"]", "paths = [\"/srv/models\", \"sqlite:/var/lib/app/app.db\"]"),
            "p.toml",
        )
        .unwrap();
        assert_eq!(p.sources[0].paths[1], "sqlite:/var/lib/app/app.db");
    }
}
