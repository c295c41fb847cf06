#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60) with cargo-fuzz (libFuzzer, AddressSanitizer),
# starting from the committed seeds. A crash stops the run; its input is in fuzz/artifacts/TARGET/.
# Not part of `make test`: it builds everything again with sanitizers (docs/TESTING.md).
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz passes sanitizer flags that only nightly compilers take; the one toolchain here is
# stable, and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1
# Listed apart: a failure inside `for ... in $(...)` would go unnoticed and fuzz nothing.
targets=$(cargo fuzz list)
[[ -n $targets ]] || { echo "error: cargo fuzz list found no targets in fuzz/" >&2; exit 1; }
for target in $targets; do
    mkdir -p "corpus/$target"
    echo "==> $target: ${secs} s"
    # The status that counts is cargo fuzz's, not the filter's (which finds nothing on a quiet run).
    args=(-max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    set +e
    if [[ $target == restore_tree && $(id -u) == 0 ]]; then
        # Restores are fuzzed unprivileged: built as root, run as nobody in its own corpus.
        cargo fuzz build "$target" >/dev/null
        chown -R nobody "corpus/$target"
        mkdir -p "artifacts/$target" && chown nobody "artifacts/$target"
        setpriv --reuid=nobody --regid=nogroup --clear-groups \
            "target/x86_64-unknown-linux-gnu/release/$target" -artifact_prefix="artifacts/$target/" \
            "corpus/$target" "seeds/$target" "${args[@]}" 2>&1 \
            | grep -E "^(==|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)|ERROR|panicked|SUMMARY"
    else
        cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- "${args[@]}" 2>&1 \
            | grep -E "^(==|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)|ERROR|panicked|SUMMARY"
    fi
    status=${PIPESTATUS[0]}
    set -e
    [[ $status == 0 ]] || { echo "error: $target failed (exit $status); a crash's input is in fuzz/artifacts/$target/" >&2; exit 1; }
done
