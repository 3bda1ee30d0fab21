# Sweeps: the paper's grids of runs, one directory per run, one file per stage, so that make
# reruns only what is missing or stale and `make -j` runs independent runs in parallel.
# Included by the top-level Makefile; docs/sweeps.md is the user's guide.
#
#   make sweep GRID=grids/lenet300 -j2      every run of the grid, then the report
#   make sweep-runs GRID=...                the runs only
#   make sweep-report GRID=...              aiq-report over the grid's runs
#   make sweep-slurm GRID=...               submit the grid to Slurm as a job array
#   make sweep-status GRID=...              how many runs are done
#
# One run is train -> dump-states -> count-states -> score-aiq:
#   RUNS/ARCH-N1-N2[-N3]/MODIFIER/rPCT/seedS/{model.bin,train.log,counts.bin,score.json}
# (states.bin is an intermediate file, deleted as soon as it is counted unless KEEP_STATES=1;
# make does not rebuild a missing intermediate while what was made from it is up to date).
# Every stage writes a temporary file and renames it, so a killed sweep leaves no partial
# file under a final name and rerunning `make` completes it. `make sweep-clean-parts`
# removes the temporaries a kill -9 leaves behind. Needs GNU make 4.3 or later.

BIN           ?= target/release
# The target that builds $(BIN)/* when one is missing (the top-level Makefile's `build`);
# empty to fail instead (Slurm tasks: the submitter builds once, tasks never build).
SWEEP_BUILD   ?= build
# Threads per training run: 1, parallelism comes from make -j across runs.
SWEEP_THREADS ?= 1
# Where generated per-grid rule files go.
SWEEP_GEN     ?= target/sweep
KEEP_STATES   ?=

.PHONY: sweep sweep-runs sweep-report sweep-chunk sweep-count sweep-status sweep-slurm \
        sweep-clean-parts sweep-help sweep-print-root

sweep-help:
	@echo "make sweep GRID=grids/NAME [-j N]   run a grid (one dir per run) and its report"
	@echo "make sweep-slurm GRID=grids/NAME    submit the grid to Slurm as a job array"
	@echo "make sweep-status GRID=grids/NAME   runs done / total"

ifneq ($(strip $(GRID)),)

SWEEP_FRAGMENT := $(SWEEP_GEN)/$(notdir $(GRID)).mk
include $(SWEEP_FRAGMENT)

# The rule file is regenerated when the grid changes; make then restarts with it.
$(SWEEP_FRAGMENT): $(GRID) scripts/sweep-expand.sh
	@mkdir -p $(@D)
	sh scripts/sweep-expand.sh $(GRID) > $@.part
	mv -f $@.part $@

SWEEP_REPORT_DIR ?= reports/$(SWEEP_NAME)
SWEEP_SCORES := $(addprefix $(SWEEP_ROOT)/,$(addsuffix /score.json,$(SWEEP_RUNS)))
# Table 4: the same models measured on EMNIST digits, when the grid names an EMNIST
# directory and it exists.
SWEEP_EMNIST_ON := $(if $(strip $(SWEEP_EMNIST)),$(wildcard $(SWEEP_EMNIST)),)
SWEEP_EMNIST_SCORES := $(if $(SWEEP_EMNIST_ON),$(addprefix $(SWEEP_ROOT)/,$(addsuffix /score-emnist.json,$(SWEEP_RUNS))),)
SWEEP_OUTPUTS := $(SWEEP_SCORES) $(SWEEP_EMNIST_SCORES)

# The per-run model.bin rules (in the fragment) call this with the run's own arguments.
sweep_train = @mkdir -p $(@D) && echo "train $(@D)" && \
  $(BIN)/train --data $(SWEEP_DATA) --dataset $(SWEEP_DATASET) \
  --max-epochs $(SWEEP_MAX_EPOCHS) --patience $(SWEEP_PATIENCE) --threads $(SWEEP_THREADS) \
  $(SWEEP_TRAIN_ARGS) --log $(@D)/train.log -o $@

# The binaries must exist before any run starts. They are files with no prerequisites, so a
# sweep never rebuilds them per run (and `make -q` stays quiet); after changing the code, run
# `make build` yourself. When one is missing, $(SWEEP_BUILD) makes them.
SWEEP_BINS := $(addprefix $(BIN)/,train dump-states count-states score-aiq aiq-report)
$(SWEEP_BINS) &:
	$(if $(strip $(SWEEP_BUILD)),$(MAKE) --no-print-directory $(SWEEP_BUILD),@echo "sweep: $@ is missing; build the binaries first (make build)" >&2; exit 1)

$(addprefix $(SWEEP_ROOT)/,$(addsuffix /model.bin,$(SWEEP_RUNS))): | $(SWEEP_BINS)

$(SWEEP_ROOT)/%/states.bin: $(SWEEP_ROOT)/%/model.bin
	$(BIN)/dump-states --model $< --data $(SWEEP_DATA) --dataset $(SWEEP_DATASET) --split test --threads $(SWEEP_THREADS) -o $@

