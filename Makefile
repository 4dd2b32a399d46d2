# saeclip: `make test` and `make build` do their own setup (a .venv with PyTorch 2.11.0,
# which is also the libtorch the binary links against). `make build` / `make demo` install
# torch alone (requirements-build.txt); `make test` and the benchmarks add the reference
# stack (requirements.txt).
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
BIN    := target/release/saeclip

# Build against the venv's torch: its python must come first on PATH.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: setup build test lint cycles demo chromium slurm bench bench-train bench-defaults bench-clip bench-extract bench-eval bench-interpret bench-eval-sae bench-step bench-sweep clean

## setup: create .venv with torch 2.11.0 and the pinned reference packages (tests, benchmarks)
setup: $(STAMP)

## build-setup: create .venv with torch 2.11.0 only: all the binary needs (libtorch)
BUILD_STAMP := $(VENV)/.build-setup-done
.PHONY: build-setup
build-setup: $(BUILD_STAMP)

$(BUILD_STAMP): requirements-build.txt
	@command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-build.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
	touch $@

$(STAMP): requirements.txt $(BUILD_STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-build.txt -r requirements.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
	$(PY) -c "import sae_lens; assert sae_lens.__version__.startswith('6.'), sae_lens.__version__"
	touch $@

## build: the release binary at target/release/saeclip
build: build-setup
	cargo build --release

## demo: the whole pipeline on the embedded demo model, offline; outputs in demo-out/
demo: build
	$(BIN) demo --out demo-out

## lint: formatting and clippy, warnings are errors
lint: build-setup
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

## cycles: the import circles between src/ modules (fails when there is one)
cycles:
	python3 scripts/module_cycles.py src

## chromium: headless Chromium for the feature-browser test (tests/interpret_browser.rs),
## installed from Debian when missing
chromium:
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

## slurm: Debian's slurmctld, slurmd, slurm-client (sbatch) and munge for the job-script test
## (tests/slurm.rs runs a one-node cluster on localhost), installed when missing
slurm:
	@test -x /usr/sbin/slurmctld -a -x /usr/sbin/slurmd -a -x /usr/sbin/munged -a -x /usr/bin/sbatch || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurmctld slurmd slurm-client munge; }

## test: lint, then every unit, integration and parity test (never skipped)
test: setup lint chromium slurm
	cargo test --release

## bench-clip: saeclip vs transformers forward throughput, CLIP ViT-B/32, DINOv2 ViT-B/14 and SigLIP base (writes bench/RESULTS.md)
bench-clip: setup
	cargo build --release --bench clip_forward
	$(PY) bench/clip_forward.py
	$(PY) bench/dinov2_forward.py
	$(PY) bench/siglip_forward.py

## bench-extract: end-to-end `saeclip extract` vs PIL + transformers, decode alone, block 5 vs 11
bench-extract: setup
	cargo build --release
	cargo build --release --bench extract_pipeline
	$(PY) bench/extract.py

## bench-train: SAE training vs sae-lens and overcomplete on a known dictionary (writes bench/RESULTS.md);
## the peers live in their own .venv-peers so that the project's .venv stays untouched
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.setup-done

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --disable-pip-version-check -q torch==2.11.0 sae-lens overcomplete 'matplotlib<3.9'
	$(PEERS_VENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"
	touch $@

bench-train: setup $(PEERS_STAMP) bench-defaults
	cargo build --release --bench train_ground_truth
	$(PY) bench/train.py
	$(MAKE) bench-architectures

## bench-architectures: jumprelu and matryoshka vs sae-lens's on the small ground-truth data
## of bench-defaults, at a reduced budget (writes the architectures section of bench/RESULTS.md)
.PHONY: bench-architectures
bench-architectures: setup
	cargo build --release --bin saeclip
	$(PY) bench/architectures.py

## bench-defaults: the sweep on ground-truth data that chose the training defaults (writes bench/RESULTS.md)
bench-defaults: setup
	cargo build --release --bench train_ground_truth
	$(PY) bench/defaults.py

## bench-eval: eval-zeroshot images/s with and without an SAE, splice overhead (writes bench/RESULTS.md)
bench-eval: setup
	cargo build --release
	cargo build --release --bench eval_zeroshot
	$(PY) bench/eval.py

## bench-eval-sae: `saeclip evaluate` images/s and peak memory on CPU (ViT-B/32, 64x SAE), 500 vs 2,000 images
bench-eval-sae: setup
	cargo build --release
	$(PY) bench/evaluate.py --threads 1

## bench-interpret: `saeclip interpret` images/s and peak memory on CPU, 500 vs 2,000 images
bench-interpret: setup
	cargo build --release
	$(PY) bench/interpret.py

## bench-step: one SAE training step at ViT-B/32 scale, sparse backward vs dense autograd (prints)
bench-step: setup
	cargo bench --bench sae_step

## bench-sweep: a 4-member sweep in one pass vs the 4 runs one by one, member-rows/s (writes bench/RESULTS.md)
bench-sweep: setup
	cargo build --release
	$(PY) bench/sweep.py

## bench-train-stream: train from a 1.1 GB cache in memory vs streamed: peak RSS, rows/s warm and cold (writes bench/RESULTS.md)
.PHONY: bench-train-stream
bench-train-stream: setup
	cargo build --release
	$(PY) bench/train_stream.py

bench: bench-clip bench-extract bench-train bench-eval bench-interpret bench-eval-sae bench-step bench-sweep bench-train-stream

clean:
	cargo clean
	rm -rf $(VENV)
