//! Helpers for the end-to-end tests: run the real binaries, build awkward trees, compare trees.

pub mod conformance;
pub mod fault_proxy;
pub mod garage;
pub mod garage_cluster;
pub mod moto;
pub mod pg;
pub mod plane;
pub mod qdrant_fake;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{RngCore, SeedableRng};

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
}

/// Path of a workspace binary built by `cargo build --bins` (the Makefile builds them first).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (make test does) before the end-to-end tests",
        p.display()
    );
    p
}

/// A scratch world for one test: a vault directory, a cache directory and a password.
pub struct World {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// Vault location.
    pub vault: PathBuf,
    /// Agent cache.
    pub cache: PathBuf,
    /// Password for the vault.
    pub password: String,
    /// The vault URL given to the agent (the directory, unless the world is on S3).
    pub url: String,
    /// Extra environment for the agent (the `AWS_*` variables of an S3 world).
    pub env: Vec<(String, String)>,
}

impl World {
    /// A new world with an initialised vault.
    pub fn new() -> Self {
        let w = Self::empty();
        w.init();
        w
    }

    /// `init` the vault, writing the escrow key file to [`Self::escrow`]; returns init's JSON.
    pub fn init(&self) -> serde_json::Value {
        self.json(&[
            "init",
            "--vault",
            self.vault_str(),
            "--escrow-key-out",
            self.escrow().to_str().unwrap_or_default(),
        ])
    }

    /// A new world without a vault yet (the vault directory exists, empty).
    pub fn empty() -> Self {
        let dir = tempfile::Builder::new().prefix("tresor-e2e-").tempdir().expect("tempdir");
        let vault = dir.path().join("vault");
        std::fs::create_dir_all(&vault).expect("vault dir");
        let cache = dir.path().join("cache");
        let url = vault.to_str().unwrap_or_default().to_string();
        Self { vault, cache, password: "correct horse battery staple".into(), dir, url, env: Vec::new() }
    }

    /// Where `init` wrote the escrow key file.
    pub fn escrow(&self) -> PathBuf {
        self.dir.path().join("escrow.key")
    }

    /// A world whose vault is `url` on S3, reached with `env`; initialised.
    pub fn on_s3(url: String, env: Vec<(String, String)>) -> Self {
        let mut w = Self::empty();
        w.url = url;
        w.env = env;
        w.init();
        w
    }

    /// The vault URL.
    pub fn vault_str(&self) -> &str {
        &self.url
    }

    /// A path inside the world.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for the agent with this world's password and cache.
    pub fn agent(&self) -> Command {
        let mut c = Command::new(bin("tresor-agent"));
        c.env("TRESOR_PASSWORD", &self.password)
            .env("TRESOR_CACHE_DIR", &self.cache)
            .env_remove("TRESOR_FAILPOINTS")
            .env_remove("TRESOR_ESCROW_KEY_FILE")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Run the agent; return its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.agent().args(args).output().expect("agent runs")
    }

    /// Run the agent with the password from `file` instead of `TRESOR_PASSWORD`.
    pub fn run_with_password_file(&self, file: &Path, args: &[&str]) -> Output {
        self.agent()
            .env_remove("TRESOR_PASSWORD")
            .arg("--password-file")
            .arg(file)
            .args(args)
            .output()
            .expect("agent runs")
    }

    /// Run the agent and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tresor-agent {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run with `--json` and require success.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }

    /// Back up `paths`; returns the backup's JSON.
    pub fn backup(&self, paths: &[&Path]) -> serde_json::Value {
        let mut a = vec!["backup", "--vault", self.vault_str()];
        a.extend(paths.iter().map(|p| p.to_str().unwrap_or_default()));
        self.json(&a)
    }

    /// Snapshot ids.
    pub fn snapshot_ids(&self) -> Vec<String> {
        // Unreadable snapshots make the command exit non-zero but are still listed.
        // Anything but a JSON list is a failure, so "no snapshot" can never come from a broken run.
        let out = self.run(&["--json", "snapshots", "--vault", self.vault_str()]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("snapshots --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
        });
        let list = v.as_array().unwrap_or_else(|| panic!("snapshots --json printed no list: {v}"));
        list.iter()
            .map(|s| s["id"].as_str().unwrap_or_else(|| panic!("snapshot without id: {s}")).to_string())
            .collect()
    }

