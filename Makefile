# Two entry points on a fresh machine: `make demo` (set up + main job) and `make test` (set up + tests).
# TORCH_SPEC picks the torch build installed before the package; the default is the CPU wheel
# (override e.g. TORCH_SPEC="torch>=2.4" for a CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip

.PHONY: setup demo test clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/brainbench train

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

clean-runs:
	rm -rf runs mlflow.db datasets/synthetic datasets/.cache
