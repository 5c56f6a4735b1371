# Two commands for a fresh machine:  `make demo` (set up + end-to-end demo)  and  `make test`.
# Setup is idempotent: the virtualenv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test check lab lessons clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/cmitm demo

# The fast suite: every lesson once, short; no slow tests, no browser (about 8 min on 2 cores).
test: setup
	MPLBACKEND=Agg $(BIN)/python -m pytest

# Everything CI runs: the fast suite, the slow tests and the browser test, with the lessons' short runs under
# nbval (the copies lesson_runs.py writes) in place of papermill's (about 30 min on 2 cores).
check: setup
	rm -rf runs/check && $(BIN)/python tests/lesson_runs.py runs/check
	MPLBACKEND=Agg $(BIN)/python -m pytest -m "" --ignore=tests/test_lessons_run.py --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=900 tests runs/check

# Every numbered lesson at its defaults, executed with papermill into docs/lessons/ (committed with outputs).
# A cell that runs past an hour fails the run instead of waiting forever (a lost kernel message can hang it).
lessons: setup
	mkdir -p docs/lessons
	for nb in notebooks/0*.ipynb; do \
		MPLBACKEND=Agg $(BIN)/papermill --execution-timeout 3600 --cwd notebooks "$$nb" "docs/lessons/$$(basename $$nb)" || exit 1; \
	done

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs data/cache
