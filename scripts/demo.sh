#!/usr/bin/env bash
# `make demo`: the main job on embedded defaults, all on loopback. A controller (its own CA, the
# sled catalog), one agent enrolled with a one-time token, a local folder vault, an example
# policy, a backup of sample data through tresorctl, a one-command restore elsewhere, and a
# byte-for-byte comparison of the restored tree with the source.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/debug
work=$PWD/demo-work
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
[ -n "${DEMO_HOLD:-}" ] && trap - EXIT
rm -rf "$work"
mkdir -p "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
webport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
started=$(date +%s)

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

echo "== a local folder vault (the agent's key slot is its password file)"
printf 'demo-agent-password\n' > "$work/vault.password"
chmod 600 "$work/vault.password"
"$bin/tresor-agent" init --vault "$work/vault" --password-file "$work/vault.password" --escrow-key-out "$work/escrow.key"

echo "== controller on 127.0.0.1:$port (state in $work/controller)"
cat > "$work/controller.toml" <<TOML
listen = "127.0.0.1:$port"
state_dir = "$work/controller"
server_names = ["127.0.0.1", "localhost"]
heartbeat = "2s"
lease = "30s"
web_listen = "127.0.0.1:$webport"
TOML
TRESOR_LOG=warn "$bin/tresor-controller" serve --config "$work/controller.toml" > "$work/controller.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/controller/admin.token" ] && grep -q listening "$work/controller.log" && break; sleep 0.1; done
export TRESOR_CONTROLLER="https://127.0.0.1:$port" TRESOR_CA_FILE="$work/controller/ca.pem" TRESOR_TOKEN_FILE="$work/controller/admin.token"

echo "== enroll the agent with a one-time token"
"$bin/tresorctl" token create --role agent --ttl 10m --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' > "$work/enroll.token"
cat > "$work/agent.toml" <<TOML
name = "demo-agent"
state_dir = "$work/agent"
# Restores from the controller may write only here (see config/agent.example.toml).
restore_roots = ["$work/restores"]
[vaults.local]
url = "$work/vault"
password_file = "$work/vault.password"
TOML
"$bin/tresor-agent" enroll --controller "$TRESOR_CONTROLLER" --token-file "$work/enroll.token" --config "$work/agent.toml"
TRESOR_LOG=warn "$bin/tresor-agent" run --config "$work/agent.toml" > "$work/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$bin/tresorctl" agents --json | grep '"connected": true' >/dev/null && break; sleep 0.2; done
"$bin/tresorctl" agents

echo "== apply the example policy"
sed -e "s|/srv/models|$work/sample|" config/demo.policy.toml > "$work/demo.policy.toml"
"$bin/tresorctl" policy apply "$work/demo.policy.toml"

echo "== back up now (waits and shows progress)"
"$bin/tresorctl" backup demo-agent/sample
echo "== snapshots"
"$bin/tresorctl" snapshots demo-agent/sample

echo "== one-command restore to another place"
"$bin/tresorctl" restore demo-agent/sample --to "$work/restores/sample"
diff -r --no-dereference "$work/sample" "$work/restores/sample$work/sample"
echo "== restored tree equals the source: $work/restores/sample$work/sample"

echo "== a restore drill now: sandbox restore, structure, read and application checks, RTO and RPO"
"$bin/tresorctl" drill run demo-agent/sample
drill=$("$bin/tresorctl" drill list demo-agent/sample --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["drills"][0]["drill_id"])')
"$bin/tresorctl" report show "$drill" > "$work/drill-report.json"
"$bin/tresorctl" report show "$drill" --html --lang de --out "$work/drill-report.de.html"
"$bin/tresorctl" report show "$drill" --html --lang en --out "$work/drill-report.en.html"
cp "$work/controller/report-signing.pub.pem" "$work/report-signing.pub.pem"
"$bin/tresorctl" report verify "$work/drill-report.json" --pubkey "$work/report-signing.pub.pem"
"$bin/tresorctl" audit verify --pubkey "$work/report-signing.pub.pem"
"$bin/tresorctl" status
echo "== demo done in $(( $(date +%s) - started )) s"
echo "drill report (HTML): $work/drill-report.de.html (English: $work/drill-report.en.html)"
