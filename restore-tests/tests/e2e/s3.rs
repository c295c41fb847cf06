//! The S3 backend against a real Garage server, directly and through the fault proxy, plus the
//! local backend through the same conformance suite.

use restore_tests::fault_proxy::{Fault, FaultProxy, Matcher};
use restore_tests::garage::Garage;
use restore_tests::{World, assert_same_tree, conformance, random_file};
use tresor_vault::backend::s3::{S3Backend, S3Options};
use tresor_vault::backend::{Backend, BackendError, local::LocalBackend};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Small parts, so the suite's 20 MiB object goes up as a multipart upload.
fn suite_options() -> S3Options {
    S3Options { multipart_threshold: 8 << 20, part_size: 5 << 20, ..S3Options::default() }
}

fn s3(g: &Garage, endpoint: &str, prefix: &str) -> S3Backend {
    let be = S3Backend::from_vars(&g.url(prefix), g.env_for(endpoint), suite_options()).unwrap();
    // Garage ignores If-None-Match on PUT (the init probe records create_once = false, see
    // cli_round_trip_on_garage); the vault then looks before it creates, and so does this test.
    be.check_before_create();
    be
}

/// The four faults a transfer survives by retrying.
const RETRIED_FAULTS: [Fault; 4] = [Fault::ServiceUnavailable, Fault::Reset, Fault::TruncateBody, Fault::ShortListing];

/// A fault proxy before `g` injecting [`RETRIED_FAULTS`] at random with `probability`; the seed is
/// printed (`TRESOR_FAULT_SEED` repeats a run).
fn faulty_proxy(g: &Garage, probability: f64) -> (FaultProxy, u64) {
    let proxy = FaultProxy::start(g.s3_addr);
    let seed = restore_tests::seed_from_env("TRESOR_FAULT_SEED", "fault");
    proxy.set_random(seed, probability, &RETRIED_FAULTS);
    (proxy, seed)
}

/// Every kind in [`RETRIED_FAULTS`] was injected at least once.
fn assert_each_fault_injected(proxy: &FaultProxy, seed: u64) {
    let injected = proxy.injected();
    println!("{} requests, faults injected: {injected:?}", proxy.requests());
    for f in RETRIED_FAULTS {
        assert!(injected.get(&f).copied().unwrap_or(0) > 0, "seed {seed}: no {f:?} was injected: {injected:?}");
    }
}

#[test]
fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(dir.path().to_path_buf());
    runtime().block_on(conformance::suite(&be));
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
    let missing = LocalBackend::new("/nonexistent/tresor-vault".into());
    runtime().block_on(async {
        assert!(matches!(missing.check_location().await, Err(BackendError::NoSuchLocation(_))));
        assert!(matches!(missing.list("data/").await, Err(BackendError::NoSuchLocation(_))));
    });
}

#[test]
fn garage_conforms() {
    let g = Garage::start();
    let be = s3(&g, &g.endpoint, "conformance");
    runtime().block_on(async {
        conformance::suite(&be).await;
        let missing = S3Backend::from_vars("s3://no-such-bucket/x", g.env(), S3Options::default()).unwrap();
        let r = missing.check_location().await;
        assert!(matches!(r, Err(BackendError::NoSuchLocation(_))), "{r:?}");
    });
}

#[test]
fn garage_conforms_through_faults() {
    let g = Garage::start();
    let (proxy, seed) = faulty_proxy(&g, 0.08);
    // Listings and whole-object reads are few: make sure those faults show up.
    proxy.add_rule(Matcher::on("GET", "list-type=2"), Fault::ShortListing, 2);
    proxy.add_rule(Matcher::on("GET", "/data/cd/big"), Fault::TruncateBody, 2);
    let be = s3(&g, &proxy.endpoint, "faulty");
    runtime().block_on(conformance::suite(&be));
    assert_each_fault_injected(&proxy, seed);
}

