//! `tresorctl audit show|export|verify`: the controller's hash-chained log, read a page at a time.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use tresor_proto::pb;
use tresor_report::audit::{AuditError, ChainStatus, ChainVerifier};

use crate::client::{Admin, status_err};
use crate::docs::{printable, read_key};
use crate::exit;
use crate::print::out;

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Print the audit log (the newest N entries with --tail).
    Show {
        /// Only the last N entries.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Write audit.jsonl, checkpoints.jsonl and report-signing.pub.pem into DIR.
    Export {
        /// The directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Verify the hash chain from its first entry and every signed checkpoint (exit 9 if an entry
    /// was changed, removed, reordered or re-chained). With --log it works offline.
    Verify {
        /// An exported audit.jsonl (default: read the log from the controller).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Checkpoints: a checkpoints.jsonl, or a directory of checkpoint-*.json files (as stored
        /// in the vault). Default: the controller's.
        #[arg(long, value_name = "FILE|DIR")]
        checkpoints: Option<PathBuf>,
        /// The report-signing public key (PEM) to pin.
        #[arg(long, value_name = "FILE", env = "TRESOR_REPORT_PUBKEY")]
        pubkey: PathBuf,
    },
}

/// The controller's log a page at a time (the controller's AUDIT_PAGE entries), so `export` and
/// `verify` hold one page however long the log grows.
struct Pages {
    from: u64,
    done: bool,
}

impl Pages {
    fn new() -> Self {
        Self { from: 0, done: false }
    }

    async fn next(&mut self, c: &mut Admin) -> anyhow::Result<Option<pb::AuditLog>> {
        if self.done {
            return Ok(None);
        }
        let req = pb::GetAuditLogRequest { from_seq: self.from };
        let page = c.get_audit_log(req).await.map_err(status_err)?.into_inner();
        self.from += page.entries.len() as u64;
        self.done = !page.more || page.entries.is_empty();
        Ok(Some(page))
    }
}

fn parse(t: &str) -> anyhow::Result<Value> {
    serde_json::from_str(t).context("the controller sent an entry that is not JSON")
}

/// JSON values of a JSONL stream, one per non-blank line; errors name the file and line.
fn jsonl<'a, R: BufRead + 'a>(r: R, p: &'a Path) -> impl Iterator<Item = anyhow::Result<Value>> + 'a {
    r.lines().enumerate().filter_map(move |(i, line)| {
        let line = match line.with_context(|| format!("cannot read {}", p.display())) {
            Ok(l) if l.trim().is_empty() => return None,
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(serde_json::from_str(&line).with_context(|| format!("{} line {}: not JSON", p.display(), i + 1)))
    })
}

fn open(p: &Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::new(std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?))
}

fn read_jsonl(p: &Path) -> anyhow::Result<Vec<Value>> {
    jsonl(open(p)?, p).collect()
}

fn read_checkpoints(p: &Path) -> anyhow::Result<Vec<Value>> {
    if !p.is_dir() {
        return read_jsonl(p);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("checkpoint-")))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let t = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&t).with_context(|| format!("{} is not JSON", f.display()))
        })
        .collect()
}

fn entry_line(e: &Value) -> String {
    let s = |k: &str| printable(e[k].as_str().unwrap_or(""));
    format!(
        "{:>6} {} {:<22} {:<15} {:<8} {}{}",
        e["seq"].as_u64().unwrap_or(0),
        s("time"),
        s("actor"),
        s("action"),
        s("outcome"),
        s("object"),
        if s("reason").is_empty() { String::new() } else { format!(" ({})", s("reason")) }
    )
}

/// An exported log, line by line.
fn verify_file(log: &Path, checkpoints: &[Value], key: &tresor_report::sign::VerifyingKey) -> anyhow::Result<Verdict> {
    let mut chain = ChainVerifier::new(checkpoints, key);
    for e in jsonl(open(log)?, log) {
        if let Err(err) = chain.push(&e?) {
            return Ok(Err(err));
        }
    }
    Ok(chain.finish())
}

/// The controller's log, page by page; its checkpoints unless `given`.
async fn verify_remote(
    c: &mut Admin,
    given: Option<Vec<Value>>,
    key: &tresor_report::sign::VerifyingKey,
) -> anyhow::Result<Verdict> {
    let mut pages = Pages::new();
    let mut page = pages.next(c).await?.context("the controller sent no page of its log")?;
    let checkpoints = match given {
        Some(g) => g,
        None => page.checkpoints.iter().map(|t| parse(t)).collect::<anyhow::Result<_>>()?,
    };
    let mut chain = ChainVerifier::new(&checkpoints, key);
    loop {
        for t in &page.entries {
            if let Err(err) = chain.push(&parse(t)?) {
                return Ok(Err(err));
            }
        }
        match pages.next(c).await? {
            Some(p) => page = p,
            None => return Ok(chain.finish()),
        }
    }
}

type Verdict = Result<ChainStatus, AuditError>;

