//! Named crash points for fault-injection tests.
//!
//! `TRESOR_FAILPOINTS="after-pack-put=kill,flip-after-encrypt=on"` arms them. The variable is read
//! once; unarmed points cost one relaxed load. Names are listed in docs/ARCHITECTURE.md.

use std::collections::HashMap;
use std::sync::OnceLock;

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

/// Whether `name` is armed (any action).
pub fn is_armed(name: &str) -> bool {
    armed().contains_key(name)
}

/// Reach the point `name`: if armed with `kill`, the process kills itself with SIGKILL here,
/// exactly as `kill -9` would, leaving whatever was written so far.
pub fn hit(name: &str) {
    if armed().get(name).is_some_and(|a| a == "kill") {
        tracing::warn!(failpoint = name, "failpoint: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
