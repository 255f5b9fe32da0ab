# Two entry points on a fresh machine: `make demo` (set up + main job) and `make test` (set up + tests).
# TORCH_SPEC pins the torch *version* installed before the package, not its build: pip takes whatever
# build its index offers for that version (on PyPI for Linux x86_64 the default, CUDA build; on the
# brainbench development machines a local CPU wheel). TORCH_INDEX picks the index, e.g. the CPU-only
# build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP = $(VENV)/bin/python -m pip

.PHONY: setup demo test clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/brainbench train

# pytest-xdist: one worker per core, a module's tests on one worker (its fixtures built once); tests/conftest.py
# gives each worker its share of the cores' threads and starts the modules with slow end-to-end tests first.
test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=25 -n auto --dist loadscope --nbmake

clean-runs:
	rm -rf runs mlflow.db mlartifacts datasets/synthetic datasets/.cache
