#!/usr/bin/env python3
"""Turn bench-work/results.tsv into docs/BENCHMARKS.md (stdout)."""
import csv, json, os, platform, subprocess, sys, datetime

results, cipher_file, src = sys.argv[1], sys.argv[2], sys.argv[3]
model_file, floor_file, pg_file = sys.argv[4], sys.argv[5], sys.argv[6]
rows = list(csv.DictReader(open(results), delimiter="\t"))
cipher = json.load(open(cipher_file))
get = {(r["tool"], r["phase"]): r for r in rows}
phases = ["initial", "partial-finetune", "full-finetune", "unchanged", "restore"]
tools = ["tresor", "restic", "borg"]

def cmd(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"

def corpus_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total

def timing_table(rows, phase_list, busy):
    """One row per phase and tool: times, memory, repository size, and Tresor's wall time over the peer's."""
    w("| phase | tool | wall s | CPU s |" + (" cores busy |" if busy else "") + " peak MiB | stored MB | Tresor / tool" + (" |" if busy else " (wall) |"))
    w("|---|---|---:|---:|" + ("---:|" if busy else "") + "---:|---:|---:|")
    for p in phase_list:
        t = rows.get(("tresor", p))
        for tool in tools:
            r = rows.get((tool, p))
            if not r:
                continue
            wall, cpu = float(r["wall_s"]), float(r["cpu_s"])
            ratio = "" if tool == "tresor" or not t else f"{float(t['wall_s']) / max(wall, 0.01):.2f}"
            cores = f" {cpu / max(wall, 0.01):.2f} |" if busy else ""
            w(f"| {p} | {tool} | {wall:.2f} | {cpu:.2f} |{cores} {int(r['peak_kib']) / 1024:.0f} | "
              f"{int(r['stored_bytes']) / 1e6:.0f} | {ratio} |")


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
out = []
w = out.append
w("# Benchmarks\n")
w(f"Written by `make bench` on {datetime.date.today()}. Do not edit by hand: run `make bench` again.\n")
w("## Machine\n")
w(f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem} MiB; kernel {platform.release()}")
w(f"- Tresor {cmd('target/release/tresor-agent', '--version')}; {cmd('restic', 'version')}; {cmd('borg', '--version')}")
w(f"- Corpus: {corpus_bytes(src) / 1e6:.0f} MB (bf16 safetensors model 587 MB, float32 vectors 154 MB, 6,000 small text files), from `tresor-bench-corpus`; the files are in the page cache for every tool alike.")
w("- Settings: Tresor defaults (zstd 3, AES-256-GCM); restic defaults (repository v2, `auto` zstd compression); borg `--compression zstd,3`, `repokey-blake2`.\n")
w("## Results\n")
w("Wall time in seconds, CPU (user + system) in seconds, peak RSS in MiB, repository size in MB after the phase. "
  "Ratio: Tresor's wall time divided by the peer's (below 1 means Tresor is faster).\n")
timing_table(get, phases, busy=True)
w("")
w("## Required and goals\n")
def wall(tool, p):
    return float(get[(tool, p)]["wall_s"])
checks = []
for p in ["initial", "restore"]:
    for peer in ["restic", "borg"]:
        checks.append((f"Tresor faster than {peer} on {p}", wall("tresor", p) < wall(peer, p),
                       f"{wall('tresor', p):.2f} s vs {wall(peer, p):.2f} s"))
peak = max(int(get[("tresor", p)]["peak_kib"]) for p in phases) / 1024
checks.append(("Tresor peak memory under 256 MiB on every phase", peak < 256, f"max {peak:.0f} MiB"))
for p in ["initial", "restore"]:
    checks.append((f"goal: at most half restic's time on {p}", wall("tresor", p) <= wall("restic", p) / 2,
                   f"ratio {wall('tresor', p) / wall('restic', p):.2f}"))
w("| check | holds | figures |")
w("|---|---|---|")
for name, ok, fig in checks:
    w(f"| {name} | {'yes' if ok else 'NO'} | {fig} |")
w("")
t = get[("tresor", "initial")]
stored = int(t["stored_bytes"])
aes_s = 2 * stored / (cipher["seal_mib_s"] * 1048576)  # sealed once, opened once more to verify
w("## Share of CPU in the cipher\n")
w(f"AES-256-GCM through `SealKey` seals {cipher['seal_mib_s']:.0f} MiB/s and opens {cipher['open_mib_s']:.0f} MiB/s on one core "
  f"(`cargo run --release -p tresor-vault --example cipher_throughput`). The initial backup sealed about {stored / 1e6:.0f} MB "
  f"and opened it once more to verify before upload: about {aes_s:.2f} CPU seconds of {float(t['cpu_s']):.2f}, "
  f"**{100 * aes_s / float(t['cpu_s']):.1f} %** of the backup's CPU time.\n")

model = {r["tool"]: r for r in csv.DictReader(open(model_file), delimiter="\t")}
floor = json.load(open(floor_file))
mb = lambda b: f"{int(b) / 1e6:.1f}"
w("## Model weights: the float codec\n")
w("The bf16 model alone (`base/model/model.safetensors`, 40 tensors), backed up into a fresh repository, then its partial "
  "fine-tune (4 of 40 tensors changed) and its full fine-tune (every tensor changed a little). Repository growth in MB. "
  "The floor is the order-0 entropy of the model's bytes grouped by position (byte 0 and byte 1 of each bf16 value as "
  "separate sources), printed by `cargo run --release -p tresor-sources --example float_ratio`.\n")
w(f"- model: {mb(floor['bytes'])} MB; zstd 3 per 1 MiB chunk: {mb(floor['zstd3_bytes'])} MB; float codec alone: "
  f"{mb(floor['float_codec_bytes'])} MB; **floor: {mb(floor['floor_bytes'])} MB**\n")
w("| tool | initial MB | partial fine-tune increment MB | full fine-tune increment MB |")
w("|---|---:|---:|---:|")
for tool in ["tresor", "borg"]:
    r = model[tool]
    w(f"| {tool} | {mb(r['initial_bytes'])} | {mb(r['partial_increment'])} | {mb(r['full_increment'])} |")
w("")
t, b = model["tresor"], model["borg"]
mchecks = [
    ("bf16 model stored at most 0.90 x borg's", int(t["initial_bytes"]) <= 0.90 * int(b["initial_bytes"]),
     f"ratio {int(t['initial_bytes']) / int(b['initial_bytes']):.3f}"),
    ("bf16 model within 5 % of the floor", int(t["initial_bytes"]) <= 1.05 * floor["floor_bytes"],
     f"{int(t['initial_bytes']) / floor['floor_bytes']:.3f} x floor"),
    ("partial fine-tune increment at most borg's", int(t["partial_increment"]) <= int(b["partial_increment"]),
     f"{mb(t['partial_increment'])} MB vs {mb(b['partial_increment'])} MB"),
    ("full fine-tune increment (no requirement: the delta codec is not built)", None,
     f"ratio {int(t['full_increment']) / max(int(b['full_increment']), 1):.3f}"),
]
w("| check | holds | figures |")
w("|---|---|---|")
for name, ok, fig in mchecks:
    w(f"| {name} | {'n/a' if ok is None else 'yes' if ok else 'NO'} | {fig} |")
w("")
pg = list(csv.DictReader(open(pg_file), delimiter="\t"))
if pg:
    w("## PostgreSQL base backup\n")
    w(f"A scratch cluster (`initdb --data-checksums`) filled by `pgbench -i` ({int(pg[0]['db_bytes']) / 1e6:.0f} MB database), "
      "backed up, then again after a 15 s pgbench write load. Tresor streams `pg_basebackup -Ft -X fetch -D -` into its "
      "chunker with no copy on disk; restic and borg back up a `pg_basebackup -Ft -X fetch` written to disk first, and that "
      "step is counted in their times. Stored MB is the repository after the phase.\n")
    timing_table({(r["tool"], r["phase"]): r for r in pg}, ["initial", "after-load"], busy=False)
    w("")
print("\n".join(out))
