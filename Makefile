# Every target creates the virtual environment itself, so a fresh clone needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch 2.13.0 first: its CPU wheel lies on disk here; the pin in pyproject then installs nothing more.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,torch,dev,scale]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/deploysparse demo -o demo-out

# --dist loadgroup: tests marked with one xdist_group run in one worker (the Ray modules, which also
# hold a lock: pytest 9.2 + xdist 3.8 ignore the mark, tests/conftest.py); the others as --dist load.
test: $(STAMP)
	$(BIN)/ruff check deploysparse tests benchmarks examples
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

# The inner loop: everything but the tests marked slow (browser, hadolint, subprocess CLIs, full-size
# hypothesis). `make test` (and CI) still runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check deploysparse tests benchmarks examples
	$(BIN)/ruff format --check deploysparse tests benchmarks examples

clean:
	rm -rf $(VENV) demo-out
