//! Cron schedules in a time zone, with jitter: when backups, checks, prunes and drills run.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A cron schedule in a time zone, with jitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    /// The cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// The IANA time zone.
    pub timezone: String,
    /// Runs start up to this long after the slot, spread by a hash of the source.
    pub jitter: Duration,
}

impl Schedule {
    pub(crate) fn parse(field: &str, cron: &str, timezone: &str, jitter: Duration) -> Result<Self> {
        let s = Self { cron: cron.to_string(), timezone: timezone.to_string(), jitter };
        s.compiled(field)?;
        Ok(s)
    }

    fn compiled(&self, field: &str) -> Result<(Cron, Tz)> {
        let cron = Cron::from_str(&self.cron).map_err(|e| {
            Error::Config(format!("{field}.schedule: {:?} is not a valid cron expression: {e}", self.cron))
        })?;
        let tz: Tz = self
            .timezone
            .parse()
            .map_err(|_| Error::Config(format!("{field}.timezone: {:?} is not an IANA time zone", self.timezone)))?;
        Ok((cron, tz))
    }

    /// The newest slot at or before `now`, if any within a year.
    pub fn last_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.compiled("schedule").ok()?;
        cron.find_previous_occurrence(&now.with_timezone(&tz), true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The first slot after `after`.
    pub fn next_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.compiled("schedule").ok()?;
        cron.find_next_occurrence(&after.with_timezone(&tz), false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The longest gap between the next `slots` slots after `now` (an irregular cron, such as
    /// weekdays only, has gaps of different lengths); `None` without two slots.
    pub fn longest_gap(&self, now: DateTime<Utc>, slots: usize) -> Option<Duration> {
        let mut prev = self.next_slot(now)?;
        let mut longest = None;
        for _ in 1..slots {
            let next = self.next_slot(prev)?;
            let gap = (next - prev).to_std().ok()?;
            longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
            prev = next;
        }
        longest
    }

    /// This source's fixed share of the jitter window, so runs spread out but stay predictable.
    pub fn jitter_for(&self, key: &str) -> Duration {
        let ms = self.jitter.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        let h = u64::from_le_bytes(blake3::hash(key.as_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]));
        Duration::from_millis(h % ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_of_an_irregular_schedule_is_found() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let daily = Schedule::parse("t", "0 3 * * *", "UTC", Duration::ZERO).unwrap();
        assert_eq!(daily.longest_gap(at("2026-12-07T12:00:00Z"), 8), Some(Duration::from_secs(86_400)));
        // Weekdays only: the weekend makes a gap of three days.
        let weekdays = Schedule::parse("t", "0 3 * * 1-5", "UTC", Duration::ZERO).unwrap();
        assert_eq!(weekdays.longest_gap(at("2026-12-07T12:00:00Z"), 8), Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(daily.longest_gap(at("2026-12-07T12:00:00Z"), 1), None);
    }
}
