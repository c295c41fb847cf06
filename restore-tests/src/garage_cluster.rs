//! A three-node Garage cluster on loopback (replication factor 3), set up as Garage's docs set up
//! a cluster: every node started with the same RPC secret, connected to the first, given a role
//! in its own zone, the layout applied; then a bucket and a key. Nodes can be killed with
//! SIGKILL, restarted on their data, or wiped and re-added with a new identity.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::garage::{cli, garage_bin, spawn_server, write_config};

/// One node: its directory, config, ports and process.
pub struct Node {
    dir: PathBuf,
    config: PathBuf,
    rpc: u16,
    /// `http://127.0.0.1:PORT` of its S3 API.
    pub endpoint: String,
    child: Option<Child>,
    /// Full node id (hex), as `garage node id` prints it before the `@`.
    pub id: String,
}

/// A running cluster with one bucket and one key that may read and write it.
pub struct GarageCluster {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    /// The nodes, in the order their endpoints are listed in [`Self::url`].
    pub nodes: Vec<Node>,
    layout_version: u32,
    /// The bucket made for the test.
    pub bucket: String,
    /// Access key id.
    pub key_id: String,
    /// Secret key.
    pub secret: String,
}

const NODES: usize = 3;

fn retry<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            Err(e) => panic!("{what} did not succeed in {timeout:?}: {e}"),
        }
    }
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let child = spawn_server(bin, &self.config, &self.dir.join("server.log"));
        self.child = Some(child);
        // `node id` reads a local file; `status` answers only once the server is up.
        let id = retry("garage node start", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("garage node exited ({st}): {}", self.log());
            }
            cli(bin, &self.config, &["status"])?;
            let out = cli(bin, &self.config, &["node", "id", "-q"])?;
            out.trim().split('@').next().filter(|id| id.len() == 64).map(str::to_string).ok_or(out)
        });
        self.id = id;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Data blocks this node stores on disk.
    pub fn blocks(&self) -> usize {
        crate::files_below(&self.dir.join("data")).len()
    }
}

