#!/usr/bin/env bash
# Install what the test suite needs when it is missing. Fails loudly: the suite never skips.
set -euo pipefail
GARAGE_VERSION=2.5.0

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
