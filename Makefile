# PlanckGPT. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLANCK := $(VENV)/bin/planck
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
SHARDS ?= shards

# Offline machines: tiktoken reads GPT-2's ranks from this cache, primed from ../shared/tokenizer
# when that folder exists. With internet, tiktoken downloads them into it as usual.
export TIKTOKEN_CACHE_DIR ?= $(CURDIR)/.cache/tiktoken
SHARED_BPE := $(wildcard $(CURDIR)/../shared/tokenizer/r50k_base.tiktoken)
BPE_CACHE_FILE := $(TIKTOKEN_CACHE_DIR)/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4

CONFIG ?= planck150m
RUNS ?= runs
CHECKPOINT ?= $(RUNS)/sft
PORT ?= 8000

.PHONY: check-accel docs docs-slow doctor plan gpu-check gpu-bundle gpu-check-offline speedrun help install test tokenizer-cache shards demo-shards stats bench clean-shards pretrain midtrain sft demo-train demo chat serve

help:
	@echo "make install      create .venv and install planck with its test extras"
	@echo "make test         run the test suite (installs first if needed)"
	@echo "make demo-shards  offline: tokenize Python's own prose and the demo chat set into $(SHARDS)/demo/"
	@echo "make shards       pretrain (fineweb-edu), midtrain and sft shards from the Hugging Face hub"
	@echo "make stats        print what every shard folder under $(SHARDS)/ holds"
	@echo "make pretrain     train the pretrain phase (CONFIG=planck150m) into $(RUNS)/pretrain"
	@echo "make midtrain sft the next phases, each starting from the previous phase's final weights"
	@echo "make demo         offline, CPU, minutes: tokenize, pretrain + sft (tiny), evaluate, report, a completion and a chat reply"
	@echo "make demo-train   the demo's tokenize and training steps only"
	@echo "make chat         talk to a finished model in the terminal (CHECKPOINT=$(CHECKPOINT))"
	@echo "make serve        OpenAI-compatible HTTP API + web chat on http://127.0.0.1:$(PORT) (CHECKPOINT=...)"
	@echo "make bench        tokenizer, loader, train-step and decode figures beside their ceilings -> bench/results/bench.json"
	@echo "make docs         rewrite the README's examples from live output (docs-slow: also time make demo, take the A/B table)"
	@echo "make doctor       what a run here will use: devices, versions, tokenizer, disk, flash attention"
	@echo "make plan         the real run's memory per device, largest micro-batch and hours (CONFIG=, TOKENS=)"
	@echo "make gpu-check    the acceptance run on a GPU (tiny on a CPU): step, 200 training steps, decode -> OUT or bench/results"
	@echo "make gpu-bundle   wheels + rank file for a GPU machine with no package index -> .bundle/ (BUNDLE_PYTHON=3.12)"
	@echo "make gpu-check-offline  on that machine: install .bundle/ over its own CUDA jax, then gpu-check (PYTHON=...)"
	@echo "make speedrun     shards -> pretrain -> midtrain -> sft -> eval -> report, each resumable (CONFIG=, TOKENS=)"
	@echo "                  (install the CUDA build of jax with: make install ACCEL=cuda12)"

# ACCEL=cuda12 (or cuda13) also installs the CUDA build of the pinned jax: `make install ACCEL=cuda12`.
ACCEL ?= cpu
# jax's own extras: a name it does not know would make pip warn and install the CPU build anyway.
ACCELS := cpu cuda12 cuda13 cuda12-local cuda13-local tpu
JAX_VERSION := $(shell sed -n 's/.*"jax==\([^"]*\)".*/\1/p' pyproject.toml)

# Checked before anything is installed, by every target that installs (order-only: it never forces a reinstall).
check-accel:
	@case " $(ACCELS) " in *" $(ACCEL) "*) ;; *) echo "make: ACCEL=$(ACCEL) is not one of: $(ACCELS)" >&2; exit 2;; esac
	@if [ -z "$(JAX_VERSION)" ]; then echo 'make: pyproject.toml pins no "jax==VERSION": which jax to install is unknown' >&2; exit 2; fi

$(VENV)/.installed: pyproject.toml | check-accel
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools always tells an editable install to beware of same-named folders: our layout is built for it.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.accel-$(ACCEL): $(VENV)/.installed
	@if [ "$(ACCEL)" != cpu ]; then $(PY) -m pip install --quiet "jax[$(ACCEL)]==$(JAX_VERSION)"; fi
	@$(PY) -c "import jax; print('jax', jax.__version__, 'runs on', jax.default_backend(), [d.device_kind for d in jax.devices()])"
	touch $@

install: $(VENV)/.accel-$(ACCEL)

tokenizer-cache:
	@mkdir -p $(TIKTOKEN_CACHE_DIR)
	@if [ ! -f $(BPE_CACHE_FILE) ] && [ -n "$(SHARED_BPE)" ]; then cp $(SHARED_BPE) $(BPE_CACHE_FILE); fi

test: install tokenizer-cache
	$(PY) -m pytest

shards: install tokenizer-cache
	$(PLANCK) tokenize pretrain --out $(SHARDS)/pretrain --workers $(WORKERS)
	$(PLANCK) tokenize chat --mixture midtrain --out $(SHARDS)/midtrain --val-rows 5000 --workers $(WORKERS)
	$(PLANCK) tokenize chat --mixture sft --out $(SHARDS)/sft --val-rows 500 --workers $(WORKERS)

