#!/usr/bin/env bash
# The browser test of the auditor's page: Debian's chromium, and playwright-core and axe-core from
# npm installed once into $TRESOR_TEST_DEPS/node (default ~/.cache/tresor-test-deps). Playwright
# never downloads a browser here: the test drives /usr/bin/chromium. Fails loudly: never skips.
set -euo pipefail
DEPS="${TRESOR_TEST_DEPS:-$HOME/.cache/tresor-test-deps}"
NODE_DIR="$DEPS/node"
# Pinned, so every run tests with the same checker.
NPM_PACKAGES=(playwright-core@1.65.1 axe-core@4.14.1)
STAMP="$NODE_DIR/.stamp-$(echo "${NPM_PACKAGES[*]}" | sha256sum | cut -c1-16)"

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium (the auditor page's browser test)"
    if [[ "$(id -u)" != 0 ]]; then
        echo "error: installing chromium needs root; install the Debian package chromium, or run make test as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v chromium >/dev/null || { echo "error: chromium is not on PATH after installing it" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null \
    || { echo "error: node and npm are needed for the auditor page's browser test (Debian: nodejs npm)" >&2; exit 1; }

if [[ -f "$STAMP" && -d "$NODE_DIR/node_modules/playwright-core" && -f "$NODE_DIR/node_modules/axe-core/axe.min.js" ]]; then
    echo "browser test deps: $NODE_DIR (cached), $(chromium --version 2>/dev/null | head -1)"
    exit 0
fi
mkdir -p "$NODE_DIR"
[[ -f "$NODE_DIR/package.json" ]] || echo '{"name": "tresor-test-deps", "private": true}' > "$NODE_DIR/package.json"
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the package must not fetch a browser of its own.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$NODE_DIR" --no-audit --no-fund --save-exact --silent "${NPM_PACKAGES[@]}"
touch "$STAMP"
echo "browser test deps: $NODE_DIR, $(chromium --version 2>/dev/null | head -1)"
