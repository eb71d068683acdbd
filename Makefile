# exitflow: two commands do all the set-up on a fresh machine.
#   make demo   - create/reuse .venv, install, run the embedded default (config.yaml)
#   make test   - create/reuse .venv, install, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.exitflow-installed

.PHONY: demo test setup system-deps clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU build first: an unpinned torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/exitflow demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python bash scripts/typecheck.sh
	$(BIN)/python -m pytest -q

clean-cache:
	rm -rf .cache
