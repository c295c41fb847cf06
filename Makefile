# Tresor: the two commands are `make demo` and `make test`. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

.PHONY: demo test test-deps build lint bench fuzz clean-work

## demo: controller and agent on loopback (sled catalog, folder vault, certificates made on the fly): enroll, apply a policy, back up, restore with tresorctl, compare.
demo: build
	scripts/demo.sh

## test: install what the tests need when missing (nextest, Garage, PostgreSQL 15, a Python venv with the model files, Debian chromium with playwright-core and axe-core from npm; needs root), build the binaries, run every test.
test: test-deps
	@scripts/stage.sh "build binaries" $(CARGO) build --bins
	@scripts/stage.sh "test suite" $(CARGO) nextest run --workspace --no-fail-fast

test-deps:
	@scripts/stage.sh "test dependencies" scripts/ensure-test-deps.sh

build:
	$(CARGO) build --bins

## lint: formatting and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: Tresor against restic and borg on the same corpus, in one run; writes docs/BENCHMARKS.md.
bench:
	scripts/bench.sh

## fuzz: every fuzz target (vault bytes, signed documents, source formats) for FUZZ_SECONDS each (default 60), from fuzz/seeds.
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

clean-work:
	rm -rf demo-work bench-work
