# Two commands for a fresh machine:  `make demo` (set up + end-to-end demo)  and  `make test`.
# Setup is idempotent: the virtualenv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lab clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/cmitm demo

test: setup
	MPLBACKEND=Agg $(BIN)/python -m pytest

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs data/cache
