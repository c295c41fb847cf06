//! A control plane on loopback for end-to-end tests: a real `tresor-controller`, real
//! `tresor-agent run` daemons enrolled with one-time tokens, and `tresorctl`. Everything lives in
//! one scratch directory; every process is killed when the `Plane` is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// One vault an agent lists in its agent.toml.
#[derive(Clone)]
pub struct VaultSpec {
    /// Name in policies.
    pub name: String,
    /// URL.
    pub url: String,
    /// Password file of this agent's key slot.
    pub password_file: PathBuf,
    /// Extra environment (`AWS_*`).
    pub env: Vec<(String, String)>,
}

/// A running (or stopped) agent daemon.
pub struct AgentProc {
    /// Its agent.toml.
    pub config: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Environment for the daemon.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// The control plane.
pub struct Plane {
    /// Scratch directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Controller port.
    pub port: u16,
    /// controller.toml.
    pub controller_toml: PathBuf,
    /// The controller's state directory.
    pub state: PathBuf,
    controller: Option<Child>,
    starts: u32,
    /// Agents by name.
    pub agents: BTreeMap<String, AgentProc>,
    /// The `restore_roots` of agents added from now on (default: this plane's directory).
    pub restore_roots: Vec<PathBuf>,
    /// Top-level agent.toml lines of agents added from now on (before any table).
    pub agent_settings: String,
}

/// Wait until `f` holds, polling every 200 ms; panics with `what` and the time waited.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {:?} waiting for {what}", timeout);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(child: &mut Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Plane {
    /// Start a controller with `extra` appended to its controller.toml (short heartbeats and
    /// leases by default).
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("tresor-plane-").tempdir().expect("tempdir");
        let port = crate::free_port();
        let state = dir.path().join("controller");
        let controller_toml = dir.path().join("controller.toml");
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nserver_names = [\"127.0.0.1\"]\n",
            state.display()
        );
        if !extra.contains("heartbeat") {
            toml.push_str("heartbeat = \"1s\"\n");
        }
        if !extra.contains("lease") {
            toml.push_str("lease = \"15s\"\n");
        }
        if !extra.contains("retry_backoff") {
            toml.push_str("retry_backoff = \"1s\"\n");
        }
        toml.push_str(extra);
        std::fs::write(&controller_toml, toml).expect("controller.toml");
        let restore_roots = vec![dir.path().to_path_buf()];
        let mut p = Self {
            dir,
            port,
            controller_toml,
            state,
            controller: None,
            starts: 0,
            agents: BTreeMap::new(),
            restore_roots,
            agent_settings: String::new(),
        };
        p.start_controller();
        p
    }

    /// A gRPC channel to the controller that trusts its CA, speaking as the agent whose state
    /// directory is `agent` (its certificate and key) when given: a client of the test's own, for
    /// what no real agent or tresorctl would send.
    pub async fn channel(&self, agent: Option<&Path>) -> tonic::transport::Channel {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(self.state.join("ca.pem"))))
            .domain_name("127.0.0.1");
        if let Some(dir) = agent {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(dir.join("agent.pem")),
                read(dir.join("agent.key")),
            ));
        }
        let ch = tonic::transport::Channel::from_shared(self.url()).expect("controller URL");
        ch.tls_config(tls).expect("TLS settings").connect().await.expect("the controller answers")
    }

    /// The controller's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The controller's log of its `n`-th start (1-based).
    pub fn controller_log(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("controller-{n}.log"))).unwrap_or_default()
    }

    /// How many times the controller was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Start the controller and wait until it answers.
    pub fn start_controller(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("controller-{}.log", self.starts))).expect("log");
        let child = Command::new(bin("tresor-controller"))
            .args(["serve", "--config"])
            .arg(&self.controller_toml)
            .env("TRESOR_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("controller starts");
        self.controller = Some(child);
        let n = self.starts;
        wait_for("the controller to listen", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = self.controller.as_mut().map(Child::try_wait) {
                panic!("the controller exited ({st}):\n{}", self.controller_log(n));
            }
            self.controller_log(n).contains("listening on")
        });
    }

    /// `kill -9` the controller.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
        }
    }

    /// Run tresorctl with the admin token (or `token_file`).
    pub fn ctl_as(&self, token_file: &Path, args: &[&str]) -> Output {
        Command::new(bin("tresorctl"))
            .env("TRESOR_CONTROLLER", self.url())
            .env("TRESOR_CA_FILE", self.state.join("ca.pem"))
            .env("TRESOR_TOKEN_FILE", token_file)
            .env("HOME", self.dir.path())
            .args(args)
            .output()
            .expect("tresorctl runs")
    }

    /// Run tresorctl as the first admin.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(&self.state.join("admin.token"), args)
    }

    /// Run tresorctl as admin and require success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "tresorctl {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// tresorctl --json as admin.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from tresorctl {args:?}: {e}\n{out}"))
    }

    /// A new token of `role`, written to a file; returns the file.
    pub fn token_file(&self, role: &str, ttl: Option<&str>) -> PathBuf {
        let mut args = vec!["token", "create", "--role", role];
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let v = self.ctl_json(&args);
        let token = v["token"].as_str().expect("token").to_string();
        let path = self.dir.path().join(format!("{role}-{}.token", rand::random::<u32>()));
        std::fs::write(&path, token).expect("token file");
        path
    }

    /// Make a vault in `dir` (or at `spec.url`) with a first key slot for `password_file`.
    pub fn init_vault(&self, url: &str, password_file: &Path, env: &[(String, String)]) {
        let escrow = self.dir.path().join(format!("escrow-{}.key", rand::random::<u32>()));
        let out = Command::new(bin("tresor-agent"))
            .args(["init", "--vault", url, "--password-file"])
            .arg(password_file)
            .arg("--escrow-key-out")
            .arg(&escrow)
            .envs(env.iter().cloned())
            .output()
            .expect("init runs");
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A new folder vault `dir` (below the plane) with a first key slot for a new password named
    /// `who`; returns how an agent lists it as `name`.
    pub fn folder_vault(&self, dir: &str, name: &str, who: &str) -> VaultSpec {
        let path = self.dir.path().join(dir);
        std::fs::create_dir_all(&path).expect("vault dir");
        let url = path.to_str().expect("utf-8 path").to_string();
        let password_file = self.password_file(who);
        self.init_vault(&url, &password_file, &[]);
        VaultSpec { name: name.into(), url, password_file, env: vec![] }
    }

    /// Write a password file.
    pub fn password_file(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.password"));
        std::fs::write(&p, format!("password of {name} {}\n", rand::random::<u64>())).expect("password");
        p
    }

    /// Add a key slot for `new_password` to a vault opened with `password`.
    pub fn add_key(&self, url: &str, password: &Path, new_password: &Path, env: &[(String, String)]) {
        let out = Command::new(bin("tresor-agent"))
            .args(["key", "add", "--vault", url, "--password-file"])
            .arg(password)
            .arg("--new-password-file")
            .arg(new_password)
            .envs(env.iter().cloned())
            .output()
            .expect("key add runs");
        assert!(out.status.success(), "key add failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Enroll an agent `name` listing `vaults`, and start its daemon (with `env`).
    pub fn add_agent(&mut self, name: &str, vaults: &[VaultSpec], env: &[(&str, &str)]) {
        self.add_agent_toml(name, vaults, env, "");
    }

    /// [`Self::add_agent`] with `extra` appended to its agent.toml (source hooks).
    pub fn add_agent_toml(&mut self, name: &str, vaults: &[VaultSpec], env: &[(&str, &str)], extra: &str) {
        let state = self.dir.path().join(format!("agent-{name}"));
        let config = self.dir.path().join(format!("agent-{name}.toml"));
        let roots: Vec<String> = self.restore_roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
        let mut toml = format!(
            "name = \"{name}\"\nstate_dir = \"{}\"\nrestore_roots = [{}]\n{}",
            state.display(),
            roots.join(", "),
            self.agent_settings
        );
        let mut daemon_env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for v in vaults {
            toml.push_str(&format!(
                "[vaults.{}]\nurl = \"{}\"\npassword_file = \"{}\"\n",
                v.name,
                v.url,
                v.password_file.display()
            ));
            daemon_env.extend(v.env.iter().cloned());
        }
        toml.push_str(extra);
        std::fs::write(&config, toml).expect("agent.toml");
        let token = self.token_file("agent", Some("10m"));
        let out = Command::new(bin("tresor-agent"))
            .args(["enroll", "--controller", &self.url(), "--token-file"])
            .arg(&token)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("enroll runs");
        assert!(
            out.status.success(),
            "enroll of {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let _ = self.agents.insert(name.to_string(), AgentProc { config, state, log, env: daemon_env, child: None });
        self.start_agent(name);
        self.wait_connected(name);
    }

    /// Start (again) an enrolled agent's daemon.
    pub fn start_agent(&mut self, name: &str) {
        self.start_agent_with(name, &[]);
    }

    /// Start an agent's daemon with extra environment (failpoints).
    pub fn start_agent_with(&mut self, name: &str, extra: &[(&str, &str)]) {
        let a = self.agents.get_mut(name).expect("known agent");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&a.log).expect("log");
        let child = Command::new(bin("tresor-agent"))
            .args(["run", "--config"])
            .arg(&a.config)
            .env("TRESOR_LOG", "info")
            .env_remove("TRESOR_FAILPOINTS")
            .envs(a.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent starts");
        a.child = Some(child);
    }

    /// Send a signal to an agent's daemon.
    pub fn signal_agent(&mut self, name: &str, signal: rustix::process::Signal) {
        let a = self.agents.get_mut(name).expect("known agent");
        if let Some(c) = a.child.as_mut() {
            kill(c, signal);
        }
    }

    /// `kill -9` an agent and reap it.
    pub fn kill_agent(&mut self, name: &str) {
        let a = self.agents.get_mut(name).expect("known agent");
        if let Some(mut c) = a.child.take() {
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
        }
    }

    /// Whether an agent's daemon has exited.
    pub fn agent_exited(&mut self, name: &str) -> bool {
        let a = self.agents.get_mut(name).expect("known agent");
        a.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// An agent's log.
    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.agents[name].log).unwrap_or_default()
    }

    /// The `tresorctl agents --json` row of `name`.
    pub fn agent_row(&self, name: &str) -> serde_json::Value {
        let v = self.ctl_json(&["agents"]);
        v.as_array().and_then(|a| a.iter().find(|r| r["name"] == name).cloned()).unwrap_or_default()
    }

    /// Wait until the agent's job stream is open and it reported its vaults.
    pub fn wait_connected(&self, name: &str) {
        wait_for(&format!("agent {name} to connect"), Duration::from_secs(60), || {
            let r = self.agent_row(name);
            r["connected"] == true && r["last_seen_unix"].as_i64().unwrap_or(0) > 0
        });
    }

    /// Apply a policy given as text.
    pub fn apply_policy(&self, text: &str) -> Output {
        let path = self.dir.path().join(format!("policy-{}.toml", rand::random::<u32>()));
        std::fs::write(&path, text).expect("policy");
        self.ctl(&["policy", "apply", path.to_str().unwrap_or_default()])
    }

    /// Snapshots of a selector from the catalog.
    pub fn snapshots(&self, selector: &str) -> Vec<serde_json::Value> {
        self.ctl_json(&["snapshots", selector]).as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            if let Some(mut c) = a.child.take() {
                kill(&mut c, rustix::process::Signal::CONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // Keep the evidence of a failed test.
            eprintln!("--- controller log (last start) ---\n{}", self.controller_log(self.starts));
            for (name, a) in &self.agents {
                eprintln!("--- agent {name} log ---\n{}", std::fs::read_to_string(&a.log).unwrap_or_default());
            }
        }
    }
}
