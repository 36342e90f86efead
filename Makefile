# Two commands from nothing: `make demo` and `make test`. Both build .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	mkdir -p $(PREFECT_HOME)
	$(BIN)/fidoflow demo --out runs/demo

test: venv
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: venv
	$(BIN)/ruff check pipeline storage flows tests bench

bench: venv
	$(BIN)/python bench/engine.py

clean:
	rm -rf runs .cache
