# `make demo` and `make test` set everything up (a virtual environment in .venv) and run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench venv clean ray

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@echo "hwquant: installing the pinned dependencies into $(VENV) (first run only, a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m hwquant.core.kernels
	touch $(STAMP)
	@echo "hwquant: ready; run the CLI as $(VENV)/bin/hwquant (or: source $(VENV)/bin/activate)"

demo: $(STAMP)
	$(PY) -m hwquant.cli.main demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks $(wildcard examples)
	$(PY) -m pytest -q -n 2 -m "not slow and not gpu" --durations=15 --doctest-modules src/hwquant tests

# the optional Ray extra (hwquant sweep --ray; the slow Ray test)
ray: $(STAMP)
	$(PY) -m pip install -q ray==2.60.0 -c constraints.txt

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks $(wildcard examples)
	$(VENV)/bin/ruff format --check src tests benchmarks $(wildcard examples)

bench: $(STAMP)
	$(PY) benchmarks/qat_step.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
