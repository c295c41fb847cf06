//! A real Garage S3 server on loopback, one per test, in a scratch directory.
//!
//! The pinned version is installed by `make test` (scripts/ensure-test-deps.sh). A missing binary
//! fails the test: nothing here is skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Garage version the suite is pinned to.
pub const GARAGE_VERSION: &str = "2.5.0";

/// A running single-node Garage with one bucket and one key that may read and write it.
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    /// The S3 API's address.
    pub s3_addr: std::net::SocketAddr,
    /// The bucket made for the test.
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// Secret key.
    pub secret: String,
}

/// Write a node's config: its directory holds `meta/` and `data/`.
pub(crate) fn write_config(
    config: &Path,
    dir: &Path,
    (rpc, s3, admin): (u16, u16, u16),
    secret: &str,
    replication: usize,
) {
    std::fs::write(
        config,
        format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secret}"
"#,
            d = dir.display()
        ),
    )
    .expect("write garage.toml");
}

/// `cmd` without the `GARAGE_*` variables of the caller's environment (an operator's
/// `GARAGE_RPC_HOST` or `GARAGE_RPC_SECRET` would point the test's commands at a real cluster).
fn without_garage_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GARAGE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `garage -c CONFIG server`, its output appended to `log`.
pub(crate) fn spawn_server(bin: &Path, config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    without_garage_env(Command::new(bin))
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start garage server")
}

/// `garage -c CONFIG ARGS`: its stdout, or what it said when it failed.
pub(crate) fn cli(bin: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let out = without_garage_env(Command::new(bin)).arg("-c").arg(config).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("garage {args:?}: {e}")),
    }
}

pub(crate) fn garage_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).find(|p| p.is_file()))
        .unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage"));
    let bin = on_path.or(home.filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!("garage {GARAGE_VERSION} is not installed: run `make test` (it installs it) or `cargo install garage --locked --version {GARAGE_VERSION}`")
    });
    let out = Command::new(&bin).arg("--version").output().expect("garage --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(GARAGE_VERSION),
        "{} is {version}, the suite is pinned to {GARAGE_VERSION}",
        bin.display()
    );
    bin
}

impl Garage {
    /// Start a server, lay out its one node, and make a bucket and a key.
    pub fn start() -> Self {
        let bin = garage_bin();
        let dir = tempfile::Builder::new().prefix("tresor-garage-").tempdir().expect("tempdir");
        let (rpc, s3, admin) = (crate::free_port(), crate::free_port(), crate::free_port());
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let config = dir.path().join("garage.toml");
        write_config(&config, dir.path(), (rpc, s3, admin), &secret, 1);
        let child = spawn_server(&bin, &config, &dir.path().join("server.log"));
        let mut g = Self {
            child,
            dir,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            s3_addr: format!("127.0.0.1:{s3}").parse().expect("addr"),
            bucket: "tresor".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        g.set_up(&bin);
        g
    }

    fn cli(&self, bin: &Path, args: &[&str]) -> Result<String, String> {
        cli(bin, &self.config, args)
    }

    fn set_up(&mut self, bin: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // `node id` reads a local file; `status` answers only once the server is up.
        let node = loop {
            match self.cli(bin, &["status"]).and_then(|_| self.cli(bin, &["node", "id", "-q"])) {
                Ok(out) if out.contains('@') => break out.trim().split('@').next().unwrap_or_default().to_string(),
                r => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        panic!("garage server exited ({st}): {}", self.log());
                    }
                    assert!(Instant::now() < deadline, "garage did not come up in 60 s: {r:?}\n{}", self.log());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let step = |args: &[&str]| self.cli(bin, args).unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        step(&["layout", "assign", "-z", "dc1", "-c", "10G", &node[..16]]);
        step(&["layout", "apply", "--version", "1"]);
        // The layout takes a moment to reach the S3 API: retry bucket creation until it sticks.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.cli(bin, &["bucket", "create", &self.bucket]) {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e}\n{}", self.log());
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        let out = step(&["key", "create", "tresor-test"]);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in `garage key create` output:\n{out}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        step(&["bucket", "allow", "--read", "--write", "--owner", &self.bucket, "--key", "tresor-test"]);
        self.key_id = key_id;
        self.secret = secret;
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `AWS_*` variables that point a client at `endpoint` (the server or a proxy before it).
    pub fn env_for(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.to_string()),
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    /// `AWS_*` variables for the server itself.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.endpoint)
    }

    /// A vault URL in this server's bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
