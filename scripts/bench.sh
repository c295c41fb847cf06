#!/usr/bin/env bash
# `make bench`: Tresor, restic and borg on the same deterministic corpus in the same run.
# Phases: initial backup, partial fine-tune, full fine-tune, unchanged re-run, restore.
# Records wall time, CPU time, peak RSS and stored bytes; writes docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${BENCH_WORK:-$root/bench-work}
results=$work/results.tsv

need_pkgs=()
command -v restic >/dev/null || need_pkgs+=(restic)
command -v borg >/dev/null || need_pkgs+=(borgbackup)
[ -x /usr/bin/time ] || need_pkgs+=(time)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "installing ${need_pkgs[*]}"
    if [ "$(id -u)" = 0 ]; then apt-get install -y "${need_pkgs[@]}"; else sudo apt-get install -y "${need_pkgs[@]}"; fi
fi

echo "== building release binaries"
cargo build --release --bins
cargo build --release -p tresor-vault --example cipher_throughput
cargo build --release -p tresor-sources --example float_ratio
agent=$root/target/release/tresor-agent

mkdir -p "$work"
corpus=$work/corpus
if [ ! -f "$corpus/.complete" ]; then
    echo "== writing the corpus (deterministic)"
    rm -rf "$corpus"
    "$root/target/release/tresor-bench-corpus" "$corpus"
    touch "$corpus/.complete"
fi
src=$work/src
printf 'tool\tphase\twall_s\tcpu_s\tpeak_kib\tstored_bytes\n' > "$results"

export TRESOR_CACHE_DIR=$work/cache/tresor RESTIC_CACHE_DIR=$work/cache/restic BORG_BASE_DIR=$work/cache/borg

# Reset the source tree to the base corpus (hard links: cheap, same content, fresh inode per variant).
reset_source() {
    rm -rf "$src"
    cp -al "$corpus/base" "$src"
    rm "$src/model/model.safetensors"
    cp "$corpus/base/model/model.safetensors" "$src/model/model.safetensors"
    touch -d "2026-01-01 00:00:00" "$src/model/model.safetensors"
}
use_variant() {
    cp "$corpus/variants/$1.safetensors" "$src/model/model.safetensors.new"
    mv "$src/model/model.safetensors.new" "$src/model/model.safetensors"
}

source scripts/bench_lib.sh

run_tool() { # tool
    local tool=$1 repo=$work/repo-$1 out=$work/restore-$1
    rm -rf "$repo" "$out" "$work/cache/$tool"
    reset_source
    case $tool in
        tresor) "$agent" init --vault "$repo" --escrow-key-out "$work/tresor-escrow.key.$$" >/dev/null
                rm -f "$work/tresor-escrow.key.$$"
                backup=("$agent" backup --vault "$repo" "$src")
                restore=("$agent" restore --vault "$repo" latest --to "$out") ;;
        restic) restic init --repo "$repo" >/dev/null
                backup=(restic backup --repo "$repo" --quiet "$src")
                restore=(restic restore --repo "$repo" latest --target "$out") ;;
        borg)   borg init --encryption=repokey-blake2 "$repo" >/dev/null
                backup=(bash -c 'borg_create "$0" "$1"' "$repo" "$src")
                restore=(bash -c 'borg_extract "$0" "$1"' "$repo" "$out") ;;
    esac
    measure "$tool" initial "$repo" "${backup[@]}"
    use_variant partial
    measure "$tool" partial-finetune "$repo" "${backup[@]}"
    use_variant full
    measure "$tool" full-finetune "$repo" "${backup[@]}"
    measure "$tool" unchanged "$repo" "${backup[@]}"
    mkdir -p "$out"
    measure "$tool" restore "$repo" "${restore[@]}"
    # The restore must be complete and exact.
    # Each tool recreates the absolute source path below the target.
    diff -r "$src" "$out$src" > /dev/null || { echo "$tool restore differs from the source"; exit 1; }
    rm -rf "$out"
}
borg_extract() { (cd "$2" && borg extract "$1::$(borg list --short --last 1 "$1")"); }
export -f borg_extract

for tool in tresor restic borg; do
    echo "== $tool"
    run_tool "$tool"
done

echo "== the model alone: float codec against borg (zstd,3) and the order-0 floor"
model_tsv=$work/model.tsv
printf 'tool\tinitial_bytes\tpartial_increment\tfull_increment\n' > "$model_tsv"
"$root/target/release/examples/float_ratio" "$corpus/base/model/model.safetensors" 2 | tee "$work/floor.json"
msrc=$work/model-src
for tool in tresor borg; do
    repo=$work/model-repo-$tool
    rm -rf "$repo" "$msrc" "$work/cache/$tool"
    mkdir -p "$msrc"
    cp "$corpus/base/model/model.safetensors" "$msrc/model.safetensors"
    case $tool in
        tresor) "$agent" init --vault "$repo" --escrow-key-out "$work/m-escrow.$$" >/dev/null; rm -f "$work/m-escrow.$$"
                backup=("$agent" backup --vault "$repo" "$msrc") ;;
        borg)   borg init --encryption=repokey-blake2 "$repo" >/dev/null
                backup=(bash -c 'borg_create "$0" "$1"' "$repo" "$msrc") ;;
    esac
    sizes=()
    for variant in base partial full; do
        [ "$variant" = base ] || cp "$corpus/variants/$variant.safetensors" "$msrc/model.safetensors"
        "${backup[@]}" > "$work/model-$tool-$variant.log" 2>&1 || { echo "$tool model $variant failed"; tail "$work/model-$tool-$variant.log"; exit 1; }
        sizes+=("$(du -sb "$repo" | cut -f1)")
    done
    printf '%s\t%s\t%s\t%s\n' "$tool" "${sizes[0]}" "$((sizes[1] - sizes[0]))" "$((sizes[2] - sizes[1]))" | tee -a "$model_tsv"
done

echo "== PostgreSQL base backup (pgbench scale ${PG_SCALE:=30})"
pg_tsv=$work/pg.tsv
scripts/bench_pg.sh "$work/pg" "$PG_SCALE" "$agent" "$pg_tsv"

echo "== cipher throughput"
"$root/target/release/examples/cipher_throughput" | tee "$work/cipher.json"

python3 scripts/bench_report.py "$results" "$work/cipher.json" "$src" "$model_tsv" "$work/floor.json" "$pg_tsv" > docs/BENCHMARKS.md
echo "== wrote docs/BENCHMARKS.md"
cat docs/BENCHMARKS.md
