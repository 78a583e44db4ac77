# Sequence Hub: `make run` starts everything on this machine, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: run test install install-test migrate lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml $(STAMP)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

install-test: $(TSTAMP)

# hub_init: the data folder (modes, secret key, embedded Redis password), migrations, role
# groups, the first admin. Settings only read, so it comes before anything else.
migrate: install
	$(PY) manage.py hub_init

run: migrate
	$(PY) manage.py runhub

# The suite runs on the Redis REDIS_URL names, or starts one of its own (tests/conftest.py).
# Its time is mostly waiting on the hubs it starts (load ~1.5 on 2 cores when run in one
# process), so it runs in TEST_PROCS processes, each with a hub, data folder and database of
# its own; a module's tests stay together (their module fixtures are made once). Two, not
# more: with three, the hubs they start held past PostgreSQL's 100 connections at times.
TEST_PROCS ?= 2
test: install-test
	$(PY) -m pytest -n $(TEST_PROCS) --dist loadscope $(PYTEST_ARGS)

# mypy's Django plugin imports dashboard.settings: its defaults suffice, nothing is connected to.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install-test
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) var
