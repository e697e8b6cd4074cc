# llmbudget — the two set-up commands are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[postgres,redis]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e '.[postgres,redis,test]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install llmbudget

.PHONY: serve
serve: $(VENV)/.installed ## Run the proxy, API and dashboard on 127.0.0.1:4141 (SQLite default)
	$(VENV)/bin/llmbudget serve $(SERVE_ARGS)

.PHONY: demo
demo: $(VENV)/.installed ## Watch it work with no API key: simulated provider and agents, dashboard on 127.0.0.1:4141
	$(VENV)/bin/llmbudget demo $(DEMO_ARGS)

.PHONY: services
services: ## Start PostgreSQL and Redis when they are down (the tests use both for real)
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; pg_isready -h 127.0.0.1 -p 5432
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done; redis-cli -h 127.0.0.1 -p 6379 ping

.PHONY: test
test: $(VENV)/.installed-test services chromium ## Install test dependencies, start PostgreSQL/Redis, check the layers, run every test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: chromium
chromium: ## Install Debian's chromium for the browser tests when it is missing (never a downloaded browser)
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

.PHONY: lint
lint: $(VENV)/.installed-test ## ruff, mypy and the import-linter layer contracts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check llmbudget tests bench
	$(VENV)/bin/ruff format --check llmbudget tests bench
	$(VENV)/bin/mypy

.PHONY: bench
bench: $(VENV)/.installed-test services ## Run the benchmarks in bench/ (figures for the closing notes)
	$(PY) bench/run_all.py $(BENCH_ARGS)

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
