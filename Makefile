# ThyroCine: `make demo` runs the platform on embedded defaults, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000

.PHONY: demo test lint lock migrate worker web e2e bench-ingest clean

# The virtual environment, rebuilt when the lock file changes.
$(VENV)/.installed: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	DEMO_HOST=$(DEMO_HOST) DEMO_PORT=$(DEMO_PORT) bash scripts/demo.sh

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

migrate: $(VENV)/.installed
	$(PY) manage.py migrate

# Regenerate the lock file from requirements*.in (run after changing a top-level pin).
lock:
	rm -rf /tmp/thyrocine-lock && $(PYTHON) -m venv /tmp/thyrocine-lock
	/tmp/thyrocine-lock/bin/pip install --quiet -r requirements.in -r requirements-dev.in
	/tmp/thyrocine-lock/bin/pip freeze | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' | sort -f > requirements.lock

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
