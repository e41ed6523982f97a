# The whole set-up on a fresh machine with Python 3.11: `make dev` or `make test`.
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .uv/bin/uv
VENV := .venv
PORT ?= 3000
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=
BENCH_ARGS ?=

# External commands say "python": it must be this environment's interpreter.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
# Bytecode compiled at install (~11 s): every new process (dagster dev, step processes, Dask
# workers, tests' subprocesses) then imports dagster + distributed in ~1.4 s instead of ~3.8 s,
# also where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
export UV_COMPILE_BYTECODE := 1

.PHONY: install system-packages dev test lint format bench clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	touch $@

install: $(VENV)/.synced

# Debian packages of the real-server tests (Slurm, munge) and the browser test (Chromium).
system-packages:
	bash .ci/install-system-packages

dev: install
	mkdir -p $(DAGSTER_HOME)
	DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/dagster dev -m example_project.definitions \
		-h 127.0.0.1 -p $(PORT)

test: install system-packages
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright

# Every scenario, every client, interleaved, in one process; JSON lands in benchmarks/results/.
# The dagster-ray peer needs the optional `ray` group: installed here when possible, else skipped.
bench: install
	$(UV) sync --frozen --group ray || echo "bench: could not install the ray group; the Ray peer will be skipped"
	$(VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .uv .pytest_cache .ruff_cache
