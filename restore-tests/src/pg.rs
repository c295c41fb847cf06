//! Scratch PostgreSQL clusters for tests: `initdb --data-checksums` run as the postgres user in a
//! temporary directory, started on a free port with a private socket directory and loopback TCP
//! (scram passwords over TCP, trust on the socket). Stopped when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use tresor_sources::postgres::tools;

/// The test password of the `postgres` role over TCP.
pub const PASSWORD: &str = "tresor-test-pw";

/// A running scratch cluster.
pub struct PgCluster {
    /// Holds everything.
    pub dir: tempfile::TempDir,
    /// The data directory.
    pub data: PathBuf,
    /// The socket directory.
    pub sock: PathBuf,
    /// The port.
    pub port: u16,
    bin: PathBuf,
}

/// PostgreSQL's programs (the newest installed, as the agent picks them); the suite fails loudly
/// without them (make test installs them).
pub fn bin_dir() -> PathBuf {
    tools::bin_dir(None, None).expect(
        "PostgreSQL server binaries under /usr/lib/postgresql/*/bin: run scripts/ensure-test-deps.sh (make test does)",
    )
}

/// The uid of user `name` on this host.
pub fn uid_of(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("a user {name} on this host"))
}

fn postgres_uid() -> u32 {
    uid_of("postgres")
}

fn as_postgres(program: &Path) -> Command {
    let uid = postgres_uid();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}")).arg("--regid=postgres").arg("--clear-groups").arg("--").arg(program);
    c
}

fn chown_postgres(p: &Path) {
    let out = Command::new("chown").arg("postgres:postgres").arg(p).output().expect("chown runs");
    assert!(out.status.success(), "chown postgres {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
}

fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PgCluster {
    /// initdb (checksums on) and start.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("tresor-pg-").tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (data, sock) = (dir.path().join("pgdata"), dir.path().join("sock"));
        for d in [&data, &sock] {
            std::fs::create_dir(d).unwrap();
            chown_postgres(d);
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        chown_postgres(&pwfile);
        must(
            as_postgres(&bin.join("initdb"))
                .args(["--data-checksums", "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-D"])
                .arg(&data)
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .unwrap(),
            "initdb",
        );
        let port = crate::free_port();
        let c = Self { dir, data, sock, port, bin };
        c.pg_ctl_start();
        c
    }

    /// Start the server again after [`Self::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// Turn data checksums off (the server must be stopped): damage then goes unnoticed by the
    /// server and by pg_basebackup, as on a cluster made without them.
    pub fn disable_checksums(&self) {
        must(
            as_postgres(&self.bin.join("pg_checksums")).args(["--disable", "-D"]).arg(&self.data).output().unwrap(),
            "pg_checksums --disable",
        );
    }

    fn pg_ctl_start(&self) {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.sock.display());
        must(
            as_postgres(&self.bin.join("pg_ctl"))
                .args(["start", "-w", "-t", "120", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(self.sock.join("server.log"))
                .args(["-o", &opts])
                .output()
                .unwrap(),
            "pg_ctl start",
        );
    }

    /// Stop the server (fast).
    pub fn stop(&self) {
        must(
            as_postgres(&self.bin.join("pg_ctl"))
                .args(["stop", "-w", "-m", "fast", "-D"])
                .arg(&self.data)
                .output()
                .unwrap(),
            "pg_ctl stop",
        );
    }

    /// A libpq connection string through the socket.
    pub fn conn(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.sock.display(), self.port)
    }

    /// One program of the installation.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Run SQL; returns psql's unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.program("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.conn(), "-c", sql])
            .output()
            .unwrap();
        must(out, &format!("psql {sql}")).trim().to_string()
    }

    /// `pgbench -i -s scale`.
    pub fn pgbench_init(&self, scale: u32) {
        must(
            Command::new(self.program("pgbench"))
                .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
                .arg(&self.sock)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"])
                .output()
                .unwrap(),
            "pgbench -i",
        );
    }

    /// A pgbench write load of `clients` for `seconds` in the background.
    pub fn pgbench_load(&self, clients: u32, seconds: u32) -> Child {
        Command::new(self.program("pgbench"))
            .args(["-n", "-c", &clients.to_string(), "-T", &seconds.to_string(), "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl")).args(["stop", "-m", "immediate", "-D"]).arg(&self.data).output();
    }
}

/// pgbench's invariant: every balance change is in all three tables and in the history.
pub const PGBENCH_INVARIANT: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
     (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), \
     (SELECT coalesce(sum(delta), 0) FROM pgbench_history)";
