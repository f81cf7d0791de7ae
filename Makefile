# `make demo` and `make test` each do the whole set-up first (tools/setup.sh is idempotent and quick when done).
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# `make test` runs the suite in this many processes (pytest-xdist); 2 suits a 2-core machine.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast test-heavy lint bench clean

setup:
	@bash tools/setup.sh

demo: setup
	$(VENV)/bin/tf-ecqx demo

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

test-fast: setup
	$(PY) -m pytest -q -m fast

test-heavy: setup
	$(PY) -m pytest -q -m heavy

lint: setup
	$(VENV)/bin/ruff check tf_ecqx tests tools

bench: setup
	$(PY) tools/bench_ecq.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
