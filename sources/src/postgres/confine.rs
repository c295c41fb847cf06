//! The box PostgreSQL's programs run in when they work on restored, untrusted data: the scratch
//! server and every tool pointed at it or at the copy. What the snapshot holds can make that
//! server run code (index expressions that `pg_amcheck` evaluates call the snapshot's functions,
//! as a superuser of that server), so the box assumes it does.
//!
//! As root, each such program starts in a private mount namespace in which every mount is
//! read-only except the directories it is given (the copy and the server's own socket
//! directory), with a private `/dev/shm`, no network (a new network namespace holds only a
//! loopback that is down; the private socket is a path, reachable across it) and no System V IPC
//! of the host; then it becomes the scratch user with no supplementary groups and with
//! `no_new_privs`, so no setuid program gains anything. If the box cannot be built, the program
//! does not run. Not root: the agent's own user runs it unboxed; it owns nothing the copy could
//! take from it that the agent does not already hold.

use std::path::Path;
use std::process::Command;

use crate::proc::{ChildKind, command};

/// Run as root inside the new namespace: mounts read-only, then the writable directories
/// (arguments before `--`) bound onto themselves read-write, then the command after `--`. Any
/// failure stops it (`set -e`): the program never runs half-boxed. Mount points are read from
/// /proc/self/mountinfo, whose octal escapes (`\040`) `printf %b` decodes.
const BOX: &str = r#"set -eu
while read -r _ _ _ _ point _; do
  point=$(printf '%bx' "$point"); point=${point%x}
  mount -o remount,bind,ro "$point"
done </proc/self/mountinfo
[ ! -d /dev/shm ] || mount -t tmpfs -o nosuid,nodev,noexec,mode=1777 tresor-shm /dev/shm
while [ "$1" != -- ]; do
  mount --bind "$1" "$1"
  mount -o remount,bind,rw "$1"
  shift
done
shift
exec "$@""#;

/// Whether programs on untrusted data are boxed here (only root can build the box).
pub fn boxed() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command for `program` in the box, run as `user` (the copy's owner; root only for a legacy
/// copy whose manifest belongs to root, and then with every capability dropped), able to write
/// only below `writable`.
pub fn confined(program: &Path, user: Option<u32>, writable: &[&Path]) -> Command {
    if !boxed() {
        return command(program, ChildKind::PgScratch);
    }
    let mut c = command("unshare", ChildKind::PgScratch);
    c.args(["--mount", "--net", "--ipc", "--propagation", "private", "--", "sh", "-c", BOX, "tresor-box"]);
    c.args(writable).arg("--").arg("setpriv");
    match user.filter(|&u| u != 0) {
        Some(uid) => {
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={}", super::tools::gid_of(uid))).arg("--clear-groups");
        }
        None => {
            c.args(["--bounding-set=-all", "--inh-caps=-all"]);
        }
    }
    c.args(["--no-new-privs", "--"]).arg(program);
    c
}
