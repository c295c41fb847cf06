//! `tresor-agent copy`: a second site of a vault (decision 0017).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::json;
use tresor_vault::backend::{self, DynBackend, Retention};
use tresor_vault::copy::{CopyOptions, CopyReport, SiteReport};
use tresor_vault::{Secret, Vault};

use crate::cli::Global;
use crate::commands::{Outcome, cache_root};
use crate::progress::human;
use crate::{exit, secret};

/// Where a copy goes: its URL and, for a bucket with other credentials, a file of `AWS_*` lines.
pub struct Site {
    /// Directory or s3://bucket/prefix.
    pub url: String,
    /// KEY=VALUE lines (AWS_ACCESS_KEY_ID, ...), else the environment's.
    pub credentials: Option<PathBuf>,
}

impl Site {
    /// The site's storage.
    pub fn backend(&self) -> anyhow::Result<DynBackend> {
        let vars = self.credentials.as_deref().map(read_credentials).transpose()?;
        Ok(backend::from_url_with(&self.url, vars)?)
    }
}

/// `AWS_*` variables from a file of KEY=VALUE lines (blank lines and `#` comments skipped).
pub fn read_credentials(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read credentials file {}", path.display()))?;
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{} line {n}: not KEY=VALUE", path.display());
        };
        let k = k.trim().trim_start_matches("export ").trim();
        if !k.starts_with("AWS_") {
            bail!("{} line {n}: {k} is not an AWS_* variable", path.display());
        }
        vars.push((k.to_string(), v.trim().trim_matches('"').to_string()));
    }
    Ok(vars)
}

/// Open `from`, make or update the site at `to`, open it with the same secret.
pub async fn open_pair(
    secret: &Secret,
    from: DynBackend,
    to: DynBackend,
    object_lock: Option<Retention>,
) -> anyhow::Result<(Arc<Vault>, Arc<Vault>, SiteReport)> {
    let source = Vault::open(from, secret).await?;
    let site = tresor_vault::copy::mirror(&source, &to, object_lock).await?;
    let dest = Vault::open(to, secret).await.context("opening the copy")?;
    Ok((Arc::new(source), Arc::new(dest), site))
}

/// `copy`.
pub async fn copy(
    g: &Global,
    from: &str,
    to: &Site,
    snapshots: &[String],
    object_lock: Option<Retention>,
    uploads: usize,
) -> anyhow::Result<Outcome> {
    let secret = secret::open_secret(g.password_file.as_deref(), g.escrow_key_file.as_deref())?;
    let (source, dest, site) = open_pair(&secret, backend::from_url(from)?, to.backend()?, object_lock).await?;
    let mut ids = Vec::new();
    for spec in snapshots {
        ids.push(source.resolve_snapshot(spec).await?.0);
    }
    let opts = CopyOptions { snapshots: (!ids.is_empty()).then_some(ids), host: crate::host::hostname(), uploads };
    let report = tresor_vault::copy::run(&source, &dest, &cache_root(g)?, &opts).await?;
    let code = if report.failed.is_empty() {
        exit::OK
    } else if report.failed.iter().any(|f| f.damage) {
        exit::DAMAGE
    } else {
        exit::PARTIAL
    };
    Ok(Outcome { json: report_json(&to.url, &site, &report), text: report_text(&to.url, &site, &report), code })
}

/// The JSON of a copy run (also the daemon's result detail).
pub fn report_json(to: &str, site: &SiteReport, r: &CopyReport) -> serde_json::Value {
    json!({
        "to": to,
        "copied": r.copied.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "already_there": r.present,
        "failed": r.failed.iter().map(|f| json!({"snapshot": f.snapshot.to_string(), "error": f.why, "damage": f.damage})).collect::<Vec<_>>(),
        "gone": r.gone.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "held": r.held.len(),
        "packs_copied": r.packs_copied,
        "packs_present": r.packs_present,
        "bytes_copied": r.bytes_copied,
        "chunks_verified": r.chunks_verified,
        "segments_written": r.segments_written,
        "receipts_copied": r.receipts_copied,
        "documents_copied": r.documents_copied,
        "site": {
            "created": site.created,
            "epochs_copied": site.epochs_copied,
            "slots_copied": site.slots_copied,
            "slots_removed": site.slots_removed,
            "slots_waiting": site.slots_waiting,
            "slots_skipped": site.slots_skipped,
        },
    })
}

fn report_text(to: &str, site: &SiteReport, r: &CopyReport) -> String {
    let mut t = format!(
        "copied {} snapshot(s) to {to} ({} already there, {} failed){}",
        r.copied.len(),
        r.present,
        r.failed.len(),
        if site.created { "; the copy was made now" } else { "" }
    );
    t.push_str(&format!(
        "\n  packs: {} sent ({}), {} already at the copy; {} chunks verified at the source; {} index segment(s) written",
        r.packs_copied,
        human(r.bytes_copied),
        r.packs_present,
        r.chunks_verified,
        r.segments_written
    ));
    t.push_str(&format!(
        "\n  keys: {} epoch record(s) and {} slot(s) copied, {} slot(s) removed as at the source; {} receipt(s) and {} signed document(s) copied",
        site.epochs_copied, site.slots_copied, site.slots_removed, r.receipts_copied, r.documents_copied
    ));
    for w in &site.slots_waiting {
        t.push_str(&format!("\n  slot removed at the source, kept at the copy by Object Lock: {w}"));
    }
    for s in &site.slots_skipped {
        t.push_str(&format!("\n  slot NOT carried (its maker never held the vault's key): {s}"));
    }
    for id in &r.copied {
        t.push_str(&format!("\n  + {id}"));
    }
    for f in &r.failed {
        t.push_str(&format!("\n  FAILED {}: {}", f.snapshot, f.why));
    }
    t
}
