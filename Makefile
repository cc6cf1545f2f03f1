# Two commands: `make demo` and `make test`. Both create .venv and install tvmq into it first:
# demo the package alone, test the package with its test extras (pytest, Jupyter, ruff, ...).
# One stamp per install, so `make test` after `make demo` adds only what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
PACKAGE_STAMP := $(VENV)/.package-stamp
# package + test extras; the name scripts already use for a test-ready venv
TEST_STAMP    := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PACKAGE_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(TEST_STAMP): $(PACKAGE_STAMP)
	$(PIP) -e ".[test]"
	touch $@

demo: $(PACKAGE_STAMP)
	$(BIN)/tvmq demo

# The tests run on pytest-xdist workers, one per core; tests/conftest.py gives each worker's
# session fresh cache folders; the notebooks get theirs here
# (tvmq's cache; onnxruntime's, matplotlib's and IPython's files), so a user's cache cannot
# change a result and nothing is written to the home folder.
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n auto tests
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  TVMQ_CACHE_DIR="$$tmp/tvmq" XDG_CACHE_HOME="$$tmp/cache" MPLCONFIGDIR="$$tmp/matplotlib" \
	  IPYTHONDIR="$$tmp/ipython" $(BIN)/python -m pytest -q --nbmake tutorials

lint: $(TEST_STAMP)
	$(BIN)/ruff check tvmq passes targets tests benchmarks

bench: $(TEST_STAMP)
	$(PIP) -e ".[test,bench]"
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
