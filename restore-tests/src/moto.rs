//! moto's S3 server on loopback, one per test: an emulation of S3 (not a real object store),
//! used only for Object Lock and versions, which Garage lacks. Every other S3 test runs on Garage.
//!
//! The pinned `moto[server]` is installed into the test venv by `make test`
//! (scripts/ensure-python-deps.sh); a missing server fails the test, nothing is skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    child: Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The `admin` user's key once IAM is enforced: what [`Self::admin`] calls with.
    admin_user: std::sync::Mutex<Option<(String, String)>>,
}

fn venv_bin(name: &str) -> PathBuf {
    crate::test_deps().join("venv/bin").join(name)
}

impl Moto {
    /// Start a server and wait until it answers.
    pub fn start() -> Self {
        let server = venv_bin("moto_server");
        assert!(
            server.is_file(),
            "{} is missing: run scripts/ensure-python-deps.sh (make test does)",
            server.display()
        );
        let port = crate::free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("start moto_server");
        let mut moto =
            Self { child, log, endpoint: format!("http://127.0.0.1:{port}"), admin_user: Default::default() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = moto.child.try_wait() {
                panic!("moto_server exited ({st}): {}", moto.log());
            }
            assert!(Instant::now() < deadline, "moto_server did not listen in 60 s: {}", moto.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Run `restore-tests/py/moto_admin.py COMMAND ARGS` (boto3, the admin's or an attacker's
    /// calls) against this server; its JSON answer.
    pub fn admin(&self, args: &[&str]) -> serde_json::Value {
        let admin = self.admin_user.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.admin_as(admin.as_ref(), args)
    }

    /// [`Self::admin`] with an IAM user's `(key, secret)` (once [`Self::enforce_iam`] ran).
    pub fn admin_as(&self, user: Option<&(String, String)>, args: &[&str]) -> serde_json::Value {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/moto_admin.py");
        let mut cmd = Command::new(venv_bin("python"));
        if let Some((key, secret)) = user {
            cmd.env("MOTO_KEY", key).env("MOTO_SECRET", secret);
        }
        let out = cmd
            .arg(&script)
            .arg(&self.endpoint)
            .args(args)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "moto_admin {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("moto_admin {args:?}: {e}"))
    }

    /// Make a bucket: with Object Lock when `locked`, and a default retention (`GOVERNANCE` or
    /// `COMPLIANCE`, whole days) when given.
    pub fn bucket(&self, name: &str, locked: bool, default: Option<(&str, u32)>) {
        let days = default.map(|(_, d)| d.to_string());
        let mut args = vec!["create-bucket", name];
        if locked {
            args.push("locked");
        }
        if let (Some((mode, _)), Some(days)) = (default, days.as_deref()) {
            args.extend([mode, days]);
        }
        self.admin(&args);
    }

    /// `AWS_*` variables for the agent (moto takes any credentials until IAM is enforced).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_as(&("tresor-test".into(), "tresor-test-secret".into()))
    }

    /// `AWS_*` variables with an IAM user's `(key, secret)`.
    pub fn env_as(&self, (key, secret): &(String, String)) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.clone()),
        ]
    }

    /// Users `admin`, `agent` and `maintainer` with the policies of docs/policies/ for
    /// `bucket`/`prefix`, and `reader` (list and read only); each user's `(key, secret)` by name; from then on moto checks every
    /// request's signature and the policy of the user who signed it.
    pub fn enforce_iam(&self, bucket: &str, prefix: &str) -> std::collections::BTreeMap<String, (String, String)> {
        let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policies");
        let out = self.admin(&["iam-setup", bucket, prefix, policies.to_str().unwrap_or_default()]);
        let user = |name: &str| {
            let u = &out[name];
            (u["key"].as_str().unwrap_or_default().to_string(), u["secret"].as_str().unwrap_or_default().to_string())
        };
        *self.admin_user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user("admin"));
        ["admin", "agent", "maintainer", "reader"].into_iter().map(|n| (n.to_string(), user(n))).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
