# Two commands a new user needs (see README):
#   make demo   set up .venv and train on the built-in digits data
#   make test   set up .venv (with dev tools) and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and alone: this pin resolves to the CPU wheel; an open `torch` requirement pulls CUDA (GBs).
TORCH ?= torch==2.13.0
# Test processes: one per core, at most 4 (pytest-xdist; 2 on the 2-core CI). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal --maxprocesses 4
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt

.PHONY: setup setup-dev demo test test-fast lint format constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TORCH)"
	touch $@

$(VENV)/.runtime: pyproject.toml requirements/constraints.txt $(VENV)/.torch
	$(PIP) -e .
	touch $@

$(VENV)/.dev: pyproject.toml requirements/constraints.txt $(VENV)/.runtime
	$(PIP) -e ".[dev]"
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# The main job: train the MLP on scikit-learn's digits, W&B offline, Rich progress bar, summary at the end.
demo: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/lightning-tricks train $(ARGS)

# What CI runs (.ci/run): lint, format check, the whole suite (slow DDP/CLI tests included).
test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	WANDB_MODE=offline $(PYTEST) --durations=25 $(PYTEST_ARGS)

# Day-to-day: skip the slow end-to-end tests.
test-fast: setup-dev
	WANDB_MODE=offline $(PYTEST) -m "not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

constraints: setup-dev
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu//' > requirements/constraints.txt.new
	{ sed -n '1,3p' requirements/constraints.txt; cat requirements/constraints.txt.new; } > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt && rm requirements/constraints.txt.new

clean:
	rm -rf $(VENV) outputs multirun wandb lightning_logs .pytest_cache .ruff_cache build *.egg-info
