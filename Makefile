# Edgefleet developer entry points. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV_STAMP := $(VENV)/.edgefleet-dev-installed
PYTEST_ARGS ?=
# Most tests wait on brokers, databases and subprocesses: 4 workers keep 2 cores busy.
# The long tests are collected first (tests/conftest.py); small scheduling chunks spread
# them over every worker instead of handing them all to the first one.
PYTEST_WORKERS ?= 4
PYTEST_CHUNK ?= 8

.DEFAULT_GOAL := help
.PHONY: help install lint format test demo clean vendor

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(DEV_STAMP) ## create .venv and install edgefleet with every extra (editable)

lint: $(DEV_STAMP) ## ruff: lint and formatting check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP) ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The tests start hundreds of server, agent and simulator processes; where
# PYTHONDONTWRITEBYTECODE is set each would compile the project's modules again (about
# 0.5 s a server start on a slow box), so they are compiled once here (__pycache__ is
# ignored by git). pytest exits 5 when it collected no tests: not a failure of the code,
# so say so and pass.
test: lint ## lint, then run the whole test suite
	@$(BIN)/python -m compileall -q agent fleet_server firmware_bundles protocol simulator >/dev/null
	@$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxschedchunk $(PYTEST_CHUNK) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

demo: $(DEV_STAMP) ## the whole product on this machine: server, 200 live devices, rollouts, alarm, recall (~1 min)
	@$(BIN)/python -m compileall -q agent fleet_server firmware_bundles protocol simulator >/dev/null
	$(BIN)/fleet-sim demo

vendor: ## refresh the console's pinned htmx and uPlot (with their licences) from npm
	bash fleet_server/console/vendor.sh

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
