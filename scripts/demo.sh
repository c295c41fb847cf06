#!/usr/bin/env bash
# `make demo`: the main job on embedded defaults. A local folder vault under demo-work/, a backup of
# sample data, a full read-data check, a restore, and a byte-for-byte comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
agent=target/debug/tresor-agent
work=demo-work
rm -rf "$work"
mkdir -p "$work"
export TRESOR_PASSWORD=demo-password
export TRESOR_CACHE_DIR="$work/cache"

echo "== sample data in $work/sample"
python3 - "$work/sample" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(2026)
os.makedirs(f"{root}/models", exist_ok=True)
os.makedirs(f"{root}/docs/notes", exist_ok=True)
with open(f"{root}/models/weights.bin", "wb") as f:
    f.write(rng.randbytes(24 << 20))
with open(f"{root}/docs/readme.txt", "w") as f:
    f.write("Tresor demo data.\n" * 2000)
for i in range(200):
    with open(f"{root}/docs/notes/note-{i:03}.txt", "w") as f:
        f.write(f"note {i}: " + "lorem ipsum " * rng.randint(1, 400) + "\n")
open(f"{root}/docs/empty", "w").close()
os.symlink("readme.txt", f"{root}/docs/link-to-readme")
PY

echo "== init"
$agent init --vault "$work/vault" --escrow-key-out "$work/escrow.key"
echo "== backup"
$agent backup --vault "$work/vault" --tag demo "$work/sample"
echo "== second backup (unchanged: reads nothing again)"
$agent backup --vault "$work/vault" --tag demo "$work/sample"
echo "== snapshots"
$agent snapshots --vault "$work/vault"
echo "== check --read-data"
$agent check --vault "$work/vault" --read-data
echo "== restore latest"
$agent restore --vault "$work/vault" latest --to "$work/restored"
abs=$(cd "$work/sample" && pwd)
diff -r --no-dereference "$work/sample" "$work/restored$abs"
echo "== restored tree equals the source: $work/restored$abs"
