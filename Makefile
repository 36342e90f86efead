# Two commands from nothing: `make demo` and `make test`. Both build .venv first (idempotent),
# at the versions of constraints.txt (`make lock` refreshes them and runs the suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := constraints.txt
CONSTRAINTS ?= -c $(LOCK)
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: venv demo test browser lock lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: venv
	mkdir -p $(PREFECT_HOME)
	$(BIN)/fidoflow demo --out runs/demo

test: venv
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest -q -n 2 --durations=15

# the headless browser the report tests look through (Debian's chromium; needs root)
browser:
	command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends chromium; }

# the newest versions the ranges allow, the suite on them, then constraints.txt rewritten
lock:
	rm -rf $(VENV)
	$(MAKE) venv CONSTRAINTS=
	$(MAKE) test
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable \
		| grep -iv '^fidoflow'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check pipeline storage flows tests bench setup.py

bench: venv
	$(BIN)/python bench/engine.py

clean:
	rm -rf runs .cache
