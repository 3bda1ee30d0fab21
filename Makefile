# aiq: neural efficiency and aIQ of LeNets (Schaub & Hotaling 2023).
# `make demo` fetches MNIST, builds, trains a small LeNet-5 and prints its aIQ table;
# `make test` runs every test. `make help` lists the rest.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

CARGO     ?= cargo
PYTHON    ?= python3
DATA      ?= data
FEATURES  ?=
BIN       ?= target/release
THREADS   ?= $(shell nproc)
# The demo: the paper's best-aIQ LeNet-5 on the full MNIST, 30 epochs (about a minute);
# DEMO_EPOCHS=200 runs the paper's full recipe (early stopping decides).
DEMO_ARCH   ?= lenet5
DEMO_WIDTHS ?= 3,9,4
DEMO_EPOCHS ?= 30
DEMO_SEED   ?= 1
DEMO_DIR    ?= runs/demo

CARGO_FEATURES := $(if $(FEATURES),--features $(FEATURES),)
TOOLS := train dump-states count-states score-aiq aiq-report layer-algebra

.PHONY: help data data-fashion build demo test test-deps test-rust test-slurm lint fmt bench bench-peers clean

help:
	@echo "make demo          fetch MNIST, build, train LeNet-5 ($(DEMO_WIDTHS)) and print its aIQ table"
	@echo "make test          run every test (unit, end-to-end, oracle)"
	@echo "make data          fetch the four MNIST files into $(DATA)/mnist and verify their MD5"
	@echo "make data-fashion  Fashion-MNIST from Debian's dataset-fashion-mnist into $(DATA)/fashion"
	@echo "make build         release binaries in $(BIN) (FEATURES=openblas for the system OpenBLAS)"
	@echo "make bench         criterion benches (bench-peers: side by side with PyTorch and TensorState)"
	@echo "make lint          rustfmt check and clippy with warnings as errors"
	@echo "make sweep GRID=grids/NAME [-j N]  a grid of runs and its report; sweep-slurm submits it to Slurm (docs/sweeps.md)"

# ---- data ------------------------------------------------------------------------------
# Always runs: it re-verifies every file's MD5 (0.3 s) and downloads only what is missing.
data:
	$(PYTHON) scripts/fetch-mnist.py $(DATA)/mnist

# Fashion-MNIST: Debian's package ships the four .gz files; copy them and check their MD5.
data-fashion:
	bash scripts/fetch-fashion.sh $(DATA)/fashion

# ---- build -----------------------------------------------------------------------------
build:
	$(CARGO) build --release --locked $(CARGO_FEATURES) $(addprefix --bin ,$(TOOLS))

# ---- the demo: train -> dump-states -> count-states -> score-aiq on the real MNIST -----
demo: data build
	@mkdir -p $(DEMO_DIR)
	$(BIN)/train --arch $(DEMO_ARCH) --widths $(DEMO_WIDTHS) --seed $(DEMO_SEED) \
	  --max-epochs $(DEMO_EPOCHS) --data $(DATA)/mnist --threads $(THREADS) \
	  --log $(DEMO_DIR)/train.log -o $(DEMO_DIR)/model.bin
	$(BIN)/dump-states --model $(DEMO_DIR)/model.bin --data $(DATA)/mnist -o $(DEMO_DIR)/states.bin
	$(BIN)/count-states $(DEMO_DIR)/states.bin -o $(DEMO_DIR)/counts.bin
	$(BIN)/score-aiq $(DEMO_DIR)/counts.bin

# ---- tests ----------------------------------------------------------------------------
# Everything the tests need is in the repository (fixtures/) or installed here from Debian's
# packages (make, awk, a font for the report's PNGs; Slurm for its end-to-end test), so no
# data is downloaded. The Slurm test installs and starts daemons, so it needs root.
test: test-deps test-rust test-slurm

test-deps:
	bash scripts/sweep-deps.sh

test-rust:
	$(CARGO) test --workspace --locked --no-fail-fast

test-slurm:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/sweep-slurm-test.sh; \
	else echo "test-slurm: skipped: a local Slurm needs root to install and start (CI runs it as root)"; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench --locked $(CARGO_FEATURES)

# Side by side with the peers (see scripts' headers): PyTorch for training, TensorState for
# the state pipeline. Each needs a Python environment with torch (and TensorState for the
# second), which these scripts do not install: TORCH_PYTHON=venv/bin/python.
bench-peers: build
	OURS=$(BIN)/train scripts/bench-train-vs-torch.sh
	BIN=$(BIN) scripts/bench-states.sh $(TS_DIR)

clean:
	$(CARGO) clean
	rm -rf runs reports

# ---- sweeps: grids of runs, locally (make -j) or on Slurm (docs/sweeps.md) ----------------
include mk/sweep.mk
