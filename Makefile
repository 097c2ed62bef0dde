# `make demo` and `make test` create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scl-installed
# glibc malloc: keep large blocks instead of returning them to the system on every free.
# Several times faster on large activations, and stable numbers for benchmarks.
FAST_MALLOC := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev,federated,onnx]'
	touch $(STAMP)

# DEMO_ARGS: extra options, e.g. `make demo DEMO_ARGS="--quick --out runs/first"` (the tests run that form)
DEMO_ARGS ?=
demo: $(STAMP)
	$(FAST_MALLOC) $(VENV)/bin/scl demo $(DEMO_ARGS)

test: $(STAMP)
	$(FAST_MALLOC) $(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(FAST_MALLOC) $(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(FAST_MALLOC) $(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check scl tests benchmarks
	$(VENV)/bin/mypy scl

clean:
	rm -rf $(VENV) build *.egg-info