impl GarageCluster {
    /// Start three nodes and join them into one cluster with replication factor 3.
    pub fn start() -> Self {
        let bin = garage_bin();
        let dir = tempfile::Builder::new().prefix("tresor-garage-cluster-").tempdir().expect("tempdir");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let (rpc, s3, admin) = (crate::free_port(), crate::free_port(), crate::free_port());
            let config = node_dir.join("garage.toml");
            write_config(&config, &node_dir, (rpc, s3, admin), &secret, NODES);
            let mut n = Node {
                dir: node_dir,
                config,
                rpc,
                endpoint: format!("http://127.0.0.1:{s3}"),
                child: None,
                id: String::new(),
            };
            n.start(&bin);
            nodes.push(n);
        }
        let mut c = Self {
            _dir: dir,
            bin,
            nodes,
            layout_version: 0,
            bucket: "tresor".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 1..NODES {
            c.connect(0, i);
        }
        for i in 0..NODES {
            let (admin, id) = (c.admin(), c.nodes[i].id[..16].to_string());
            c.garage(admin, &["layout", "assign", "-z", &format!("dc{}", i + 1), "-c", "1G", &id]);
        }
        c.apply_layout();
        let admin = c.admin();
        retry("bucket create", Duration::from_secs(60), || {
            cli(&c.bin, &c.nodes[admin].config, &["bucket", "create", "tresor"])
        });
        let out = c.garage(admin, &["key", "create", "tresor-test"]);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in `garage key create` output:\n{out}"))
        };
        (c.key_id, c.secret) = (field("Key ID:"), field("Secret key:"));
        c.garage(admin, &["bucket", "allow", "--read", "--write", "--owner", "tresor", "--key", "tresor-test"]);
        c.wait_healthy();
        c
    }

    /// A node that is up, to run admin commands through (the first one alive).
    fn admin(&self) -> usize {
        self.nodes.iter().position(|n| n.child.is_some()).expect("a live node")
    }

    fn garage(&self, node: usize, args: &[&str]) -> String {
        cli(&self.bin, &self.nodes[node].config, args).unwrap_or_else(|e| panic!("{e}\n{}", self.nodes[node].log()))
    }

    fn connect(&self, from: usize, to: usize) {
        let peer = format!("{}@127.0.0.1:{}", self.nodes[to].id, self.nodes[to].rpc);
        retry("node connect", Duration::from_secs(30), || {
            cli(&self.bin, &self.nodes[from].config, &["node", "connect", &peer])
        });
    }

    fn apply_layout(&mut self) {
        self.layout_version += 1;
        let v = self.layout_version.to_string();
        self.garage(self.admin(), &["layout", "apply", "--version", &v]);
    }

    /// Wait until every live node reports all live nodes healthy in `garage status`.
    pub fn wait_healthy(&self) {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        retry("cluster healthy", Duration::from_secs(60), || {
            for n in &live {
                let out = cli(&self.bin, &n.config, &["status"])?;
                let healthy = out.split("==== FAILED NODES ====").next().unwrap_or_default();
                if let Some(missing) = live.iter().find(|m| !healthy.contains(&m.id[..16])) {
                    return Err(format!(
                        "node {} is not healthy as seen from {}:\n{out}",
                        &missing.id[..16],
                        &n.id[..16]
                    ));
                }
            }
            Ok(())
        });
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Start node `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        let bin = self.bin.clone();
        self.nodes[i].start(&bin);
        self.connect(i, (i + 1) % NODES);
        self.wait_healthy();
    }

    /// Node `i` loses its disks: killed, its metadata and data removed, started with a new
    /// identity, connected, given the old node's role in the layout; then Garage's own repair
    /// (`repair tables`, `repair blocks` on all nodes) fills it again.
    pub fn wipe_and_readd(&mut self, i: usize) {
        self.kill(i);
        let old = self.nodes[i].id.clone();
        for sub in ["meta", "data"] {
            let _ = std::fs::remove_dir_all(self.nodes[i].dir.join(sub));
        }
        let bin = self.bin.clone();
        self.nodes[i].start(&bin);
        let admin = (i + 1) % NODES;
        self.connect(admin, i);
        self.garage(admin, &["layout", "remove", &old[..16]]);
        let new = self.nodes[i].id[..16].to_string();
        self.garage(admin, &["layout", "assign", "-z", &format!("dc{}", i + 1), "-c", "1G", &new]);
        self.layout_version += 1;
        let v = self.layout_version.to_string();
        self.garage(admin, &["layout", "apply", "--version", &v]);
        // The removed node never acknowledges the new layout: tell the cluster it is gone.
        let _ = cli(
            &self.bin,
            &self.nodes[admin].config,
            &["layout", "skip-dead-nodes", "--version", &v, "--allow-missing-data"],
        );
        self.wait_healthy();
        retry("the new layout to be the only live one", Duration::from_secs(120), || {
            let out = cli(&self.bin, &self.nodes[admin].config, &["layout", "history"])?;
            if out.contains("single live layout version") { Ok(()) } else { Err(out) }
        });
        self.garage(admin, &["repair", "--all-nodes", "--yes", "tables"]);
        self.garage(admin, &["repair", "--all-nodes", "--yes", "blocks"]);
    }

    /// A vault URL in the bucket that lists every node's endpoint, in order.
    pub fn url(&self, prefix: &str) -> String {
        let endpoints: Vec<String> = self.nodes.iter().map(|n| format!("endpoint={}", n.endpoint)).collect();
        format!("s3://{}/{prefix}?{}", self.bucket, endpoints.join("&"))
    }

    /// `AWS_*` variables for the cluster's key (the endpoints are in the URL).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().enumerate().map(|(i, n)| format!("--- node {i}\n{}", n.log())).collect()
    }
}

// Each node stops with its own drop, also those started before a failed set-up finished.
impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
