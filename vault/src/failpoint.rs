//! Named crash points for fault-injection tests.
//!
//! `TRESOR_FAILPOINTS="after-pack-put=kill@3,flip-after-encrypt=on"` arms them: `kill` fires at the
//! first hit, `kill@N` at the N-th; `sleep:MS` pauses the calling thread at every hit (tests use
//! it to hold a job just before its commit point). I/O points ([`io_error`]) take `eio`,
//! `einval` or `enotsup`, at every hit or, with `@N`, at the N-th only. The variable is read
//! once; unarmed points cost a map lookup on an empty map. Names are listed in docs/ARCHITECTURE.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

fn armed() -> &'static HashMap<String, String> {
    static ARMED: OnceLock<HashMap<String, String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("TRESOR_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, "on"));
                (!k.trim().is_empty()).then(|| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    })
}

/// Whether any failpoint is armed (hot paths skip building scoped names when none is).
pub fn any_armed() -> bool {
    !armed().is_empty()
}

/// Whether `name` is armed (any action).
pub fn is_armed(name: &str) -> bool {
    armed().contains_key(name)
}

/// Reach the point `name`: if armed with `kill`, the process kills itself with SIGKILL here,
/// exactly as `kill -9` would, leaving whatever was written so far.
pub fn hit(name: &str) {
    let Some(action) = armed().get(name) else { return };
    if let Some(ms) = action.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
        tracing::warn!(failpoint = name, ms, "failpoint: sleeping");
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return;
    }
    let Some(("kill", nth)) = parse(name, action) else { return };
    if count_hit(name) == nth.unwrap_or(1) {
        tracing::warn!(failpoint = name, "failpoint: SIGKILL");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// `ACTION` or `ACTION@N` (the N-th hit only); a bad N arms nothing, and says so, so a test with
/// a typo does not pass untested.
fn parse<'a>(name: &str, action: &'a str) -> Option<(&'a str, Option<u64>)> {
    match action.split_once('@') {
        None => Some((action, None)),
        Some((kind, n)) => match n.parse() {
            Ok(n) => Some((kind, Some(n))),
            Err(_) => {
                tracing::error!(failpoint = name, action, "failpoint armed with a bad @N: not armed");
                None
            }
        },
    }
}

/// How often `name` has been reached, this hit included.
fn count_hit(name: &str) -> u64 {
    static HITS: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();
    let hits = HITS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = hits.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_string()).or_insert_with(|| AtomicU64::new(0)).fetch_add(1, Ordering::SeqCst) + 1
}

/// Reach the I/O point `name`: the error it is armed to return at this hit, if any. Stands in for
/// a disk that fails (`eio`) or a file system without sync semantics (`einval`, `enotsup`).
pub fn io_error(name: &str) -> Option<std::io::Error> {
    let (kind, nth) = parse(name, armed().get(name)?)?;
    let errno = match kind {
        "eio" => rustix::io::Errno::IO,
        "einval" => rustix::io::Errno::INVAL,
        "enotsup" => rustix::io::Errno::OPNOTSUPP,
        _ => return None,
    };
    let count = count_hit(name);
    if nth.is_some_and(|n| n != count) {
        return None;
    }
    tracing::warn!(failpoint = name, error = kind, "failpoint: I/O error");
    Some(std::io::Error::from_raw_os_error(errno.raw_os_error()))
}
