# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Installed only when the venv has no torch at all, so a cluster's CUDA build is never replaced.
TORCH_SPEC ?= torch==2.13.0
# Versions last tested together (see its header); `make install CONSTRAINTS=` resolves freely.
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pretrain.demo --out demo_out

# Each test file on one of `-n auto` workers (one per usable core; tests/conftest.py groups them),
# so the single-threaded tests of a 2-core machine use both cores. TEST_WORKERS=0 runs them in
# this process, one after the other (what `pytest -s` needs to show a test's printed figures).
TEST_WORKERS ?= auto
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# ruff (lint + format check) first: seconds, and it fails before a 13-minute test run would
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf demo_out .pytest_cache
