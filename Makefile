# Development tasks. `run` and `test` create .venv on first use, and install
# requirements.txt into it again when that file changes.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Arguments for server.py in `make run`, e.g. ARGS="--port 8001".
ARGS ?=
# `make run PROCESSES=4`: Redis, the database and 4 server processes under supervisord
# (scripts/stack.py). Unset: one process, without Redis.
PROCESSES ?=
# Arguments for pytest in `make test`, e.g. PYTEST_ARGS="-x tests/test_auth.py".
PYTEST_ARGS ?=
# The benchmark's own environment (load client, reference servers, py-spy), apart
# from the server's .venv. Arguments for bench/run.py, e.g. BENCH_ARGS=--quick.
BENCH_VENV := bench/.venv-dev
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test bench devdb clean

help: ## List the targets
	@awk -F ':.*## ' '/^[a-z]+:.*## / { printf "  make %-6s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.txt
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

run: $(VENV)/.installed ## Start server.py, and a development database unless MONGODB_URI is set
ifeq ($(strip $(PROCESSES)),)
	$(VENV_PYTHON) scripts/devdb.py run -- $(VENV_PYTHON) server.py $(ARGS)
else
	$(VENV_PYTHON) scripts/stack.py run --processes $(PROCESSES)
endif

# The tests start their own throwaway database unless TAXI_TEST_MONGODB_URI names one.
test: $(VENV)/.installed ## Run the test suite
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

$(BENCH_VENV)/.installed: bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -r bench/requirements.txt
	touch $@

# taxi itself runs from .venv (with the database that scripts/devdb.py starts), the
# load client and the reference servers from bench/.venv-dev.
bench: $(VENV)/.installed $(BENCH_VENV)/.installed ## Run the benchmark (about 25 min; BENCH_ARGS=--quick for 2)
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

devdb: ## Find mongod or FerretDB, building FerretDB into var/bin if needed
	$(PYTHON) scripts/devdb.py build

clean: ## Remove .venv and bench/.venv-dev
	rm -rf $(VENV) $(BENCH_VENV)
