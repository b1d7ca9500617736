# traitflow — `make demo` on a fresh machine sets up and runs the toy demo; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# demo and ui share one Dagster instance, so the demo's runs show in the UI; tests make their own.
demo ui: export DAGSTER_HOME := $(DAGSTER_HOME)

.PHONY: setup demo test bench ui toy lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps steering-vectors==0.12.2 repeng==0.4.0
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n' > $@

demo: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/traitflow validate
	$(VENV)/bin/traitflow run demo
	$(VENV)/bin/traitflow report demo
	@echo "Open the UI with: make ui   (then http://127.0.0.1:3000)"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench

ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m definitions -h 127.0.0.1 -p 3000

toy: setup
	$(PY) -m traitflow.toy data
	$(PY) -m traitflow.toy train

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf experiments .dagster_home bench/out
