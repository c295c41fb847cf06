#!/usr/bin/env bash
# PostgreSQL part of `make bench`: a scratch cluster filled by pgbench, backed up by Tresor's
# postgres source (pg_basebackup streamed, no copy on disk) and by restic and borg over a
# pg_basebackup written to disk first (they cannot read the stream), then again after a write load.
# Usage: bench_pg.sh WORKDIR SCALE TRESOR_AGENT OUT_TSV
set -euo pipefail
work=$1 scale=$2 agent=$3 out=$4 results=$4
source "$(dirname "$0")/bench_lib.sh"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -x "$bin/initdb" ] || { echo "error: PostgreSQL server binaries are missing (scripts/ensure-test-deps.sh installs them)" >&2; exit 1; }
as_pg() { setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; }
rm -rf "$work"; mkdir -p "$work"; chmod 755 "$work"
mkdir "$work/data" "$work/sock"; chown postgres:postgres "$work/data" "$work/sock"
as_pg "$bin/initdb" --data-checksums -U postgres -A trust -D "$work/data" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$bin/pg_ctl" start -w -D "$work/data" -l "$work/sock/log" -o "-p $port -k $work/sock -c listen_addresses=''" >/dev/null
trap 'as_pg "$bin/pg_ctl" stop -m fast -D "$work/data" >/dev/null 2>&1 || true' EXIT
conn="host=$work/sock port=$port user=postgres dbname=postgres"
echo "pgbench -i -s $scale"
"$bin/pgbench" -i -q -s "$scale" -h "$work/sock" -p "$port" -U postgres postgres >/dev/null 2>&1
db_bytes=$("$bin/psql" -X -A -t -d "$conn" -c "SELECT pg_database_size('postgres')")
echo "database: $db_bytes bytes"

export TRESOR_CACHE_DIR=$work/cache
"$agent" init --vault "$work/repo-tresor" --escrow-key-out "$work/escrow" >/dev/null
restic init --repo "$work/repo-restic" >/dev/null
borg init --encryption=repokey-blake2 "$work/repo-borg" >/dev/null
printf 'tool\tphase\twall_s\tcpu_s\tpeak_kib\tstored_bytes\tdb_bytes\n' > "$out"
measure_extra=$db_bytes
# restic and borg need the base backup on disk: its time is part of theirs.
basebackup_then() { # tool repo
    rm -rf "$work/bb"
    "$bin/pg_basebackup" -d "$conn" -D "$work/bb" -F t -X fetch -c fast
    case $1 in
        restic) restic backup --repo "$2" --quiet "$work/bb" ;;
        borg) borg_create "$2" "$work/bb" ;;
    esac
}
export -f basebackup_then; export bin conn work
for phase in initial after-load; do
    if [ "$phase" = after-load ]; then
        "$bin/pgbench" -n -c 2 -T 15 -h "$work/sock" -p "$port" -U postgres postgres >/dev/null 2>&1
    fi
    measure tresor "$phase" "$work/repo-tresor" "$agent" backup --vault "$work/repo-tresor" --source "postgres:$conn"
    measure restic "$phase" "$work/repo-restic" bash -c 'basebackup_then restic "$0"' "$work/repo-restic"
    measure borg "$phase" "$work/repo-borg" bash -c 'basebackup_then borg "$0"' "$work/repo-borg"
done
rm -rf "$work/bb"
