#!/usr/bin/env bash
# Run one stage of `make test` and print how long it took (docs/TESTING.md records these).
set -euo pipefail
name=$1; shift
start=$(date +%s)
echo "==> $name"
"$@"
echo "==> $name: $(( $(date +%s) - start )) s"