# States are deleted as soon as they are counted (not when make ends: a LeNet-5 run's states
# can take hundreds of megabytes, and a sweep has thousands of runs).
$(SWEEP_ROOT)/%/counts.bin: $(SWEEP_ROOT)/%/states.bin
	$(BIN)/count-states $< --threads $(SWEEP_THREADS) -o $@
	$(if $(strip $(KEEP_STATES)),,@rm -f $<)

$(SWEEP_ROOT)/%/score.json: $(SWEEP_ROOT)/%/counts.bin
	$(BIN)/score-aiq $< --json -o $@

$(SWEEP_ROOT)/%/states-emnist.bin: $(SWEEP_ROOT)/%/model.bin
	$(BIN)/dump-states --model $< --data $(SWEEP_EMNIST) --dataset emnist-digits --split test --threads $(SWEEP_THREADS) -o $@

$(SWEEP_ROOT)/%/counts-emnist.bin: $(SWEEP_ROOT)/%/states-emnist.bin
	$(BIN)/count-states $< --threads $(SWEEP_THREADS) -o $@
	$(if $(strip $(KEEP_STATES)),,@rm -f $<)

$(SWEEP_ROOT)/%/score-emnist.json: $(SWEEP_ROOT)/%/counts-emnist.bin
	$(BIN)/score-aiq $< --json -o $@

# Counts are kept (small, mergeable); states only on request.
.PRECIOUS: $(SWEEP_ROOT)/%/counts.bin $(SWEEP_ROOT)/%/counts-emnist.bin
ifneq ($(strip $(KEEP_STATES)),)
.PRECIOUS: $(SWEEP_ROOT)/%/states.bin $(SWEEP_ROOT)/%/states-emnist.bin
endif

sweep: sweep-report

sweep-runs: $(SWEEP_OUTPUTS)

# aiq-report writes summary.json last, so its presence means a complete report.
sweep-report: $(SWEEP_REPORT_DIR)/summary.json

$(SWEEP_REPORT_DIR)/summary.json: $(SWEEP_OUTPUTS) | $(SWEEP_BINS)
	$(BIN)/aiq-report $(SWEEP_ROOT) -o $(SWEEP_REPORT_DIR) $(SWEEP_REPORT_ARGS)

# One Slurm array task: runs SWEEP_CHUNK*SWEEP_CHUNK_SIZE+1 .. (SWEEP_CHUNK+1)*SWEEP_CHUNK_SIZE.
SWEEP_CHUNK      ?= 0
SWEEP_CHUNK_SIZE ?= 1
ifneq ($(filter sweep-chunk,$(MAKECMDGOALS)),)
sweep_first := $(shell echo $$(( $(SWEEP_CHUNK) * $(SWEEP_CHUNK_SIZE) + 1 )))
sweep_last  := $(shell echo $$(( ($(SWEEP_CHUNK) + 1) * $(SWEEP_CHUNK_SIZE) )))
SWEEP_CHUNK_RUNS := $(wordlist $(sweep_first),$(sweep_last),$(SWEEP_RUNS))
sweep-chunk: $(addprefix $(SWEEP_ROOT)/,$(addsuffix /score.json,$(SWEEP_CHUNK_RUNS))) \
  $(if $(SWEEP_EMNIST_ON),$(addprefix $(SWEEP_ROOT)/,$(addsuffix /score-emnist.json,$(SWEEP_CHUNK_RUNS))))
endif

sweep-count:
	@echo $(SWEEP_COUNT)

sweep-status:
	@echo "$(SWEEP_NAME): $(words $(wildcard $(SWEEP_SCORES))) of $(SWEEP_COUNT) runs scored in $(SWEEP_ROOT)"

sweep-print-root:
	@echo $(SWEEP_ROOT)

# Submits the grid as a Slurm job array (scripts/slurm-submit.sh says how to tune it); the
# tasks and the report job run these same targets with the same variables.
sweep-slurm: | $(SWEEP_BINS)
	SWEEP_MAKEFILE=$(firstword $(MAKEFILE_LIST)) bash scripts/slurm-submit.sh $(GRID) \
	  BIN=$(BIN) SWEEP_ROOT=$(SWEEP_ROOT) SWEEP_GEN=$(SWEEP_GEN) SWEEP_DATA=$(SWEEP_DATA) \
	  SWEEP_REPORT_DIR=$(SWEEP_REPORT_DIR) SWEEP_THREADS=$(SWEEP_THREADS) \
	  $(if $(strip $(SWEEP_EMNIST)),SWEEP_EMNIST=$(SWEEP_EMNIST)) $(if $(KEEP_STATES),KEEP_STATES=1)

sweep-clean-parts:
	find $(SWEEP_ROOT) -name '.*.part' -type f -print -delete

else

sweep sweep-runs sweep-report sweep-chunk sweep-count sweep-status sweep-slurm sweep-clean-parts \
sweep-print-root:
	@echo "give a grid: make $@ GRID=grids/NAME (grids: $(notdir $(wildcard grids/*)))" >&2
	@exit 2

endif
