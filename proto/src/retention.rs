//! Retention: which snapshots of a group to keep. A snapshot is kept if any rule keeps it; one
//! without a trusted time is never forgotten. The controller feeds it receipt times (signed by
//! itself); standalone `tresor-agent forget` feeds it manifest times (written by the agents). It lives here,
//! in the crate both share, so the two apply exactly the same rules.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// What retention keeps. A snapshot is kept if any rule keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The newest N.
    pub keep_last: Option<u32>,
    /// The newest in each of the last N hours that have one.
    pub keep_hourly: Option<u32>,
    /// ... days.
    pub keep_daily: Option<u32>,
    /// ... ISO weeks.
    pub keep_weekly: Option<u32>,
    /// ... months.
    pub keep_monthly: Option<u32>,
    /// ... years.
    pub keep_yearly: Option<u32>,
    /// Everything newer than this (e.g. "2d").
    pub keep_within: Option<String>,
}

impl Retention {
    /// Whether no rule is set (then nothing is ever forgotten).
    pub fn keeps_everything(&self) -> bool {
        *self == Self::default()
    }
}

/// The rules as written in a policy, for audit reasons: `keep_last = 3, keep_within = 2d`.
impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ];
        let mut rules: Vec<String> = counts.iter().filter_map(|(k, n)| n.map(|n| format!("{k} = {n}"))).collect();
        if let Some(w) = &self.keep_within {
            rules.push(format!("keep_within = {w}"));
        }
        f.write_str(&rules.join(", "))
    }
}

/// The snapshot ids retention forgets among `snaps` (all of one group: one source), each an id
/// and its time in Unix milliseconds, or `None` when it has no time to trust (never forgotten).
/// Ties in time are ordered by id.
pub fn to_forget(snaps: &[(String, Option<i64>)], rules: &Retention, tz: Tz) -> Vec<String> {
    if rules.keeps_everything() {
        return Vec::new();
    }
    // Newest first, timed only.
    let mut timed: Vec<(i64, &String)> = snaps.iter().filter_map(|(id, t)| t.map(|t| (t, id))).collect();
    timed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(a.1)));
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    if let Some(n) = rules.keep_last {
        keep.extend(timed.iter().take(n as usize).map(|(_, s)| s.as_str()));
    }
    let local =
        |ms: i64| DateTime::<Utc>::from_timestamp(ms.div_euclid(1000), 0).unwrap_or_default().with_timezone(&tz);
    let mut bucketed = |n: Option<u32>, bucket: &dyn Fn(i64) -> i64| {
        let Some(n) = n else { return };
        let mut last = None;
        let mut kept = 0;
        for (t, s) in &timed {
            if kept >= n {
                break;
            }
            let b = bucket(*t);
            if last != Some(b) {
                keep.insert(s.as_str());
                last = Some(b);
                kept += 1;
            }
        }
    };
    bucketed(rules.keep_hourly, &|t| {
        let d = local(t);
        i64::from(d.year()) * 1_000_000 + i64::from(d.ordinal()) * 100 + i64::from(d.hour())
    });
    bucketed(rules.keep_daily, &|t| {
        let d = local(t);
        i64::from(d.year()) * 1000 + i64::from(d.ordinal())
    });
    bucketed(rules.keep_weekly, &|t| {
        let w = local(t).iso_week();
        i64::from(w.year()) * 100 + i64::from(w.week())
    });
    bucketed(rules.keep_monthly, &|t| {
        let d = local(t);
        i64::from(d.year()) * 100 + i64::from(d.month())
    });
    bucketed(rules.keep_yearly, &|t| i64::from(local(t).year()));
    if let (Some(w), Some((newest, _))) = (&rules.keep_within, timed.first()) {
        // Counted back from the newest snapshot, not from now: if backups stop, retention does
        // not eat the last good ones.
        if let Ok(d) = crate::parse_duration(w) {
            let cutoff = newest - d.as_millis() as i64;
            keep.extend(timed.iter().filter(|(t, _)| *t >= cutoff).map(|(_, s)| s.as_str()));
        }
    }
    timed.iter().filter(|(_, s)| !keep.contains(s.as_str())).map(|(_, s)| (*s).clone()).collect()
}
