#!/usr/bin/env python3
"""Turn bench-work/results.tsv into docs/BENCHMARKS.md (stdout)."""
import csv, json, os, platform, subprocess, sys, datetime

results, cipher_file, src = sys.argv[1], sys.argv[2], sys.argv[3]
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
w("| phase | tool | wall s | CPU s | cores busy | peak MiB | stored MB | Tresor / tool |")
w("|---|---|---:|---:|---:|---:|---:|---:|")
for p in phases:
    t = get.get(("tresor", p))
    for tool in tools:
        r = get.get((tool, p))
        if not r:
            continue
        ratio = "" if tool == "tresor" or not t else f"{float(t['wall_s']) / max(float(r['wall_s']), 0.01):.2f}"
        busy = float(r['cpu_s']) / max(float(r['wall_s']), 0.01)
        w(f"| {p} | {tool} | {float(r['wall_s']):.2f} | {float(r['cpu_s']):.2f} | {busy:.2f} | {int(r['peak_kib']) / 1024:.0f} | "
          f"{int(r['stored_bytes']) / 1e6:.0f} | {ratio} |")
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
print("\n".join(out))
