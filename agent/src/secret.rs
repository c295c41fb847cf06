//! Secrets come from files or the environment, never from the command line.

use std::path::Path;

use anyhow::{Context, bail};
use tresor_vault::Secret;
use tresor_vault::keys::EscrowKey;
use zeroize::Zeroizing;

fn read_secret_file(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut bytes =
        Zeroizing::new(std::fs::read(path).with_context(|| format!("cannot read password file {}", path.display()))?);
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(bytes)
}

/// The secret that opens the vault: escrow key file, password file, or TRESOR_PASSWORD.
pub fn open_secret(password_file: Option<&Path>, escrow: Option<&Path>) -> anyhow::Result<Secret> {
    if let Some(path) = escrow {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("cannot read escrow key file {}", path.display()))?,
        );
        return Ok(Secret::Escrow(EscrowKey::from_file_text(&text)?));
    }
    password(password_file, "TRESOR_PASSWORD", "--password-file")
}

/// A password from `file` or the environment variable `var`.
pub fn password(file: Option<&Path>, var: &str, flag: &str) -> anyhow::Result<Secret> {
    if let Some(path) = file {
        return Ok(Secret::Password(read_secret_file(path)?));
    }
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret::Password(Zeroizing::new(v.into_bytes()))),
        _ => bail!("no password given: set {var} or use {flag} FILE"),
    }
}
