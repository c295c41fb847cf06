//! `controller.toml`. Unknown fields are refused so a typo cannot silently change behaviour.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The controller's settings, after validation.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// gRPC listen address (agents and tresorctl).
    pub listen: SocketAddr,
    /// Where the CA, keys, policies and the sled catalog live.
    pub state_dir: PathBuf,
    /// DNS names and IP addresses in the controller's server certificate.
    pub server_names: Vec<String>,
    /// Life of agent certificates; agents renew at two thirds of it.
    pub cert_lifetime: Duration,
    /// A job attempt's lease; heartbeats extend it.
    pub lease: Duration,
    /// How often agents heartbeat.
    pub heartbeat: Duration,
    /// Prometheus `/metrics` listen address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// An agent not seen for this long raises an alert.
    pub agent_offline_after: Duration,
    /// Attempts per job before it fails.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt.
    pub retry_backoff: Duration,
    /// Where alerts go.
    pub alerts: Alerts,
    /// How long a one-time enrollment token lives by default.
    pub enroll_token_ttl: Duration,
    /// The auditor's read-only web page (HTTPS with the controller's certificate), off unless set.
    pub web_listen: Option<SocketAddr>,
    /// People may also sign in to that page with a client certificate issued by this CA (PEM).
    pub web_client_ca: Option<PathBuf>,
    /// Which certificates from `web_client_ca` sign in, as auditors: subject common names, or
    /// `sha256:HEX` fingerprints of the whole certificate.
    pub web_auditors: Vec<String>,
    /// A drill plan is overdue this long after a slot it did not run in.
    pub drill_grace: Duration,
    /// How often the audit log's head is signed and sent to the vaults (when it moved).
    pub audit_checkpoint_every: Duration,
    /// Refused tokens and sign-ins from one address are audited once per burst; a burst ends
    /// after this long without one.
    pub refusal_burst: Duration,
    /// A report-signing public key kept apart from the controller (PEM); when set, the auditor's
    /// page verifies the audit chain against it instead of calling it self-attested.
    pub audit_pubkey: Option<PathBuf>,
}

/// Alert destinations. Both may be set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// POST a JSON document here (http:// only on loopback; put a relay in front otherwise).
    pub webhook: Option<String>,
    /// Run this program with the alert as JSON on stdin.
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    server_names: Option<Vec<String>>,
    cert_lifetime: Option<String>,
    lease: Option<String>,
    heartbeat: Option<String>,
    metrics_listen: Option<String>,
    agent_offline_after: Option<String>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    enroll_token_ttl: Option<String>,
    web_listen: Option<String>,
    web_client_ca: Option<PathBuf>,
    #[serde(default)]
    web_auditors: Vec<String>,
    drill_grace: Option<String>,
    audit_checkpoint_every: Option<String>,
    refusal_burst: Option<String>,
    audit_pubkey: Option<PathBuf>,
    #[serde(default)]
    alerts: Alerts,
}

fn duration(field: &str, v: Option<String>, default: &str) -> Result<Duration> {
    let text = v.unwrap_or_else(|| default.to_string());
    tresor_proto::parse_duration(&text).map_err(|e| Error::Config(format!("{field}: {e}")))
}

fn addr(field: &str, v: &str) -> Result<SocketAddr> {
    v.parse().map_err(|e| Error::Config(format!("{field}: {v:?} is not an address such as 127.0.0.1:7443 ({e})")))
}

