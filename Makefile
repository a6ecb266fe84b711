# Pickwise: the two quick-start commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
ADDR   ?= 127.0.0.1:8000

.PHONY: run test lint typecheck migrate seed clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: requirements.txt requirements-test.txt client/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet -e ./client
	touch $@ $(VENV)/.run-installed

## run: install, migrate, seed the demo and start the web server + a Celery worker (embedded defaults)
run: $(VENV)/.run-installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py rundemo --addr $(ADDR)

## test: install test deps, start private PostgreSQL and Redis on loopback, run the whole suite in
## PYTEST_WORKERS parallel processes (pytest-xdist; 0 runs it in one process)
PYTEST_WORKERS ?= 3
test: $(VENV)/.test-installed
	bash tests/services.sh $(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup) $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy
	cd client && ../$(VENV)/bin/mypy

clean:
	rm -rf var staticfiles .pytest_cache .ruff_cache .mypy_cache