fn sample_tree(w: &World) -> std::path::PathBuf {
    let src = w.path("src");
    random_file(&src.join("model/weights.bin"), 40 << 20, 11);
    for i in 0..50 {
        random_file(&src.join(format!("docs/file{i:02}.txt")), 1000 + i * 37, 100 + i as u64);
    }
    std::fs::write(src.join("docs/empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/file00.txt", src.join("link")).unwrap();
    src
}

#[test]
fn cli_round_trip_on_garage() {
    let g = Garage::start();
    let mut w = World::empty();
    w.url = g.url("tresor/vault");
    w.env = g.env();
    let init = w.init();
    let caps = &init["config"]["capabilities"];
    assert_eq!(caps["backend"], "s3", "{init}");
    assert_eq!(
        caps["create_once"],
        false,
        "Garage {} ignores If-None-Match: {init}",
        restore_tests::garage::GARAGE_VERSION
    );
    assert_eq!(caps["delete"], true, "{init}");

    let src = sample_tree(&w);
    let b = w.backup(&[&src]);
    assert!(b["snapshot"].as_str().is_some_and(|s| s.len() == 64), "{b}");
    let check = w.json(&["check", "--vault", w.vault_str(), "--read-data"]);
    assert!(check["chunks_verified"].as_u64().unwrap() > 40, "{check}");
    let out = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    // An unchanged re-run uploads nothing.
    let again = w.backup(&[&src]);
    assert_eq!(again["manifest"]["summary"]["bytes_new"], 0, "{again}");
}

#[test]
fn cli_through_faults_retries_and_reports_transient_not_damage() {
    let g = Garage::start();
    let (proxy, seed) = faulty_proxy(&g, 0.1);
    // Beside the random faults, each kind at least once where it hurts most.
    proxy.add_rule(Matcher::on("PUT", "/data/"), Fault::ServiceUnavailable, 2);
    proxy.add_rule(Matcher::on("PUT", "/index/"), Fault::Reset, 1);
    proxy.add_rule(Matcher::on("PUT", "/snapshots/"), Fault::ServiceUnavailable, 1);
    proxy.add_rule(Matcher::on("GET", "/data/"), Fault::TruncateBody, 1);
    proxy.add_rule(Matcher::on("GET", "/data/"), Fault::Reset, 1);
    proxy.add_rule(Matcher::on("GET", "list-type=2"), Fault::ShortListing, 1);
    let w = World::on_s3(g.url("faulty"), g.env_for(&proxy.endpoint));
    let src = sample_tree(&w);
    w.backup(&[&src]);
    let out = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    proxy.clear_random();
    assert_each_fault_injected(&proxy, seed);

    // Bits flipped in transit: the pack is read again, verifies, and counts as transient.
    proxy.add_rule(Matcher::on("GET", "/data/"), Fault::FlipBody, 1);
    let check = w.run(&["--json", "check", "--vault", w.vault_str(), "--read-data"]);
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check.status.code(), Some(0), "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    assert!(
        !report["transient"].as_array().unwrap().is_empty(),
        "a flipped transfer must be reported as transient: {report}"
    );

    // A flipped snapshot manifest and a flipped chunk range on restore: read again, not damage.
    proxy.add_rule(Matcher::on("GET", "/snapshots/"), Fault::FlipBody, 1);
    proxy.add_rule(Matcher::on("GET", "/data/"), Fault::FlipBody, 1);
    let out2 = w.path("restored-again");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", out2.to_str().unwrap()]);
    assert_same_tree(&src, &out2.join(src.strip_prefix("/").unwrap()));
    assert!(proxy.injected()[&Fault::FlipBody] >= 3, "{:?}", proxy.injected());
}

/// A vault URL listing three endpoints: one refuses connections, one answers every request with
/// 503, the third is the server. The conformance suite passes, the backend settles on the third
/// and names the failover; the CLI does the same and says in `--json` which endpoint answered.
#[test]
fn several_endpoints_fail_over_on_connection_errors_and_5xx() {
    let g = Garage::start();
    let proxy = FaultProxy::start(g.s3_addr);
    proxy.set_random(1, 1.0, &[Fault::ServiceUnavailable]);
    let dead = format!("http://127.0.0.1:{}", restore_tests::free_port());
    let url = |prefix: &str| format!("{}?endpoint={dead}&endpoint={},{}", g.url(prefix), proxy.endpoint, g.endpoint);
    let env: Vec<(String, String)> = g.env().into_iter().filter(|(k, _)| k != "AWS_ENDPOINT_URL").collect();

    let be = S3Backend::from_vars(&url("suite"), env.clone(), suite_options()).unwrap();
    be.check_before_create();
    runtime().block_on(conformance::suite(&be));
    assert_eq!(be.endpoint().as_deref(), Some(g.endpoint.as_str()));
    let failover = be.endpoint_failover().unwrap_or_default();
    assert!(failover.contains(&proxy.endpoint) && failover.contains("moved on to"), "{failover}");
    assert!(proxy.total_injected() > 0, "the 503 endpoint was tried");

    let w = World::on_s3(url("cli"), env);
    let src = sample_tree(&w);
    let done = w.backup(&[&src]);
    assert_eq!(done["storage"]["endpoint"], g.endpoint, "{done}");
    assert_eq!(done["storage"]["location"], g.url("cli").trim_end_matches('/'), "{done}");
    let to = w.path("restored");
    w.ok(&["restore", "--vault", w.vault_str(), "latest", "--to", to.to_str().unwrap()]);
    assert_same_tree(&src, &to.join(src.strip_prefix("/").unwrap()));
    // A URL parameter Tresor does not know is refused, not ignored.
    let out = w.run(&["snapshots", "--vault", &format!("{}?endpont=http://x", g.url("cli"))]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown URL parameter"));
}
