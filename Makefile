# deepsift: `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint format benchmark clean

# Create the virtual environment and install the dependencies (not the code:
# detectors/, datasets/ and deepsift/ run from the checkout).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

# Build the embedded benchmark (cached), train on one generator family on CPU,
# evaluate on held-out photos of every family; prints the metrics table and
# writes metrics JSON/CSV/Markdown and ROC PNGs into runs/demo/<time>/.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) train.py experiment=demo

# The import contracts (pyproject.toml [tool.importlinter]) and lint first: seconds,
# and a broken layer or an unformatted file fails before the 4-minute suite.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

benchmark: $(STAMP)
	$(PY) -m benchmarks.forward_speed

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
