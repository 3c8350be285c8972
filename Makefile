# heartgpt — `make help` lists the targets.
# The Python every target runs: $(VENV)/bin/python when VENV is given; else ./.venv/bin/python when
# ./.venv exists, so `make setup VENV=.venv && make train` trains in that venv without naming it
# again (a venv with another name: pass VENV=<dir> every time); else python3, the current
# environment. VENV= (empty) ignores ./.venv; PYTHON=<interpreter> names any other.
VENV ?= $(if $(wildcard .venv/bin/python),.venv)
ifneq ($(strip $(VENV)),)
PYTHON := $(VENV)/bin/python
else
PYTHON ?= python3
endif
# torch, explicitly the CPU build: a local wheel (pip's find-links) satisfies it offline; else it
# comes from TORCH_INDEX, since PyPI has no +cpu builds and its torch==2.13.0 is the CUDA build
# (~530 MB plus the NVIDIA libraries). A CUDA build: make setup TORCH=torch TORCH_INDEX=
# (in an environment that already holds the CPU build, pip uninstall torch first).
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
ARGS ?=
# ARGS: extra Hydra overrides, e.g. make train ARGS="modality=ppg"

.DEFAULT_GOAL := help
.PHONY: help setup data train app test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

setup: ## install torch (CPU build; TORCH=torch TORCH_INDEX= for CUDA), then heartgpt -e .[dev]
ifneq ($(strip $(VENV)),)
	test -x $(PYTHON) || python3 -m venv $(VENV)
endif
	$(PYTHON) -m pip install "$(strip $(TORCH))"$(if $(strip $(TORCH_INDEX)), || { \
	  echo "$(strip $(TORCH)) is not on the configured index: trying $(strip $(TORCH_INDEX))"; \
	  $(PYTHON) -m pip install --extra-index-url "$(strip $(TORCH_INDEX))" "$(strip $(TORCH))"; })
# "$(TORCH)" again: no dependency may swap in another (CUDA) torch; pip stops instead
	$(PYTHON) -m pip install -e ".[dev]" "$(strip $(TORCH))"

data: ## build the synthetic demo (ECG and PPG) under data/demo/: shards, and recordings with labels prepared through labels_csv
	$(PYTHON) -m heartgpt.prepare source=demo $(ARGS)

train: ## the main job: pre-train on the demo shards (built if absent); ARGS= for overrides
	$(PYTHON) -m heartgpt.train $(ARGS)

app: ## the browser app on http://127.0.0.1:7860; ARGS= checkpoint folders and options
	$(PYTHON) -m heartgpt.app $(ARGS)

# Two pytest-xdist workers (CI has 2 cores); a module's shared fixture stays on one worker
# through its xdist_group mark. TEST_WORKERS=0 runs in this one process (pdb, -x ...).
TEST_WORKERS ?= 2
PYTEST = $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: ## the whole test suite, slow tests included (what CI runs)
	$(PYTEST)

test-fast: ## the test suite without the slow tests
	$(PYTEST) -m "not slow"

lint: ## ruff check
	$(PYTHON) -m ruff check src tests

format: ## ruff format + autofix
	$(PYTHON) -m ruff check --fix src tests
	$(PYTHON) -m ruff format src tests

bench: ## benchmarks vs the released model -> bench/results.json, bench/RESULTS.md (~10 min)
	$(PYTHON) -m bench

clean: ## remove caches and build outputs (keeps data/ and outputs/)
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
