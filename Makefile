# saeclip: `make test` and `make build` do their own setup (a .venv with PyTorch 2.11.0,
# which is also the libtorch the binary links against).
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
BIN    := target/release/saeclip

# Build against the venv's torch: its python must come first on PATH.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test lint bench bench-clip clean

## setup: create .venv with torch 2.11.0 and the pinned reference packages
setup: $(STAMP)

$(STAMP): requirements.txt
	@command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
	touch $@

## build: the release binary at target/release/saeclip
build: setup
	cargo build --release

## lint: formatting and clippy, warnings are errors
lint: setup
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

## test: lint, then every unit, integration and parity test (never skipped)
test: setup lint
	cargo test --release

## bench-clip: saeclip vs transformers forward throughput (writes bench/RESULTS.md)
bench-clip: setup
	cargo build --release --bench clip_forward
	$(PY) bench/clip_forward.py

bench: bench-clip

clean:
	cargo clean
	rm -rf $(VENV)
