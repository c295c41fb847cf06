#!/usr/bin/env bash
# Refuse to start `make test` on a disk too full to finish it: a full disk mid-run fails
# dozens of tests with "not enough free space", far from the cause. Figures from docs/TESTING.md
# (a cold run wrote 1.5 GiB of build output and at most 0.6 GiB of test files at once).
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}
tmp=${TMPDIR:-/tmp}
test_mib=1024
build_mib=0
[[ -x "$target/debug/tresor-agent" ]] || build_mib=3072

avail_mib() { df --output=avail -B1M "$1" | tail -1 | tr -d ' '; }
mkdir -p "$target"
check() { # path, MiB needed, what for
    local have; have=$(avail_mib "$1")
    if (( have < $2 )); then
        echo "error: $1 has $have MiB free; $3 takes about $2 MiB. Free some space and run make test again." >&2
        exit 1
    fi
    echo "disk: $1 has $have MiB free; $3 takes about $2 MiB"
}
if [[ "$(df --output=target "$target" | tail -1)" == "$(df --output=target "$tmp" | tail -1)" ]]; then
    check "$target" $(( build_mib + test_mib )) "building and running the tests"
else
    (( build_mib == 0 )) || check "$target" "$build_mib" "building the tests"
    check "$tmp" "$test_mib" "running the tests"
fi
