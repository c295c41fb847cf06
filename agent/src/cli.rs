//! Command-line interface of `tresor-agent`. The forms are fixed so runbooks can rely on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Tresor agent: back up and restore with a Tresor vault.
#[derive(Debug, Parser)]
#[command(name = "tresor-agent", version, about, after_help = crate::exit::HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Print one JSON document on stdout (errors as JSON on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the vault password from this file (else TRESOR_PASSWORD).
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Open the vault with the escrow key file instead of a password.
    #[arg(long, global = true, value_name = "FILE", env = "TRESOR_ESCROW_KEY_FILE")]
    pub escrow_key_file: Option<PathBuf>,
    /// Allow key changes (`key add`, `remove`, `rotate`, `upgrade`) at a second site of a vault,
    /// once its first site is lost for good.
    #[arg(long, global = true)]
    pub at_second_site: bool,
    /// Local cache directory (index copy).
    #[arg(long, global = true, value_name = "DIR", env = "TRESOR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// PostgreSQL's programs (default: /usr/lib/postgresql/MAJOR/bin for the data's plain major
    /// version, else the newest installed).
    #[arg(long, global = true, value_name = "DIR", env = "TRESOR_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,
}

/// The command that answers golden queries for vector indexes Tresor cannot search itself.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Shell command run with TRESOR_INDEX set to the index path; prints the golden-query JSON
    /// (docs/OPERATIONS.md). Needed for hnswlib and non-flat FAISS indexes, at backup and verify.
    #[arg(long, value_name = "CMD")]
    pub probe_command: Option<String>,
    /// The probe command is killed after this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub probe_timeout: std::time::Duration,
}