    /// Total bytes of packs in the vault.
    pub fn stored_bytes(&self) -> u64 {
        dir_bytes(&self.vault.join("data"))
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Sum of file sizes below `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    files_below(dir).iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum()
}

/// Files below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A seed from the environment variable `var` (to repeat a failed run), else random; printed.
pub fn seed_from_env(var: &str, what: &str) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("{what} seed {seed} (repeat with {var}={seed})");
    seed
}

/// Write `len` seeded random bytes to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, buf).expect("write random file");
}

/// What a tree entry looks like, for comparing a source with its restored copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    /// Kind and content digest.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime in ns (not for symlinks on file systems without lutimes; always compared here).
    pub mtime_ns: i64,
    /// Size.
    pub size: u64,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Index of the hardlink group (first path sharing the inode).
    pub link_group: Option<Vec<u8>>,
}

fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 8192];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names) else { return out };
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut v = vec![0u8; 65536];
        if let Ok(l) = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v) {
            v.truncate(l);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

/// Facts about every entry below `root`, keyed by relative path bytes.
pub fn tree_facts(root: &Path) -> BTreeMap<Vec<u8>, EntryFacts> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(root).unwrap_or(&p).as_os_str().as_bytes().to_vec();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "symlink:{}",
                String::from_utf8_lossy(std::fs::read_link(&p).expect("readlink").as_os_str().as_bytes())
            )
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            let mut h = blake3::Hasher::new();
            let f = std::fs::File::open(&p).expect("open");
            h.update_reader(f).expect("read");
            format!("file:{}", h.finalize().to_hex())
        };
        let link_group = (ft.is_file() && md.nlink() > 1)
            .then(|| inodes.entry((md.dev(), md.ino())).or_insert_with(|| rel.clone()).clone());
        let facts = EntryFacts {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            size: if ft.is_dir() { 0 } else { md.len() },
            xattrs: xattrs_of(&p),
            link_group,
        };
        out.insert(rel, facts);
    }
    out
}

/// Assert two trees are equal, naming the first difference.
pub fn assert_same_tree(source: &Path, restored: &Path) {
    let a = tree_facts(source);
    let b = tree_facts(restored);
    for (path, fa) in &a {
        let name = String::from_utf8_lossy(path);
        let fb = b.get(path).unwrap_or_else(|| panic!("{name} missing from the restored tree"));
        // The root directory itself was created by the test, not restored from metadata.
        if path.is_empty() {
            continue;
        }
        assert_eq!(fa, fb, "entry {name} differs");
    }
    let extra: Vec<_> =
        b.keys().filter(|k| !a.contains_key(*k)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert!(extra.is_empty(), "restored tree has extra entries: {extra:?}");
}

/// Disk blocks (512-byte units) used by a file.
pub fn blocks(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks()
}

/// Where `scripts/ensure-python-deps.sh` put the Python venv and the real model files. Missing
/// dependencies fail the test loudly: the suite never skips.
pub fn test_deps() -> PathBuf {
    let dir = std::env::var_os("TRESOR_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tresor-test-deps"));
    assert!(
        dir.join("weights").is_dir() && dir.join("venv/bin/python").is_file(),
        "the source tests need {}: run scripts/ensure-python-deps.sh (make test does)",
        dir.display()
    );
    dir
}

/// The controller's `/metrics` text on `port`.
pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("metrics request");
    let mut m = String::new();
    let _ = s.read_to_string(&mut m);
    m
}

/// tresorctl with no controller, token or CA settings: the offline commands.
pub fn ctl_offline(args: &[&str]) -> Output {
    Command::new(bin("tresorctl"))
        .env_remove("TRESOR_CONTROLLER")
        .env_remove("TRESOR_TOKEN_FILE")
        .env_remove("TRESOR_CA_FILE")
        .args(args)
        .output()
        .expect("tresorctl runs")
}

/// A port free on loopback right now (a test server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Commit a snapshot whose tree is exactly `nodes`, as any key holder of the vault could write
/// one with the library: nothing checks its shape on the way in. Each `(path, bytes)` of
/// `contents` becomes the data of the file node with that path. Returns the snapshot id.
pub fn commit_crafted_tree(
    w: &World,
    mut nodes: Vec<tresor_vault::snapshot::Node>,
    contents: &[(&str, &[u8])],
) -> String {
    use tresor_vault::backup::{BackupOptions, BackupSession};
    use tresor_vault::snapshot::{Extent, Summary};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let secret = tresor_vault::Secret::Password(zeroize::Zeroizing::new(w.password.clone().into_bytes()));
        let backend = tresor_vault::backend::from_url(w.vault_str()).expect("vault url");
        let vault = std::sync::Arc::new(tresor_vault::Vault::open(backend, &secret).await.expect("open vault"));
        let index = vault.sync_index(&w.path("crafting-cache")).await.expect("index");
        let opts = BackupOptions { host: "crafted".into(), source: "files".into(), ..BackupOptions::default() };
        let session = BackupSession::start(vault, index, opts).await.expect("session");
        // The sink blocks (it may read a pack's directory): it runs off the runtime.
        let sink = session.sink();
        let owned: Vec<(String, Vec<u8>)> = contents.iter().map(|(p, b)| (p.to_string(), b.to_vec())).collect();
        let stored_all = tokio::task::spawn_blocking(move || {
            owned.into_iter().map(|(p, b)| (p, sink.store_stream(&b[..]).expect("store"))).collect::<Vec<_>>()
        })
        .await
        .expect("store task");
        for (path, stored) in stored_all {
            for n in nodes.iter_mut().filter(|n| n.path == path.as_bytes()) {
                n.size = stored.len;
                n.hash = Some(stored.hash.to_vec());
                n.extents = vec![Extent { offset: 0, chunks: stored.chunks.clone() }];
            }
        }
        let (id, _) = session.commit(nodes, Summary::default(), Vec::new()).await.expect("commit");
        id.to_string()
    })
}
