//! `tresorctl report verify` works offline, with only the file and the pinned public key, and
//! detects a changed report, an unsigned one and one signed by another key (exit 9).

use ed25519_dalek::SigningKey;
use serde_json::json;
use tresor_report::sign;

#[test]
fn report_verify_offline_detects_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let pem = dir.path().join("report-signing.pub.pem");
    std::fs::write(&pem, sign::public_key_pem(&key.verifying_key())).unwrap();
    let mut report = json!({
        "type": "tresor.drill-report.v1", "drill": "d-42", "source": "gpu-01/models",
        "verdict": "PASS", "rto": {"measured_s": 41.2, "target_s": 3600}, "checks": [{"name": "structure", "result": "PASS"}]
    });
    sign::sign(&mut report, &key).unwrap();
    let file = dir.path().join("report.json");
    let verify = |doc: &serde_json::Value| {
        std::fs::write(&file, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        // No controller, no token, no configuration: the check is offline.
        let out = restore_tests::ctl_offline(&[
            "report",
            "verify",
            file.to_str().unwrap(),
            "--pubkey",
            pem.to_str().unwrap(),
        ]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = verify(&report);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("signature valid"), "{text}");

    let mut changed = report.clone();
    changed["rto"]["measured_s"] = json!(4.2);
    let (code, text) = verify(&changed);
    assert_eq!(code, Some(9), "{text}");
    assert!(text.contains("changed after it was signed"), "{text}");

    let mut unsigned = report.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    let (code, text) = verify(&unsigned);
    assert_eq!(code, Some(9), "{text}");
    assert!(text.contains("carries no signature"), "{text}");

    let mut other = changed.clone();
    sign::sign(&mut other, &SigningKey::from_bytes(&[8; 32])).unwrap();
    let (code, text) = verify(&other);
    assert_eq!(code, Some(9));
    assert!(text.contains("not by the pinned key"), "{text}");
}
