//! Refused tokens and sign-ins, audited once per burst per client address: a client that keeps
//! trying wrong tokens must not grow the audit log (and every verification of it) without bound.
//! The first refusal of a burst gets its own entry; the rest of the burst is counted, and one
//! entry says how many when the burst is over (no refusal for `refusal_burst`), written by the
//! scheduler.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A burst ends after this long without a refusal from its client (the default of
/// controller.toml `refusal_burst`).
pub const BURST: Duration = Duration::from_secs(60);
/// Client addresses tracked at once (unit: addresses). Past it, the quietest burst is closed
/// early (its summary written), so memory stays bounded whatever the number of addresses.
pub const MAX_CLIENTS: usize = 4096;

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The first of its burst: audit it.
    Audit,
    /// Counted in its burst's summary.
    Counted,
}

/// A burst that ended: `count` refusals after its first one, from `client`, between the Unix
/// seconds `from` and `to`.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// The client address.
    pub client: String,
    /// Refusals counted (not audited one by one).
    pub count: u64,
    /// First and last refusal of the burst, Unix seconds.
    pub from: i64,
    /// Last refusal.
    pub to: i64,
}

struct Burst {
    last: Instant,
    first_unix: i64,
    last_unix: i64,
    counted: u64,
}

/// Bursts by client address.
pub struct Refusals {
    burst: Duration,
    bursts: Mutex<HashMap<String, Burst>>,
}

impl Refusals {
    /// Bursts that end after `burst` without a refusal.
    pub fn new(burst: Duration) -> Self {
        Self { burst, bursts: Mutex::default() }
    }

    /// Note a refusal from `client`; returns whether to audit it, and the summary of a burst
    /// closed early to make room.
    pub fn note(&self, client: &str, now: Instant, now_unix: i64) -> (Refusal, Option<Summary>) {
        let mut bursts = self.bursts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bursts.get_mut(client)
            && now.duration_since(b.last) < self.burst
        {
            b.last = now;
            b.last_unix = now_unix;
            b.counted += 1;
            return (Refusal::Counted, None);
        }
        // A burst of this client that is over gets its summary at the next sweep; a new one starts.
        let mut evicted = bursts.remove(client).and_then(|b| summary(client, b));
        if evicted.is_none() && bursts.len() >= MAX_CLIENTS {
            let quietest = bursts.iter().min_by_key(|(_, b)| b.last).map(|(c, _)| c.clone());
            evicted = quietest.and_then(|c| bursts.remove(&c).and_then(|b| summary(&c, b)));
        }
        let _ = bursts
            .insert(client.to_string(), Burst { last: now, first_unix: now_unix, last_unix: now_unix, counted: 0 });
        (Refusal::Audit, evicted)
    }

    /// Close the bursts that are over; returns the summaries of those that counted refusals.
    pub fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut bursts = self.bursts.lock().unwrap_or_else(|p| p.into_inner());
        let over: Vec<String> =
            bursts.iter().filter(|(_, b)| now.duration_since(b.last) >= self.burst).map(|(c, _)| c.clone()).collect();
        over.into_iter().filter_map(|c| bursts.remove(&c).and_then(|b| summary(&c, b))).collect()
    }
}

fn summary(client: &str, b: Burst) -> Option<Summary> {
    (b.counted > 0).then(|| Summary {
        client: client.to_string(),
        count: b.counted,
        from: b.first_unix,
        to: b.last_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_burst_and_a_summary_when_it_ends() {
        let r = Refusals::new(BURST);
        let t0 = Instant::now();
        assert_eq!(r.note("192.0.2.1", t0, 100), (Refusal::Audit, None));
        for i in 1..1000 {
            assert_eq!(r.note("192.0.2.1", t0 + Duration::from_millis(i), 100).0, Refusal::Counted);
        }
        assert_eq!(r.note("192.0.2.2", t0, 100).0, Refusal::Audit, "another client has its own burst");
        assert!(r.sweep(t0 + Duration::from_secs(30)).is_empty(), "not over yet");
        let done = r.sweep(t0 + BURST + Duration::from_secs(1));
        assert_eq!(done, vec![Summary { client: "192.0.2.1".into(), count: 999, from: 100, to: 100 }]);
        assert_eq!(r.note("192.0.2.1", t0 + BURST * 2, 300).0, Refusal::Audit, "a new burst");
    }

    #[test]
    fn memory_stays_bounded_and_nothing_is_lost() {
        let r = Refusals::new(BURST);
        let t0 = Instant::now();
        let _ = r.note("a", t0, 1);
        let _ = r.note("a", t0, 1);
        let mut evicted = Vec::new();
        for i in 0..MAX_CLIENTS + 10 {
            evicted.extend(r.note(&format!("c{i}"), t0 + Duration::from_millis(1 + i as u64), 2).1);
        }
        assert!(r.bursts.lock().unwrap().len() <= MAX_CLIENTS);
        assert_eq!(
            evicted,
            vec![Summary { client: "a".into(), count: 1, from: 1, to: 1 }],
            "the quietest closed early"
        );
    }
}
