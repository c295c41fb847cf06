//! Retention in the controller: time comes only from its signed receipts; a snapshot without a
//! valid receipt is never forgotten, and a manifest's own time is never read here, so a forged
//! timestamp cannot make good snapshots expire. The rules themselves are shared with standalone
//! `tresor-agent forget` (`tresor_proto::retention`).

use chrono_tz::Tz;

use crate::catalog::SnapshotRecord;
use crate::policy::Retention;

/// The snapshot ids retention forgets among `snaps` (all of one source), by receipt time. Ties
/// (same millisecond) are ordered by snapshot id, as everywhere in the catalog.
pub fn to_forget(snaps: &[SnapshotRecord], rules: &Retention, tz: Tz) -> Vec<String> {
    let timed: Vec<(String, Option<i64>)> = snaps.iter().map(|s| (s.snapshot_id.clone(), s.committed_ms)).collect();
    tresor_proto::retention::to_forget(&timed, rules, tz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(id: &str, committed: Option<i64>, manifest_time: &str) -> SnapshotRecord {
        SnapshotRecord {
            vault_id: "v".into(),
            vault: "nas".into(),
            snapshot_id: id.into(),
            agent: "a".into(),
            source: "s".into(),
            host: "h".into(),
            manifest_time: manifest_time.into(),
            committed_ms: committed.map(|c| c * 1000),
            receipt_sig: committed.map(|_| "00".into()),
            files: 0,
            bytes_total: 0,
            bytes_new: 0,
            bytes_stored: 0,
            duration_ms: 0,
            paths: vec![],
            job: None,
            receipt_unverified: false,
            copied_ms: None,
        }
    }

    const DAY: i64 = 86_400;
    const T0: i64 = 1_780_012_800; // a midnight, UTC

    #[test]
    fn daily_and_last_keep_what_they_say() {
        // Two snapshots a day for ten days.
        let snaps: Vec<_> = (0..20).map(|i| snap(&format!("s{i:02}"), Some(T0 + i * DAY / 2), "")).collect();
        let rules = Retention { keep_last: Some(2), keep_daily: Some(3), ..Default::default() };
        let forget = to_forget(&snaps, &rules, chrono_tz::UTC);
        let kept: Vec<_> = snaps.iter().map(|s| s.snapshot_id.clone()).filter(|id| !forget.contains(id)).collect();
        // The newest two, and the newest of each of the three newest days.
        assert_eq!(
            kept,
            ["s15", "s17", "s18", "s19"],
            "the newest two, and the newest of each of the three newest days"
        );
    }

    #[test]
    fn forged_manifest_times_and_missing_receipts_change_nothing() {
        let mut snaps: Vec<_> =
            (0..5).map(|i| snap(&format!("s{i}"), Some(T0 + i * DAY), "2001-01-01T00:00:00Z")).collect();
        snaps.push(snap("unreceipted", None, "1999-01-01T00:00:00Z"));
        let rules = Retention { keep_within: Some("2d".into()), ..Default::default() };
        let forget = to_forget(&snaps, &rules, chrono_tz::UTC);
        assert_eq!(forget, vec!["s1".to_string(), "s0".to_string()], "only receipt time counts");
        assert!(!forget.contains(&"unreceipted".to_string()));
    }

    proptest! {
        #[test]
        fn never_forgets_the_newest_or_unreceipted(times in proptest::collection::vec(proptest::option::of(0i64..400 * DAY), 1..40),
                                                   last in 1u32..4, daily in proptest::option::of(0u32..5)) {
            let snaps: Vec<_> = times.iter().enumerate().map(|(i, t)| snap(&format!("s{i}"), t.map(|t| T0 + t), "")).collect();
            let rules = Retention { keep_last: Some(last), keep_daily: daily, ..Default::default() };
            let forget = to_forget(&snaps, &rules, chrono_tz::Europe::Berlin);
            for s in &snaps {
                if s.committed_ms.is_none() {
                    prop_assert!(!forget.contains(&s.snapshot_id));
                }
            }
            if let Some(newest) = snaps.iter().filter(|s| s.committed_ms.is_some()).max_by(|a, b| a.committed_ms.cmp(&b.committed_ms).then(a.snapshot_id.cmp(&b.snapshot_id))) {
                prop_assert!(!forget.contains(&newest.snapshot_id));
            }
            let receipted = snaps.iter().filter(|s| s.committed_ms.is_some()).count();
            prop_assert!(receipted - forget.len() >= (last as usize).min(receipted));
        }
    }
}
