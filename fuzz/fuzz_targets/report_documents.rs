//! Signed documents an auditor or the controller reads back: drill reports, audit-log entries and
//! checkpoints (as exported, one JSON value per line), public keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tresor_report::audit::ChainVerifier;
use tresor_report::drill::DrillReport;
use tresor_report::sign;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    if let Ok(report) = DrillReport::from_json(&text) {
        let _ = tresor_report::html::render(&report, tresor_report::html::Lang::De);
    }
    let _ = sign::public_key_from_pem(&text);
    let values: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for v in &values {
        let _ = sign::verify(v, &key);
        let _ = sign::signed_bytes(v);
    }
    // Lines starting with a checkpoint's type are checkpoints; the rest are entries.
    let (checkpoints, entries): (Vec<Value>, Vec<Value>) =
        values.into_iter().partition(|v| v.get("type").is_some_and(|t| t == "tresor.audit-checkpoint.v1"));
    let mut chain = ChainVerifier::new(&checkpoints, &key);
    if entries.iter().all(|e| chain.push(e).is_ok()) {
        let _ = chain.finish();
    }
});
