//! Exit codes, documented in `--help`, README.md and docs/OPERATIONS.md.

use tresor_vault::Error;

/// Success.
pub const OK: u8 = 0;
/// The command failed.
pub const FAILURE: u8 = 1;
/// Usage error (bad arguments).
pub const USAGE: u8 = 2;
/// Partly done: the snapshot was made but some source files could not be read, or some files
/// could not be restored.
pub const PARTIAL: u8 = 3;
/// No vault at that location (missing location, or not a vault).
pub const NO_VAULT: u8 = 10;
/// Wrong password or key file, or one that does not reach the key epoch of the data asked for.
pub const WRONG_PASSWORD: u8 = 12;
/// `check` found damage, or restored data failed verification.
pub const DAMAGE: u8 = 13;
/// Interrupted by a signal.
pub const INTERRUPTED: u8 = 130;

/// The text appended to `--help`.
pub const HELP: &str = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 partial (some files unreadable or not restored), \
10 no vault at that location, 12 wrong password or key file (or one removed before the data's key epoch), 13 damage found, 130 interrupted.\n\
Secrets: TRESOR_PASSWORD or --password-file; --escrow-key-file for the offline escrow key. \
S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION.";

/// The exit code for an error: the first vault error in its chain decides, also one an I/O
/// error carries from the backup pipeline's reader threads.
pub fn code_for(e: &anyhow::Error) -> u8 {
    let vault_error = e.chain().find_map(|c| {
        c.downcast_ref::<Error>().or_else(|| c.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<Error>())
    });
    match vault_error {
        Some(Error::NoSuchLocation(_) | Error::NotAVault(_)) => NO_VAULT,
        Some(Error::WrongPassword | Error::KeyEpoch(_)) => WRONG_PASSWORD,
        Some(Error::Integrity { .. }) => DAMAGE,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vault_error_keeps_its_code_through_io_errors_and_context() {
        let damage = || Error::integrity("pack 00", "content does not match its name");
        let direct = anyhow::Error::from(damage());
        let carried = anyhow::Error::from(std::io::Error::other(damage())).context("backup of /srv failed");
        assert_eq!((code_for(&direct), code_for(&carried)), (DAMAGE, DAMAGE));
        let wrong = anyhow::Error::from(std::io::Error::other(Error::WrongPassword)).context("opening");
        assert_eq!(code_for(&wrong), WRONG_PASSWORD);
        assert_eq!(code_for(&anyhow::anyhow!("anything else")), FAILURE);
        assert_eq!(code_for(&anyhow::Error::from(std::io::Error::other("plain"))), FAILURE);
    }
}