/// `audit show|export|verify`; `c` is only needed when the log is read from the controller.
pub async fn audit(c: Option<&mut Admin>, action: AuditAction, j: bool) -> anyhow::Result<u8> {
    match action {
        AuditAction::Show { tail } => {
            let c = c.context("audit show needs the controller")?;
            // With --tail only the last N are kept while reading.
            let keep = tail.unwrap_or(usize::MAX);
            let (mut shown, mut total) = (std::collections::VecDeque::new(), 0usize);
            let mut pages = Pages::new();
            while let Some(page) = pages.next(c).await? {
                for t in &page.entries {
                    total += 1;
                    if shown.len() == keep {
                        let _ = shown.pop_front();
                    }
                    if keep > 0 {
                        shown.push_back(parse(t)?);
                    }
                }
            }
            let shown = Vec::from(shown);
            let text = shown.iter().map(entry_line).collect::<Vec<_>>().join("\n");
            out(j, json!(shown), format!("{text}\n{} of {total} entries", shown.len()));
            Ok(exit::OK)
        }
        AuditAction::Export { out: dir } => {
            let c = c.context("audit export needs the controller")?;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            // Written beside its final name and renamed when whole: a broken connection leaves no
            // short audit.jsonl next to the checkpoints of an earlier export.
            let (path, done) = (dir.join("audit.jsonl.part"), dir.join("audit.jsonl"));
            let file = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
            let mut log = std::io::BufWriter::new(file);
            let mut pages = Pages::new();
            let first = pages.next(c).await?.context("the controller sent no page of its log")?;
            // Checkpoints and the key come with the first page; parsed before audit.jsonl is in place.
            let checkpoints = first.checkpoints.iter().map(|t| parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
            let pem = first.public_key_pem.clone();
            let mut entries = 0usize;
            let mut next = Some(first);
            while let Some(page) = next {
                for t in &page.entries {
                    // Re-serialised from the parsed value: one entry per line, whatever the controller sent.
                    writeln!(log, "{}", parse(t)?).with_context(|| format!("cannot write {}", path.display()))?;
                    entries += 1;
                }
                next = pages.next(c).await?;
            }
            log.flush().with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::rename(&path, &done).with_context(|| format!("cannot write {}", done.display()))?;
            let lines: String = checkpoints.iter().map(|v| format!("{v}\n")).collect();
            for (name, body) in [("checkpoints.jsonl", lines), ("report-signing.pub.pem", pem)] {
                let p = dir.join(name);
                std::fs::write(&p, body).with_context(|| format!("cannot write {}", p.display()))?;
            }
            out(
                j,
                json!({"dir": dir, "entries": entries, "checkpoints": checkpoints.len()}),
                format!("wrote {entries} entries and {} checkpoints to {}", checkpoints.len(), dir.display()),
            );
            Ok(exit::OK)
        }
        AuditAction::Verify { log, checkpoints, pubkey } => {
            let key = read_key(&pubkey)?;
            let given = checkpoints.map(|p| read_checkpoints(&p)).transpose()?;
            let own = given.is_none() && log.is_none();
            let verdict = match (log, c) {
                (Some(l), _) => verify_file(&l, given.as_deref().unwrap_or_default(), &key)?,
                (None, Some(c)) => verify_remote(c, given, &key).await?,
                (None, None) => anyhow::bail!("give --log FILE, or a controller to read the log from"),
            };
            Ok(print_verdict(verdict, own, j))
        }
    }
}

/// `controllers_own`: the checkpoints came from the controller whose log this is, so a valid
/// verdict is only as good as that controller (its key signs both).
fn print_verdict(verdict: Verdict, controllers_own: bool, j: bool) -> u8 {
    match verdict {
        // Without a checkpoint a log re-chained after a change cannot be told from the real one:
        // that is not a pass.
        Ok(st) if st.checkpoints == 0 => {
            let why = "no signed checkpoint was given or met, so a log re-chained after a change would pass; give --checkpoints (the vault's audit/ documents: tresor-agent documents --out DIR)";
            out(
                j,
                json!({"valid": false, "entries": st.entries, "error": why}),
                format!("audit log NOT VERIFIED: {why}"),
            );
            exit::TAMPERED
        }
        Ok(st) => {
            let from = if controllers_own { "controller (self-attested)" } else { "given" };
            let note = if controllers_own {
                "; the checkpoints are the controller's own: for independent evidence give --checkpoints from the vault (tresor-agent documents --out DIR)"
            } else {
                ""
            };
            out(
                j,
                json!({"valid": true, "entries": st.entries, "checkpoints": st.checkpoints, "unanchored": st.unanchored, "checkpoints_from": from}),
                format!(
                    "audit log valid: {} entries chained from the first, {} signed checkpoints met, {} entries after the newest checkpoint{note}",
                    st.entries, st.checkpoints, st.unanchored
                ),
            );
            exit::OK
        }
        Err(e) => {
            out(j, json!({"valid": false, "error": e.to_string()}), format!("audit log NOT VALID: {e}"));
            exit::TAMPERED
        }
    }
}
