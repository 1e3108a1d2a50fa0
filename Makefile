# dlbook: two commands.
#   make book   set up .venv, execute every notebook, build the site into _build/html
#   make test   set up .venv, then run every test (unit, notebooks, site build, browser, Colab-shaped
#               notebooks, benchmarks in quick mode)
#   make colab  every notebook in the Colab-shaped venv .venv-colab (requirements/colab.txt)
#   make portability  every notebook under three CPU kernel paths (native, avx2, default), compared
# Everything is installed by these targets; nothing is installed by hand.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# Notebooks run single-threaded BLAS per process so that two xdist workers share the 2 cores well.
NBVAL_FLAGS := --nbval-lax --nbval-current-env -n 2 --dist loadfile
NOTEBOOKS := chapters exercises
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup book test unit notebooks execute site browser colab benchmarks timings clean constraints student-versions portability

help:
	@echo "make book   build the website into _build/html (sets everything up first)"
	@echo "make test   run every test: unit, notebooks, site build, browser check, Colab-shaped notebooks, benchmarks"
	@echo "make colab  run every notebook in the Colab-shaped venv (requirements/colab.txt)"
	@echo "make portability  run every notebook under the native, avx2 and default CPU kernel paths and compare"

setup: $(STAMP)

# torch is installed first and alone: its pinned CPU wheel is local, and installing it
# under the constraints keeps pip from ever pulling a CUDA build (see ../shared/TOOLCHAIN.md).
$(STAMP): pyproject.toml requirements/constraints.txt requirements/dev.txt
	@start=$$(date +%s); \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q -c requirements/constraints.txt torch && \
	$(PY) -m pip install -q -c requirements/constraints.txt -r requirements/dev.txt -e . && \
	echo "setup: installed in $$(( $$(date +%s) - start )) s" && touch $@

book: $(STAMP)
	$(PY) tools/build_site.py
	@echo "The book is built: open file://$(CURDIR)/_build/html/index.html"

test: $(STAMP)
	@mkdir -p _build
	$(PY) tools/run_tests.py

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 tests --ignore=tests/browser --ignore=tests/colab

notebooks: $(STAMP)
	$(PY) -m pytest $(NBVAL_FLAGS) --durations=0 $(NOTEBOOKS)

# Execute every notebook once, two at a time, into the site's jupyter-cache (what `make test` does).
execute: $(STAMP)
	$(PY) tools/execute_notebooks.py

site: $(STAMP)
	$(PY) tools/build_site.py

# .venv-colab is built by tools/colab.py, keyed on requirements/colab.txt (and reset before each run).
colab: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) tools/colab.py

# Every notebook and exercise set under three CPU kernel paths, with a table of what prints differently
# (_build/portability/report.md). Run it before changing a claim; NB="path ..." limits it to some notebooks.
portability: $(STAMP)
	$(PY) tools/portability.py $(NB)

benchmarks: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

browser: $(STAMP)
	$(PY) tools/ensure_chromium.py
	$(PY) -m pytest -q tests/browser

student-versions: $(STAMP)
	$(PY) -m dlbook.grading generate

constraints:
	rm -rf /tmp/dlbook-constraints && $(PYTHON) -m venv /tmp/dlbook-constraints && \
	/tmp/dlbook-constraints/bin/pip install -q torch==2.13.0 && \
	/tmp/dlbook-constraints/bin/pip install -q -r requirements/dev.txt -e . && \
	/tmp/dlbook-constraints/bin/pip freeze --exclude-editable | sed "s/+cpu//" > requirements/constraints.txt && \
	$(PYTHON) tools/environment.py

clean:
	rm -rf _build
