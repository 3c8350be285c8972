# heartgpt — `make help` lists the targets.
# Installs into the current Python environment; `make setup VENV=.venv` makes and uses a venv.
VENV ?=
ifneq ($(strip $(VENV)),)
PYTHON := $(VENV)/bin/python
else
PYTHON ?= python3
endif
TORCH ?= torch==2.13.0   # the CPU wheel; `make setup TORCH=torch` for a CUDA build
ARGS ?=                  # extra Hydra overrides, e.g. make train ARGS="modality=ppg"

.DEFAULT_GOAL := help
.PHONY: help setup data train app test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

setup: ## install pinned CPU torch, then heartgpt (editable) with its dev extra
ifneq ($(strip $(VENV)),)
	test -x $(PYTHON) || python3 -m venv $(VENV)
endif
	$(PYTHON) -m pip install "$(strip $(TORCH))"
	$(PYTHON) -m pip install -e ".[dev]"

data: ## build the synthetic demo shards (ECG and PPG) under data/demo/
	$(PYTHON) -m heartgpt.prepare source=demo $(ARGS)

train: ## the main job: pre-train on the demo shards (built if absent); ARGS= for overrides
	$(PYTHON) -m heartgpt.train $(ARGS)

app: ## the browser app on http://127.0.0.1:7860; ARGS= checkpoint folders and options
	$(PYTHON) -m heartgpt.app $(ARGS)

test: ## the whole test suite, slow tests included (what CI runs)
	$(PYTHON) -m pytest -q

test-fast: ## the test suite without the slow tests
	$(PYTHON) -m pytest -q -m "not slow"

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
