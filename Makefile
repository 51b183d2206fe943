# Arbiter's commands. The README's quick start is `make run` (embedded platform) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Test services: a PostgreSQL database and a Redis db number of the suite's own.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/arbiter
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test check lint fmt bench services install install-dev lock vendor migrations clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Arbiter needs Python 3.11 (torch 2.13.0 CPU wheel)"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and alone: anything that depends on it then finds 2.13.0 satisfied (no CUDA download).
$(VENV)/.base-installed: $(VENV)/bin/python requirements/torch.txt requirements/base.txt requirements/constraints.txt
	$(PIP) install -q -r requirements/torch.txt
	$(PIP) install -q -r requirements/base.txt -c requirements/constraints.txt
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.base-installed requirements/dev.txt
	$(PIP) install -q -r requirements/dev.txt -c requirements/constraints.txt
	@touch $@

install: $(VENV)/.base-installed
install-dev: $(VENV)/.dev-installed

## The platform on this machine: SQLite, filesystem broker, in-memory channels; web + worker + beat.
run: install
	$(PY) manage.py runplatform

services:
	@scripts/services.sh

## Everything CI checks: lint, migrations, architecture contracts, then the whole suite on PostgreSQL + Redis.
test: install-dev services
	@scripts/chromium.sh
	$(MAKE) --no-print-directory check
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest
	@# The embedded quick start's database: the tests marked `sqlite` again, on SQLite with no Redis.
	rm -f var/test-embedded.sqlite3*
	DATABASE_URL=sqlite:///var/test-embedded.sqlite3 REDIS_URL= $(PY) -m pytest -m sqlite -q

check: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy arbiter arbiter_client training evaluation loop artifacts workers arbiter_worker

lint: check

fmt: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## Benchmarks print tables; they need PostgreSQL + Redis (and TRL for the engine comparison; bench_mlflow.py and
## bench_labelstudio.py install MLflow / Label Studio from PyPI into their own venvs under var/bench/ on first use).
## `make bench BENCH_FLAGS=--quick`: a few-minute smoke run of every bench (figures not for the README).
BENCH_FLAGS ?=
bench: install-dev services
	$(PIP) install -q -r requirements/bench.txt -c requirements/constraints.txt
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) bash bench/run_all.sh $(BENCH_FLAGS)

migrations: install-dev
	$(PY) manage.py makemigrations

lock: install-dev
	$(PIP) freeze | grep -v -E '^(torch|-e )' > requirements/constraints.txt.new
	@{ head -2 requirements/constraints.txt; cat requirements/constraints.txt.new; } > requirements/constraints.txt.tmp
	@mv requirements/constraints.txt.tmp requirements/constraints.txt; rm requirements/constraints.txt.new

vendor:
	cd $$(mktemp -d) && npm pack htmx.org@2.0.11 plotly.js-dist-min@3.7.0 >/dev/null && \
	  for t in *.tgz; do tar xzf $$t && mv package $${t%.tgz}; done && \
	  cp htmx.org-2.0.11/dist/htmx.min.js $(CURDIR)/static/vendor/ && \
	  cp plotly.js-dist-min-3.7.0/plotly.min.js $(CURDIR)/static/vendor/

clean:
	rm -rf var/db.sqlite3* var/broker var/results var/celerybeat-schedule* var/initial-credentials.txt
