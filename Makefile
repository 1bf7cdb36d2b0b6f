# The two commands of the README: `make demo` (the main job) and `make test`.
# Each sets itself up: Debian packages if missing, a virtual environment in
# .venv, the C extension built in place.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all demo test test-fast bench charts build clean clean-shm deps wheel

all: test

deps:
	@bash .ci/deps.sh

$(STAMP): pyproject.toml setup.py src/shmbroker/_build.py $(wildcard csrc/*/*.c csrc/*/*.h)
	@bash .ci/deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77"
	BROKER_WERROR=1 $(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

build: $(STAMP)

demo: $(STAMP)
	$(BIN)/shmbroker demo
	$(BIN)/shmbroker bench rpc --quick
	$(BIN)/shmbroker bench ring --quick
	$(BIN)/shmbroker bench pubsub --quick

bench: $(STAMP)
	$(BIN)/shmbroker bench ring --json bench/out/ring.json

# every suite in full (about 10 minutes), its JSON in bench/out, its chart in bench/charts (RESULTS.md shows them)
charts: $(STAMP)
	for suite in ring rpc link pubsub; do $(BIN)/shmbroker bench $$suite --json bench/out/$$suite.json || exit 1; done
	$(BIN)/shmbroker bench chart bench/out/ring.json bench/out/rpc.json bench/out/link.json bench/out/pubsub.json \
		--out-dir bench/charts

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not stress'

# A manylinux wheel, the standard way: pip builds it, auditwheel checks that it links only what the
# manylinux policy allows (libc) and tags it so. With Docker, cibuildwheel does the same for every
# CPython ([tool.cibuildwheel] in pyproject.toml).
DIST     ?= dist
WHEEL_PY ?= $(BIN)/python
wheel:
	rm -rf build $(DIST)/.raw && mkdir -p $(DIST)/.raw  # (a stale build/lib would go into the wheel)
	$(WHEEL_PY) -m pip wheel --no-deps -q -w $(DIST)/.raw .
	PATH="$(dir $(WHEEL_PY)):$$PATH" $(WHEEL_PY) -m auditwheel repair -w $(DIST) $(DIST)/.raw/*.whl
	rm -rf $(DIST)/.raw

clean-shm:
	@ls /dev/shm | grep '^brk\.' || true

clean:
	rm -rf $(VENV) build *.egg-info src/shmbroker/_brk.c src/shmbroker/*.so csrc/*/*.o
