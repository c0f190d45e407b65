# Two commands matter: `make run` (demo on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR := $(abspath $(or $(TELEMETRY_PIPELINE_HOME),.telemetry_pipeline))
SIM_PORT ?= 8765

.PHONY: run deploy test test-fast test-latest lint install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The demo: a simulator on loopback stands in for both HTTP sources when none is configured,
# the outbox stands in for Signavio; the sensor and the schedule are on.
run: install
	@mkdir -p $(HOME_DIR)
	@if [ -z "$$EXTRACT_SERVICE_URL$$AGENT_METRICS_BASE_URL$$AGORA_PLATFORM_URL" ]; then \
	  echo "no source configured: starting the simulator on 127.0.0.1:$(SIM_PORT)"; \
	  $(BIN)/telemetry-pipeline simulate --port $(SIM_PORT) --sessions 200 --live-rate 6 \
	    > $(HOME_DIR)/simulator.log 2>&1 & \
	  trap "kill $$! 2>/dev/null" EXIT INT TERM; \
	  export EXTRACT_SERVICE_URL=http://127.0.0.1:$(SIM_PORT) AGENT_METRICS_BASE_URL=http://127.0.0.1:$(SIM_PORT); \
	fi; \
	export TELEMETRY_PIPELINE_HOME=$(HOME_DIR) DAGSTER_HOME=$${DAGSTER_HOME:-$(HOME_DIR)/dagster_home}; \
	$(BIN)/python -m telemetry_pipeline.instance $(BIN)/dg dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# Production: the PostgreSQL instance (deploy/dagster.yaml, DAGSTER_POSTGRES_URL) and Dagster as three
# processes (gRPC code server, daemon, webserver on WEBSERVER_PORT, default 3000). Sources as configured.
deploy: install
	BIN=$(BIN) TELEMETRY_PIPELINE_HOME=$(HOME_DIR) deploy/start.sh

# Style, types and the layers (imports point down: pyproject.toml, [tool.importlinter]) first, in seconds; then the
# whole suite.
lint: install
	$(BIN)/ruff check telemetry_pipeline telemetry_pipeline_tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q

# The quick subset (`fast` marker: the model, the clients, batching, one export end to end); under 30 s.
test-fast: install
	$(BIN)/python -m pytest -q -m fast

# The whole suite on the newest Dagster the registry has, whatever our upper pins say (README, Development): its
# own venv, so .venv keeps what pyproject.toml allows. pip warns that the upgrade breaks our pins; that is the point.
# The lower bounds stay: without them pip, finding no dagster-postgres for the newest dagster, backtracks to a
# dagster-postgres of 2021 that pins nothing (and an old psycopg2 that does not import).
LATEST ?= .venv-latest
LATEST_DAGSTER := 'dagster>=1.13' 'dagster-webserver>=1.13' 'dagster-postgres>=0.29' 'dagster-graphql>=1.13'
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -e '.[dev]'
	$(LATEST)/bin/python -m pip install --quiet --upgrade $(LATEST_DAGSTER)
	@$(LATEST)/bin/python -m pip list 2>/dev/null | grep -i '^dagster'
	$(LATEST)/bin/python -m pytest -q

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .hypothesis
