//! `agent.toml`: where the controller is, where the agent keeps its identity, and the vaults it
//! can open (each with this agent's own key slot). Unknown fields are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// How this agent opens one vault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// A directory path or s3://bucket/prefix.
    pub url: String,
    /// File holding this agent's password for its key slot.
    pub password_file: Option<PathBuf>,
    /// Or the escrow key file (disaster recovery only).
    pub escrow_key_file: Option<PathBuf>,
}

/// The agent daemon's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The controller, e.g. https://controller.example:7443 (set by `enroll` if omitted).
    pub controller: Option<String>,
    /// The name admins use (default: the host name).
    pub name: Option<String>,
    /// Identity, outbox and index cache.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where restore drills make their sandboxes (default: STATE_DIR/drills). Give it room for
    /// the largest snapshot this agent rehearses.
    pub drill_dir: Option<PathBuf>,
    /// Where restores started from the controller may write (absolute directories; a target
    /// must lie in one of them). Default: the drill directory only, so restoring anywhere else
    /// needs this host's admin to allow it here.
    pub restore_roots: Option<Vec<PathBuf>>,
    /// The unprivileged user a drill's scratch PostgreSQL runs as, owning the restored data
    /// directory in the sandbox (default "nobody"; a user of its own that owns nothing else is
    /// better: `useradd --system --no-create-home tresor-scratch`).
    pub scratch_user: Option<String>,
    /// How long a drill's kept sandbox stays before this agent removes it (default 7d).
    pub keep_sandbox_for: Option<String>,
    /// PostgreSQL's programs for backups, verifies and drills (default: the installation under
    /// /usr/lib/postgresql matching the data's major version, else the newest).
    pub pg_bindir: Option<PathBuf>,
    /// Jobs run at once.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// The vaults, by the names policies use.
    #[serde(default)]
    pub vaults: BTreeMap<String, VaultConfig>,
    /// Settings of sources, by the names policies give them. Hooks live here and never in a
    /// policy: the controller schedules, but only this host's admin chooses what runs on it.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

/// This host's settings for one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Shell command run before the capture; its failure fails the job.
    pub pre_hook: Option<String>,
    /// Shell command run after, always (TRESOR_RESULT=ok|failed).
    pub post_hook: Option<String>,
    /// Each hook is killed after this long (default 10m).
    pub hook_timeout: Option<String>,
    /// Invariants (SQL) for database sources, checked at backup and on restored copies.
    #[serde(default)]
    pub probes: Vec<String>,
    /// The command answering golden queries for vector indexes (TRESOR_INDEX is the index path).
    pub probe_command: Option<String>,
    /// Its time limit (default 5m).
    pub probe_timeout: Option<String>,
    /// PostgreSQL: also take logical pg_dump archives.
    #[serde(default)]
    pub pg_dump: bool,
    /// Qdrant: a scratch Qdrant (http(s)://HOST:PORT) drills recover the snapshot into to re-run
    /// its golden queries (a collection NAME-tresor-verify-PID is made and removed).
    pub verify_qdrant: Option<String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tresor-agent")
}

fn default_max_jobs() -> usize {
    2
}

