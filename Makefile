# Connector Segments: `make demo` runs the main job on the embedded default, `make test` the
# whole test suite. Both create .venv (Python 3.11) and install requirements-dev.txt (the
# product's requirements.txt and the test tools) when needed,
# and are safe to run again.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
LOCAL := $(CURDIR)/.local
CONSTRAINTS := docker/image-packages.txt
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt $(CONSTRAINTS) | cksum | cut -d' ' -f1)

# The embedded default: Airflow home, Netmera DB (user table + segment store), demo warehouse
# and staging all live in .local/ (git-ignored).
demo ui cli: export AIRFLOW_HOME := $(LOCAL)/airflow
demo ui cli: export AIRFLOW__CORE__LOAD_EXAMPLES := False
demo ui cli: export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
demo ui cli: export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
demo ui cli: export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := False
demo ui cli: export PYTHONPATH := $(CURDIR)
demo ui cli: export PATH := $(BIN):$(PATH)
demo ui cli: export AIRFLOW_CONN_NETMERA_DB := {"conn_type": "sqlite", "host": "$(LOCAL)/netmera.db"}
demo ui cli: export AIRFLOW_CONN_DEMO_WAREHOUSE := {"conn_type": "sqlite", "host": "$(LOCAL)/warehouse.db"}
demo ui cli: export CONNECTOR_SEGMENTS_STAGING_DIR := $(LOCAL)/staging
# Send Message goes to the local Netmera sandbox (include/demo/sandbox.py), never to the
# real Netmera: `demo` and `ui` run it around their command (include/demo/with_sandbox.py), its
# state (what it was sent) in .local/ so that sends keep their stats across restarts. The key
# is the sandbox's fixed demo key (DEMO_API_KEY there); a local server needs no long retries.
# The same process serves the example segments' Mixpanel and Amplitude cohorts on free ports;
# the launcher sets mixpanel_default and amplitude_default to them (vendor_sandboxes.py).
SANDBOX_PORT := $(or $(CONNECTOR_SEGMENTS_SANDBOX_PORT),8975)
SANDBOX := $(BIN)/python -m include.demo.with_sandbox
demo ui cli: export CONNECTOR_SEGMENTS_SANDBOX_PORT := $(SANDBOX_PORT)
demo ui cli: export CONNECTOR_SEGMENTS_SANDBOX_STATE := $(LOCAL)/netmera_sandbox.json
demo ui cli: export AIRFLOW_CONN_NETMERA_DEFAULT := {"conn_type": "http", "host": "http://127.0.0.1:$(SANDBOX_PORT)/rest/3.0", "password": "netmera-sandbox-demo-key", "extra": {"timeout": 10, "max_attempts": 3, "backoff_base": 0.5}}
# The UI's demo logins (user:role; include/demo/ui_logins.py fixes their passwords), served on
# 127.0.0.1 only: those passwords are no secret. Set AIRFLOW__API__HOST=0.0.0.0 to serve others.
# Airflow runs as include/demo/local_airflow.py starts it: `airflow standalone`'s parts with the
# task-log servers on 127.0.0.1 (standalone binds them to every interface). It derives
# AIRFLOW__CORE__EXECUTION_API_SERVER_URL from AIRFLOW__API__PORT (default 8080) and the host
# unless set, and its --check, the recipe's first step, stops at once naming the variable to
# set when the ports do not fit together or are taken.
ui: export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS := admin:admin,viewer:viewer
ui: export AIRFLOW__API__HOST ?= 127.0.0.1
LOCAL_AIRFLOW := $(BIN)/python -m include.demo.local_airflow

.PHONY: install demo test ui cli lint clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "Python 3.11 is needed (python3.11 not found)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, got " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c $(CONSTRAINTS)
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	mkdir -p $(LOCAL)
	$(BIN)/airflow db migrate > $(LOCAL)/airflow-db-migrate.log 2>&1 || { cat $(LOCAL)/airflow-db-migrate.log; exit 1; }
	$(BIN)/python -m include.orchestration.pools
	$(BIN)/python -m include.demo.seed --db $(LOCAL)/netmera.db --warehouse $(LOCAL)/warehouse.db
	$(BIN)/python -m include.cli validate
	$(SANDBOX) $(BIN)/python -m include.demo.refresh_all
	@echo
	$(BIN)/python -m include.cli list

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

ui: $(STAMP)
	@$(LOCAL_AIRFLOW) --check
	mkdir -p $(LOCAL)
	$(BIN)/airflow db migrate > $(LOCAL)/airflow-db-migrate.log 2>&1 || { cat $(LOCAL)/airflow-db-migrate.log; exit 1; }
	$(BIN)/python -m include.orchestration.pools
	# A first `make ui` without `make demo` seeds and refreshes the examples, so the page has data.
	test -f $(LOCAL)/netmera.db || { $(BIN)/python -m include.demo.seed --db $(LOCAL)/netmera.db --warehouse $(LOCAL)/warehouse.db && $(SANDBOX) $(BIN)/python -m include.demo.refresh_all; }
	@$(BIN)/python -m include.demo.ui_logins
	$(SANDBOX) $(LOCAL_AIRFLOW)

# The CLI against the demo's database, e.g. `make cli ARGS="details churn_risk"`.
cli: $(STAMP)
	@$(BIN)/python -m include.cli $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(LOCAL)