/// Where the vault is.
#[derive(Debug, Args)]
pub struct VaultArg {
    /// Vault URL: a directory path or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    pub vault: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a new vault; writes the escrow key file to keep offline.
    Init {
        #[command(flatten)]
        vault: VaultArg,
        /// Where to write the escrow key file (refuses to overwrite).
        #[arg(long, value_name = "FILE", default_value = "tresor-escrow.key")]
        escrow_key_out: PathBuf,
        /// Write every object locked for this long (S3 Object Lock; the bucket must have it
        /// enabled), e.g. 30d; counted from the storage's clock at each write.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        object_lock: Option<std::time::Duration>,
        /// The lock's mode: governance (an account allowed to bypass it may lift it) or
        /// compliance (nobody can, the account's root included).
        #[arg(long, value_name = "MODE", default_value = "governance", requires = "object_lock", value_parser = parse_lock_mode)]
        object_lock_mode: tresor_vault::backend::LockMode,
    },
    /// Copy snapshots, with the packs and index they need, to a second site of the same vault
    /// (another folder or bucket): made on the first copy, brought up to date after. Same vault
    /// id and keys, so the one escrow key file opens both (decision 0017). Resumes after a kill,
    /// sends only what the copy lacks, verifies every pack at the source before sending it.
    Copy {
        /// The vault to copy from (directory or s3://bucket/prefix).
        #[arg(long, value_name = "URL")]
        from: String,
        /// Where the copy is (an empty location, or an earlier copy of the same vault).
        #[arg(long, value_name = "URL")]
        to: String,
        /// AWS_* variables for the copy's storage, one KEY=VALUE per line (else the
        /// environment's, shared with --from).
        #[arg(long, value_name = "FILE")]
        to_credentials: Option<PathBuf>,
        /// Copy only these snapshots (ids or unique prefixes; repeatable); default: all.
        #[arg(long = "snapshot", value_name = "ID")]
        snapshots: Vec<String>,
        /// When the copy is made: write every object there locked for this long (S3 Object
        /// Lock), as `init --object-lock` does.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        object_lock: Option<std::time::Duration>,
        /// The lock's mode (governance or compliance).
        #[arg(long, value_name = "MODE", default_value = "governance", requires = "object_lock", value_parser = parse_lock_mode)]
        object_lock_mode: tresor_vault::backend::LockMode,
        /// Packs in flight at once (each held whole in memory).
        #[arg(long, value_name = "N", default_value_t = 4)]
        uploads: usize,
    },
    /// Back up paths and sources; prints the snapshot id.
    Backup {
        #[command(flatten)]
        vault: VaultArg,
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Host name to record (default: this machine's).
        #[arg(long)]
        host: Option<String>,
        /// Read every file even if unchanged since the parent snapshot.
        #[arg(long)]
        force: bool,
        /// A source other than plain paths (repeatable): model:PATH (a weights file or a Hugging Face
        /// model directory), sqlite:PATH (through the online backup API), postgres:CONNSTR
        /// (pg_basebackup; e.g. "postgres:host=/run/postgresql port=5432 user=postgres"), faiss:PATH and
        /// hnswlib:PATH (index files the application saved; golden queries recorded), chroma:DIR,
        /// qdrant:http(s)://HOST:PORT/collections/NAME (snapshot API; QDRANT_API_KEY if set).
        #[arg(long = "source", value_name = "KIND:SPEC", value_parser = parse_source)]
        sources: Vec<tresor_sources::spec::SourceSpec>,
        /// An invariant for database sources (repeatable): SQL returning one row whose columns are all
        /// equal (or one true), checked at backup and by verify on the restored copy.
        #[arg(long = "probe", value_name = "SQL")]
        probes: Vec<String>,
        /// PostgreSQL sources: also take a logical pg_dump -Fc of every database and the globals.
        #[arg(long)]
        pg_dump: bool,
        /// Shell command run before anything is read; if it fails, nothing is backed up.
        #[arg(long, value_name = "CMD")]
        pre_hook: Option<String>,
        /// Shell command run afterwards, always; TRESOR_RESULT is ok or failed.
        #[arg(long, value_name = "CMD")]
        post_hook: Option<String>,
        /// Each hook is killed after this long (e.g. 90s, 10m).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
        hook_timeout: std::time::Duration,
        #[command(flatten)]
        probe: ProbeArgs,
        /// Paths to back up.
        #[arg(required_unless_present = "sources")]
        paths: Vec<PathBuf>,
    },
    /// Check a restored copy against its snapshot: file hashes, model tensors, source probes.
    Verify {
        #[command(flatten)]
        vault: VaultArg,
        /// Snapshot id, unique prefix, or "latest".
        #[arg(long)]
        snapshot: String,
        #[command(flatten)]
        probe: ProbeArgs,
        /// A scratch Qdrant, http(s)://HOST:PORT, to recover Qdrant snapshots into for their golden
        /// queries (a collection named NAME-tresor-verify-PID is made and removed).
        #[arg(long, value_name = "URL")]
        qdrant: Option<String>,
        /// A database probe this host trusts (repeatable; the SQL given at backup). A probe recorded
        /// in the snapshot runs only if given here; otherwise it is reported "not trusted, not run".
        #[arg(long = "probe", value_name = "SQL")]
        probes: Vec<String>,
        /// The directory the snapshot was restored to (the --to of restore).
        path: PathBuf,
    },
    /// The signed documents stored in the vault: drill reports, the report-signing public key, and
    /// audit-log checkpoints. Lists them; with --out writes each as a file (reports/, audit/).
    Documents {
        #[command(flatten)]
        vault: VaultArg,
        /// Write them below this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Recover a Qdrant collection from a restored snapshot file through Qdrant's upload API.
    QdrantRecover {
        /// The restored `.snapshot` file.
        file: PathBuf,
        /// The collection to create or overwrite: http(s)://HOST:PORT/collections/NAME.
        #[arg(long, value_name = "URL")]
        collection: String,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        vault: VaultArg,
    },
    /// List the entries of a snapshot.
    Ls {
        #[command(flatten)]
        vault: VaultArg,
        /// Snapshot id, unique prefix, or "latest".
        snapshot: String,
    },
    /// Restore a snapshot below DIR (a new or empty directory, written whole or not at all).
    Restore {
        #[command(flatten)]
        vault: VaultArg,
        /// Snapshot id, unique prefix, or "latest".
        snapshot: String,
        /// Target directory; backed-up paths are recreated below it. Links in the directories
        /// above it are followed; DIR itself and everything below it never through a link.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Restore only this path and what is below it (repeatable).
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Write into a non-empty DIR (entries of the snapshot replace what stands at their names).
        #[arg(long)]
        force: bool,
    },
    /// Check the vault's structure, and optionally read and verify its data.
    Check {
        #[command(flatten)]
        vault: VaultArg,
        /// Decrypt and verify every chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Decrypt and verify a seeded sample of packs, e.g. 10%.
        #[arg(long, value_name = "N%")]
        read_data_subset: Option<String>,
        /// Seed for the sample (default: random, printed).
        #[arg(long, requires = "read_data_subset")]
        seed: Option<u64>,
    },
    /// Bring back write-once objects hidden under a delete marker or replaced by another
    /// version (in a bucket that keeps versions): each one's first version becomes current again.
    /// Needs no key. `check` names what it would bring back.
    RecoverHidden {
        #[command(flatten)]
        vault: VaultArg,
        /// Only list what is hidden.
        #[arg(long)]
        dry_run: bool,
    },
    /// Collect garbage without a controller: the first run marks unreferenced packs, a later one
    /// deletes those still unreferenced once the mark is older than --grace. Refuses to delete
    /// anything when the snapshot listing lacks a snapshot this host committed or saw before.
    Gc {
        #[command(flatten)]
        vault: VaultArg,
        /// How often this GC runs: in a locked vault, locks ending within --grace plus this are
        /// extended, and a retention not longer than both is refused.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        maintenance_interval: std::time::Duration,
        /// How long marked packs wait before a later run deletes them.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Take the current listing as what to expect (after snapshots were forgotten elsewhere).
        #[arg(long)]
        reset_expected: bool,
    },
    /// Forget snapshots by id, or by retention rules (the controller's, applied per host and
    /// source to the manifests' times); their data goes at a later `gc`.
    Forget {
        #[command(flatten)]
        vault: VaultArg,
        /// Snapshot ids or unique prefixes.
        #[arg(required_unless_present_any = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within"])]
        snapshots: Vec<String>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Time zone of the hourly, daily, weekly, monthly and yearly buckets.
        #[arg(long, default_value = "UTC")]
        tz: chrono_tz::Tz,
        /// Print what would be forgotten, forget nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Enroll this agent with a controller (one-time token from `tresorctl token create`).
    Enroll {
        /// The controller, e.g. https://controller.example:7443.
        #[arg(long, value_name = "URL")]
        controller: String,
        /// The one-time enrollment token (or TRESOR_ENROLL_TOKEN, or --token-file).
        #[arg(long, value_name = "T", env = "TRESOR_ENROLL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Read the token from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// agent.toml (for state_dir and name).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to keep the identity (default: agent.toml's state_dir, else /var/lib/tresor-agent).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The name admins will use (default: agent.toml's name, else the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the agent daemon: connect to the controller and run the jobs it sends.
    Run {
        /// agent.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Manage key slots.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Add a key slot for a new password (TRESOR_NEW_PASSWORD or --new-password-file).
    Add {
        #[command(flatten)]
        vault: VaultArg,
        /// File holding the new password.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        /// Who holds the new key.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List key slots.
    List {
        #[command(flatten)]
        vault: VaultArg,
    },
    /// Remove a key slot and start a new key epoch without it: the removed secret reads nothing
    /// written afterwards.
    Remove {
        #[command(flatten)]
        vault: VaultArg,
        /// Slot id.
        id: String,
    },
    /// Replace the slot you opened the vault with by one for a new password; with --master,
    /// start a new key epoch instead (a new master key for everything written from now on).
    Rotate {
        #[command(flatten)]
        vault: VaultArg,
        /// File holding the new password.
        #[arg(long, value_name = "FILE", conflicts_with = "master")]
        new_password_file: Option<PathBuf>,
        /// Start a new master-key epoch, granted to every slot that can carry it.
        #[arg(long)]
        master: bool,
    },
    /// Replace the slot you opened the vault with, if it was made before key epochs, by one that
    /// later epochs can be granted to (same secret and label).
    Upgrade {
        #[command(flatten)]
        vault: VaultArg,
    },
}

/// Retention rules on the command line, as in a policy's `retention`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeepArgs {
    /// Keep the newest N.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest in each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// ... years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep everything within this of the newest (e.g. 2d).
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within: Option<String>,
}

impl KeepArgs {
    /// The rules.
    pub fn rules(&self) -> tresor_proto::retention::Retention {
        tresor_proto::retention::Retention {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
        }
    }
}

fn parse_source(s: &str) -> Result<tresor_sources::spec::SourceSpec, String> {
    s.parse()
}

fn parse_lock_mode(s: &str) -> Result<tresor_vault::backend::LockMode, String> {
    tresor_vault::backend::LockMode::parse(s).ok_or_else(|| format!("{s:?}: expected governance or compliance"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    tresor_proto::parse_duration(s).map_err(|e| e.to_string())
}

/// `--keep-within`, checked here: the retention rules would skip a value they cannot read.
fn parse_within(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.to_string())
}