impl AgentConfig {
    /// Read and check `agent.toml`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse `agent.toml` text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.message().trim_end()))?;
        if cfg.max_jobs == 0 {
            bail!("{origin}: max_jobs: must be at least 1");
        }
        for name in cfg.sources.keys() {
            cfg.source_options(name).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        }
        cfg.keep_sandbox_for().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        for r in cfg.restore_roots.iter().flatten() {
            let n = tresor_proto::normalize_target(r).map_err(|e| anyhow::anyhow!("{origin}: restore_roots: {e}"))?;
            if n.parent().is_none() {
                bail!(
                    "{origin}: restore_roots: \"/\" would let the controller restore over this whole host; name the directories restores may use"
                );
            }
        }
        for (name, v) in &cfg.vaults {
            if v.password_file.is_none() && v.escrow_key_file.is_none() {
                bail!("{origin}: vaults.{name}: give password_file (this agent's key slot) or escrow_key_file");
            }
        }
        Ok(cfg)
    }

    /// This host's settings for a source (defaults when it has no entry).
    pub fn source_options(&self, source: &str) -> anyhow::Result<tresor_sources::capture::SourceOptions> {
        let mut o = tresor_sources::capture::SourceOptions { pg_bindir: self.pg_bindir.clone(), ..Default::default() };
        let Some(c) = self.sources.get(source) else { return Ok(o) };
        let dur = |field: &str, v: &Option<String>, default| match v {
            Some(t) => tresor_proto::parse_duration(t).map_err(|e| anyhow::anyhow!("sources.{source}.{field}: {e}")),
            None => Ok(default),
        };
        o.hooks = tresor_sources::hooks::Hooks {
            pre: c.pre_hook.clone(),
            post: c.post_hook.clone(),
            timeout: dur("hook_timeout", &c.hook_timeout, o.hooks.timeout)?,
        };
        o.probes = c.probes.clone();
        o.probe_command = c.probe_command.clone();
        o.probe_timeout = dur("probe_timeout", &c.probe_timeout, o.probe_timeout)?;
        o.pg_dump = c.pg_dump;
        Ok(o)
    }

    /// The directory drill sandboxes are made in.
    pub fn drill_dir(&self) -> PathBuf {
        self.drill_dir.clone().unwrap_or_else(|| self.state_dir.join("drills"))
    }

    /// How long a kept sandbox stays.
    pub fn keep_sandbox_for(&self) -> anyhow::Result<std::time::Duration> {
        match &self.keep_sandbox_for {
            Some(t) => tresor_proto::parse_duration(t).map_err(|e| anyhow::anyhow!("keep_sandbox_for: {e}")),
            None => Ok(std::time::Duration::from_secs(7 * 86_400)),
        }
    }

    /// Where controller-started restores may write, normalised.
    pub fn restore_roots(&self) -> Vec<PathBuf> {
        let roots = self.restore_roots.clone().unwrap_or_else(|| vec![self.drill_dir()]);
        roots.iter().filter_map(|r| tresor_proto::normalize_target(r).ok()).collect()
    }

    /// This agent's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(crate::host::hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_the_agent_know_the_same_source_kinds() {
        let agent: Vec<&str> = tresor_sources::spec::Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(agent, tresor_proto::SOURCE_KINDS);
    }

    #[test]
    fn source_hooks_parse_and_bad_timeouts_are_named() {
        let cfg =
            AgentConfig::parse("[sources.db]\npre_hook = \"app save\"\nhook_timeout = \"90s\"\n", "a.toml").unwrap();
        let h = cfg.source_options("db").unwrap().hooks;
        assert_eq!((h.pre.as_deref(), h.timeout.as_secs()), (Some("app save"), 90));
        assert_eq!(cfg.source_options("other").unwrap().hooks.timeout.as_secs(), 600);
        let e = AgentConfig::parse("[sources.db]\nhook_timeout = \"soon\"\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("sources.db.hook_timeout"), "{e}");
    }

    #[test]
    fn restore_roots_default_to_the_drill_directory_and_refuse_the_host_root() {
        let cfg = AgentConfig::parse("state_dir = \"/var/lib/t\"\n", "a.toml").unwrap();
        assert_eq!(cfg.restore_roots(), vec![PathBuf::from("/var/lib/t/drills")]);
        let cfg =
            AgentConfig::parse("pg_bindir = \"/opt/pg/bin\"\nrestore_roots = [\"/srv/restore/\"]\n", "a.toml").unwrap();
        assert_eq!(cfg.source_options("db").unwrap().pg_bindir, Some(PathBuf::from("/opt/pg/bin")));
        assert_eq!(cfg.restore_roots(), vec![PathBuf::from("/srv/restore")]);
        for bad in ["[\"/\"]", "[\"/srv/../etc\"]", "[\"relative\"]"] {
            let e = AgentConfig::parse(&format!("restore_roots = {bad}\n"), "a.toml").unwrap_err().to_string();
            assert!(e.contains("restore_roots"), "{e}");
        }
    }

    #[test]
    fn the_example_config_parses() {
        let cfg = AgentConfig::parse(include_str!("../../../config/agent.example.toml"), "agent.example.toml").unwrap();
        assert!(!cfg.vaults.is_empty());
    }

    #[test]
    fn a_vault_without_a_secret_or_an_unknown_field_is_refused() {
        let e = AgentConfig::parse("[vaults.nas]\nurl = \"/srv\"\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("vaults.nas: give password_file"), "{e}");
        let e = AgentConfig::parse("controler = \"x\"\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `controler`"), "{e}");
    }
}
