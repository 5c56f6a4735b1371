# Two commands for a fresh machine:  `make demo` (set up + end-to-end demo)  and  `make test`.
# Setup is idempotent: the virtualenv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lab lessons clean-runs

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

# Every numbered lesson at its defaults, executed with papermill into docs/lessons/ (committed with outputs).
lessons: setup
	mkdir -p docs/lessons
	for nb in notebooks/0*.ipynb; do \
		MPLBACKEND=Agg $(BIN)/papermill --cwd notebooks "$$nb" "docs/lessons/$$(basename $$nb)" || exit 1; \
	done

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs data/cache