impl ControllerConfig {
    /// Parse `controller.toml` text; `origin` names it in errors.
    ///
    /// # Errors
    /// Names the file and the field that is wrong.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let raw: Raw = toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.message())))?;
        let wrap = |e: Error| Error::Config(format!("{origin}: {e}"));
        let cfg = Self {
            listen: addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:7443")).map_err(wrap)?,
            state_dir: raw.state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/tresor-controller")),
            server_names: raw.server_names.unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]),
            cert_lifetime: duration("cert_lifetime", raw.cert_lifetime, "24h").map_err(wrap)?,
            lease: duration("lease", raw.lease, "60s").map_err(wrap)?,
            heartbeat: duration("heartbeat", raw.heartbeat, "10s").map_err(wrap)?,
            metrics_listen: raw
                .metrics_listen
                .as_deref()
                .map(|a| addr("metrics_listen", a))
                .transpose()
                .map_err(wrap)?,
            agent_offline_after: duration("agent_offline_after", raw.agent_offline_after, "15m").map_err(wrap)?,
            max_attempts: raw.max_attempts.unwrap_or(3),
            retry_backoff: duration("retry_backoff", raw.retry_backoff, "30s").map_err(wrap)?,
            enroll_token_ttl: duration("enroll_token_ttl", raw.enroll_token_ttl, "1h").map_err(wrap)?,
            alerts: raw.alerts,
            web_listen: raw.web_listen.as_deref().map(|a| addr("web_listen", a)).transpose().map_err(wrap)?,
            web_client_ca: raw.web_client_ca,
            web_auditors: raw.web_auditors,
            drill_grace: duration("drill_grace", raw.drill_grace, "2h").map_err(wrap)?,
            audit_checkpoint_every: duration("audit_checkpoint_every", raw.audit_checkpoint_every, "1h")
                .map_err(wrap)?,
            refusal_burst: duration(
                "refusal_burst",
                raw.refusal_burst,
                &format!("{}s", crate::refusals::BURST.as_secs()),
            )
            .map_err(wrap)?,
            audit_pubkey: raw.audit_pubkey,
        };
        cfg.validate().map_err(wrap)?;
        Ok(cfg)
    }

    /// Read and parse a config file.
    ///
    /// # Errors
    /// The file cannot be read, or is invalid.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<()> {
        if self.cert_lifetime < Duration::from_secs(10) {
            return Err(Error::Config("cert_lifetime: must be at least 10s".into()));
        }
        if self.heartbeat * 3 > self.lease {
            return Err(Error::Config(format!(
                "lease: {:?} must be at least three heartbeats ({:?}) so one lost heartbeat does not fence an agent",
                self.lease, self.heartbeat
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("max_attempts: must be at least 1".into()));
        }
        if self.server_names.is_empty() {
            return Err(Error::Config("server_names: give at least one name agents dial".into()));
        }
        if let Some(cmd) = &self.alerts.command
            && cmd.is_empty()
        {
            return Err(Error::Config("alerts.command: give the program to run".into()));
        }
        self.validate_web_auditors()
    }

    fn validate_web_auditors(&self) -> Result<()> {
        match (&self.web_client_ca, self.web_auditors.is_empty()) {
            (Some(_), true) => {
                return Err(Error::Config(
                    "web_auditors: web_client_ca is set, so list the certificates that may sign in".into(),
                ));
            }
            (None, false) => {
                return Err(Error::Config("web_auditors: set web_client_ca, the CA that issues them".into()));
            }
            (Some(_), false) if self.web_listen.is_none() => {
                return Err(Error::Config("web_client_ca: the auditor's page is off; set web_listen".into()));
            }
            _ => {}
        }
        for who in &self.web_auditors {
            let bad_fingerprint = matches!(auditor_fingerprint(who), Some(Err(())));
            if who.trim().is_empty() || bad_fingerprint {
                return Err(Error::Config(format!(
                    "web_auditors: {who:?} is neither a common name nor sha256: and 64 hex digits"
                )));
            }
        }
        Ok(())
    }
}

/// A `web_auditors` entry written as `sha256:HEX`: its bytes, or `Err` when it is not 64 hex
/// digits; `None` for a common name.
pub(crate) fn auditor_fingerprint(who: &str) -> Option<std::result::Result<[u8; 32], ()>> {
    let hex = who.strip_prefix("sha256:")?;
    Some(hex::decode(hex).ok().and_then(|b| b.try_into().ok()).ok_or(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../config/controller.example.toml");
        let cfg = ControllerConfig::parse(text, "config/controller.example.toml").unwrap();
        assert!(cfg.lease >= cfg.heartbeat * 3);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = ControllerConfig::parse("listen = \"nowhere\"", "c.toml").unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("nowhere"), "{e}");
        let e = ControllerConfig::parse("lease = \"2s\"\nheartbeat = \"1s\"", "c.toml").unwrap_err().to_string();
        assert!(e.contains("lease"), "{e}");
        let e = ControllerConfig::parse("cert_life = \"1h\"", "c.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `cert_life`"), "{e}");
        let web = "web_listen = \"127.0.0.1:8443\"\nweb_client_ca = \"ca.pem\"\n";
        for (text, names) in [
            (web.to_string(), "list the certificates"),
            ("web_auditors = [\"Erika\"]".to_string(), "set web_client_ca"),
            ("web_client_ca = \"ca.pem\"\nweb_auditors = [\"Erika\"]".to_string(), "set web_listen"),
            (format!("{web}web_auditors = [\"sha256:abc\"]"), "\"sha256:abc\" is neither"),
            (format!("{web}web_auditors = [\" \"]"), "is neither"),
        ] {
            let e = ControllerConfig::parse(&text, "c.toml").unwrap_err().to_string();
            assert!(e.contains(names), "{text}: {e}");
        }
        let ok = format!("{web}web_auditors = [\"Erika Mustermann\", \"sha256:{}\"]", "ab".repeat(32));
        assert_eq!(ControllerConfig::parse(&ok, "c.toml").unwrap().web_auditors.len(), 2);
    }
}
