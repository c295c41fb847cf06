#!/usr/bin/env bash
# Install what the test suite needs when it is missing. Fails loudly: the suite never skips.
set -euo pipefail
GARAGE_VERSION=2.5.0

scripts/ensure-disk.sh

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

have_garage() {
    command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -q "${GARAGE_VERSION}"
}
if ! have_garage; then
    echo "installing garage ${GARAGE_VERSION} (once; about 20 minutes on two cores)"
    cargo install garage --locked --version "${GARAGE_VERSION}"
fi
have_garage || { echo "error: garage ${GARAGE_VERSION} is not on PATH after installing it" >&2; exit 1; }
echo "garage: $(command -v garage) ($(garage --version | head -1))"

# PostgreSQL server binaries: the source tests make scratch clusters with initdb as the postgres user.
have_pg() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_basebackup" >/dev/null \
        && id postgres >/dev/null 2>&1
}
if ! have_pg; then
    echo "installing PostgreSQL server binaries (postgresql-15)"
    if [[ "$(id -u)" != 0 ]]; then
        echo "error: installing postgresql-15 needs root; install it, or run make test as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi
have_pg || { echo "error: PostgreSQL server binaries are not under /usr/lib/postgresql after installing them" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || { echo "error: the PostgreSQL tests run initdb as the postgres user and need root (setpriv)" >&2; exit 1; }
echo "postgresql: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

# libfaketime: standalone CLI runs with a wall clock hours off (GC liveness tests).
have_faketime() { compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; }
if ! have_faketime; then
    echo "installing libfaketime"
    [[ "$(id -u)" == 0 ]] || { echo "error: installing libfaketime needs root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libfaketime >/dev/null
fi
have_faketime || { echo "error: libfaketime.so.1 is not under /usr/lib/*/faketime after installing it" >&2; exit 1; }

# FUSE (fusermount, libfuse2 for fusepy): a mounted file system without fsync (durability tests).
have_fuse() { command -v fusermount >/dev/null && compgen -G "/lib/*/libfuse.so.2" >/dev/null; }
if ! have_fuse; then
    echo "installing fuse and libfuse2"
    [[ "$(id -u)" == 0 ]] || { echo "error: installing fuse needs root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse libfuse2 >/dev/null
fi
have_fuse || { echo "error: fusermount or libfuse.so.2 missing after installing fuse and libfuse2" >&2; exit 1; }
[[ -e /dev/fuse ]] || { echo "error: /dev/fuse is missing; the FUSE durability test needs it" >&2; exit 1; }
echo "libfaketime: $(compgen -G '/usr/lib/*/faketime/libfaketime.so.1' | head -1)"

scripts/ensure-python-deps.sh
scripts/ensure-browser-deps.sh