demo-shards: install tokenizer-cache
	$(PLANCK) tokenize pretrain --source embedded --out $(SHARDS)/demo/pretrain --max-tokens 400k --val-tokens 40k --shard-tokens 200k --workers $(WORKERS)
	$(PLANCK) tokenize chat --mixture demo --out $(SHARDS)/demo/sft --val-rows 40 --workers 1
	$(PLANCK) shards verify $(SHARDS)/demo/pretrain $(SHARDS)/demo/sft
	$(PLANCK) shards stats $(SHARDS)/demo/pretrain

stats: install tokenizer-cache
	@found=0; for m in $$(find $(SHARDS) -name manifest.json 2>/dev/null | sort); do \
		found=1; $(PLANCK) shards stats $$(dirname $$m); echo; done; \
	if [ $$found = 0 ]; then echo "no shard folders under $(SHARDS)/ yet: run make demo-shards or make shards"; fi

pretrain: install tokenizer-cache
	$(PLANCK) train pretrain --config $(CONFIG) --data $(SHARDS)/pretrain --run-dir $(RUNS)/pretrain

midtrain: install tokenizer-cache
	$(PLANCK) train midtrain --config $(CONFIG) --data $(SHARDS)/midtrain --run-dir $(RUNS)/midtrain --init-from $(RUNS)/pretrain

sft: install tokenizer-cache
	$(PLANCK) train sft --config $(CONFIG) --data $(SHARDS)/sft --run-dir $(RUNS)/sft --init-from $(RUNS)/midtrain

demo-train: demo-shards
	$(PLANCK) train pretrain --config tiny --data $(SHARDS)/demo/pretrain --run-dir $(RUNS)/demo/pretrain
	$(PLANCK) train sft --config tiny --data $(SHARDS)/demo/sft --run-dir $(RUNS)/demo/sft --init-from $(RUNS)/demo/pretrain

DEMO_RUNS := $(RUNS)/demo/pretrain $(RUNS)/demo/sft

demo: demo-train
	$(PLANCK) eval --checkpoint $(RUNS)/demo/pretrain --tasks bpb,sample --data $(SHARDS)/demo/pretrain
	$(PLANCK) eval --checkpoint $(RUNS)/demo/sft --tasks bpb,sample --data $(SHARDS)/demo/sft
	$(PLANCK) report $(DEMO_RUNS) --out $(RUNS)/demo/report.md
	@echo; echo "== a completion from the pretrained model (planck chat on a base model) =="
	@printf 'The "for" statement\n' | $(PLANCK) chat --checkpoint $(RUNS)/demo/pretrain --temperature 0 --max-tokens 40 --no-warm-up
	@echo; echo "== a chat reply from the fine-tuned model =="
	@printf 'Who are you?\n' | $(PLANCK) chat --checkpoint $(RUNS)/demo/sft --temperature 0 --max-tokens 40 --no-warm-up
	@echo; echo "reports: $(RUNS)/demo/report.md, $(RUNS)/demo/pretrain/report.md, $(RUNS)/demo/sft/report.md"
	@echo "next: make chat CHECKPOINT=$(RUNS)/demo/sft   or   make serve CHECKPOINT=$(RUNS)/demo/sft"

chat: install tokenizer-cache
	$(PLANCK) chat --checkpoint $(CHECKPOINT)

serve: install tokenizer-cache
	$(PLANCK) serve --checkpoint $(CHECKPOINT) --port $(PORT)

# The train step runs before the loader so that loader.json compares with this run's consumption.
bench: install tokenizer-cache
	$(PY) bench/tokenize_throughput.py
	$(PY) bench/train_step.py --config tiny
	$(PY) bench/train_step.py --compare-original --rounds 3 --steps 3
	$(PY) bench/loader_throughput.py
	$(PY) bench/decode_throughput.py --config tiny
	$(PY) bench/summary.py

clean-shards:
	rm -rf $(SHARDS)/pretrain $(SHARDS)/midtrain $(SHARDS)/sft $(SHARDS)/demo

doctor: install tokenizer-cache
	$(PLANCK) doctor --shards $(SHARDS) --runs $(RUNS)

plan: install tokenizer-cache
	$(PLANCK) plan --config $(CONFIG) $(if $(TOKENS),--tokens $(TOKENS))

gpu-check: install tokenizer-cache
	$(PY) bench/gpu_check.py $(if $(OUT),--out $(OUT))

# A GPU machine with no package index but its own CUDA jax: build .bundle/ here, carry it there (bench/offline_bundle.py).
BUNDLE_PYTHON ?= 3.12
gpu-bundle: install tokenizer-cache
	$(PY) bench/offline_bundle.py build --python $(BUNDLE_PYTHON)

# No install step: it runs where this checkout's .venv cannot be made. PYTHON is the machine's own.
gpu-check-offline:
	PYTHON=$(PYTHON) $(if $(OUT),OUT=$(OUT)) bash bench/gpu_check_offline.sh

speedrun: install tokenizer-cache
	$(PLANCK) speedrun --config $(CONFIG) --shards $(SHARDS) --runs $(RUNS) $(if $(TOKENS),--tokens $(TOKENS)) $(if $(SOURCE),--source $(SOURCE))

# The README's examples come from live runs (tests/readme_examples.py); tests/test_readme.py fails when they drift.
docs: install tokenizer-cache
	$(PY) tests/readme_examples.py

docs-slow: install tokenizer-cache
	$(PY) tests/readme_examples.py --slow
