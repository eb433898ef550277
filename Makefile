# Transformer Deep Dive — run `make help` for the targets.
# `make` sets everything up and builds both releases; `make test` runs the whole test suite.

PYTHON      ?= python3.11
VENV        ?= .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
# nbgrader shells out to `alembic`: the virtualenv's bin/ must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONPATH := $(CURDIR)

SUBMISSIONS ?=
OUT         ?=
WORKERS     ?=
SCHEDULER   ?=
RESUME      ?=
VISIBLE     ?=
NOBOX       ?=
SANDBOX_MEMORY ?=
REBUILD     ?=
PYTEST_ARGS ?=
PORT        ?= 8890

.DEFAULT_GOAL := all
.PHONY: all help setup sandbox browser progress data models student release grade formgrader grades lab test test-fast test-calibration lint clean

all: setup sandbox data models student release ## set everything up and build both releases (the README's first command)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  make grade SUBMISSIONS=<dir or .zip> OUT=<dir> [WORKERS=N] [RESUME=1]   autograde a class (see README)"
	@echo "  make formgrader OUT=<dir>, then make grades OUT=<dir>                    grade the written answers by hand"

setup: $(VENV)/.installed ## create .venv with the pinned packages (idempotent)

# torch==2.13.0 comes first and on its own: on the course machines it resolves to the CPU
# build already on disk; any other torch spec would pull several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=python3.x'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# $(call apt_package,PROGRAM,PACKAGE,WHAT_FOR,NOTE): as root (CI, a grading server) install the Debian
# package when PROGRAM is missing; otherwise print NOTE, which says how. (Arguments without commas.)
define apt_package
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(2) (Debian package) for $(3)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) >/dev/null; }; \
	  else \
	    echo "note: $(2) is not installed; $(4)"; \
	  fi; }
endef
SANDBOX_NOTE := make grade needs it (sudo apt-get install bubblewrap, or dnf/pacman install bubblewrap), or grade trusted work with NOBOX=1
BROWSER_NOTE := the browser test needs it (sudo apt-get install chromium)

# make grade runs every student kernel in a bubblewrap sandbox (grader/sandbox.py).
sandbox: ## install bubblewrap, the sandbox of graded kernels (apt-get, as root), if it is missing
	$(call apt_package,bwrap,bubblewrap,the graded kernels' sandbox,$(SANDBOX_NOTE))

# tests/test_browser.py drives JupyterLab in Debian's Chromium through Playwright (Playwright's own browser
# download cannot run on the course machines).
browser: ## install Chromium, the browser of the JupyterLab test (apt-get, as root), if it is missing
	$(call apt_package,chromium,chromium,the JupyterLab browser test,$(BROWSER_NOTE))

data: setup ## build the course data sets into data/build/ (offline, deterministic)
	$(PY) data/build_data.py

# The three small checkpoints are committed (data/models/, ~15 MB) with the sha256 of every file in
# data/models/MANIFEST.json: this verifies them in a second and builds only a family whose files are
# missing or whose build inputs changed (the build script, the data checksums, the pins of the packages
# that compute the weights; ~10 min for all three on 2 cores, T5 most of it). A file that does not match
# stops make with its name and the two fixes (restore it, or REBUILD=<family> on purpose).
models: setup data ## verify the shipped offline checkpoints (data/models/); REBUILD=t5|all rebuilds on purpose
	$(PY) data/checkpoints.py $(if $(REBUILD),--rebuild $(REBUILD))

student: setup ## regenerate course/ (student notebooks) from solutions/ with nbgrader
	$(PY) -m grader.build student

release: student ## write dist/transformer-deep-dive-{student,instructor}.zip
	$(PY) -m grader.build release

grade: setup sandbox ## autograde: make grade SUBMISSIONS=<dir or .zip> OUT=<dir> [WORKERS=N] [SCHEDULER=tcp://...] [RESUME=1] [NOBOX=1] [SANDBOX_MEMORY=GiB]
	@test -n "$(SUBMISSIONS)" -a -n "$(OUT)" || { echo "usage: make grade SUBMISSIONS=<dir or .zip> OUT=<new dir> [WORKERS=N] [SCHEDULER=tcp://host:8786] [RESUME=1]"; exit 2; }
	$(PY) -m grader.grade "$(SUBMISSIONS)" "$(OUT)" $(if $(WORKERS),--workers $(WORKERS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(RESUME),--resume) $(if $(NOBOX),--no-sandbox) $(if $(SANDBOX_MEMORY),--sandbox-memory $(SANDBOX_MEMORY))

# The written answers (modules 04, 08, 09, 11) are graded by a person: nbgrader's formgrader on a graded
# run, then the outputs written again with the hand grades (grader/manual.py).
formgrader: setup ## open nbgrader's formgrader on a graded run to grade the written answers: make formgrader OUT=<dir> [PORT=8890]
	@test -n "$(OUT)" || { echo "usage: make formgrader OUT=<the OUT of a make grade run> [PORT=8890]"; exit 2; }
	$(PY) -m grader.manual formgrader "$(OUT)" --port $(PORT)

grades: setup ## after hand-grading: grades.csv, cell_grades.csv and feedback pages again from the gradebook: make grades OUT=<dir>
	@test -n "$(OUT)" || { echo "usage: make grades OUT=<the OUT of a make grade run>"; exit 2; }
	$(PY) -m grader.manual grades "$(OUT)"

# Runs (in a full checkout also grades) the course notebooks the learner has worked on; never writes them.
progress: setup ## table of your exercises: visible test passed / failed / not attempted, points and feedback pages [VISIBLE=1: no grading]
	$(PY) -m deepdive.progress $(if $(VISIBLE),--visible-only)

lab: setup ## open JupyterLab on the student notebooks
	$(BIN)/jupyter lab --notebook-dir=course

test: setup sandbox browser data models ## run the test suite (what CI runs; within 25 min on 2 cores)
	$(PY) -m pytest -m "not calibration and not graded_reference" $(PYTEST_ARGS)

test-fast: setup sandbox data models ## the tests that take seconds, not minutes (no grading, no training checks' seeds)
	$(PY) -m pytest -m "not slow and not calibration" $(PYTEST_ARGS)

test-calibration: setup data models ## training checks on their other four seeds and a byte-for-byte rebuild of the checkpoints (~15 min)
	$(PY) -m pytest -m calibration $(PYTEST_ARGS)

lint: setup ## ruff on code and notebooks
	$(BIN)/ruff check .

clean: ## remove build outputs (keeps .venv and the shipped checkpoints; `rm -rf .venv` for a full reset)
	rm -rf dist data/build data/models/.*.partial .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
