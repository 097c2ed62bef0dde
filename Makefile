# `make demo` and `make test` create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scl-installed
# Stable allocator behaviour for benchmarks (glibc malloc keeps large blocks mapped).
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev,federated]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scl demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(BENCH_ENV) $(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check scl tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
