# The one entry point for people, CI and pre-commit: `make demo`, `make test`, `make lint`.
SHELL := /bin/bash

# Python 3.13 is the Lambda runtime we target: the venv, the local Lambda workers and the layer
# bytecode use it when it is found. Elsewhere everything still runs, with the costs said plainly.
PY313 := $(shell for p in python3.13 /root/.pyenv/versions/3.13*/bin/python3.13; do \
	if $$p -c 'import sys' >/dev/null 2>&1; then command -v $$p 2>/dev/null || echo $$p; break; fi; done)
PYTHON ?= $(if $(PY313),$(PY313),python3)
PY313_PATH := $(if $(PY313),$(dir $(PY313)):,)
VENV := .venv
BIN := $(VENV)/bin
IAM_EVALUATOR := tests/iam
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt $(IAM_EVALUATOR)/package-lock.json | sha256sum | cut -c1-12)
# checkov cannot share the project's venv: it pins boto3==1.35.49 and packaging<24, where the project
# needs packaging>=24 and the local AWS boto3 1.43. It gets a venv of its own, pinned whole.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell cat constraints-checkov.txt | sha256sum | cut -c1-12)
export AWS_DEFAULT_REGION ?= us-east-1
export PATH := $(CURDIR)/$(BIN):$(PY313_PATH)$(PATH)

.PHONY: help venv demo demo-git test lint unit integration sam-build clean bench faults scale

help:
	@echo "make demo   a real rollout on the local emulated AWS: one promotion, one automatic rollback"
	@echo "make test   lint, statelint, sam validate and the whole pytest suite"
	@echo "make lint   ruff, mypy, statelint, sam validate --lint, cfn-lint and checkov only"

$(STAMP):
	@if [ -z "$(PY313)" ]; then echo "note: python3.13 not found; using $$($(PYTHON) --version). Layers are built without bytecode and 'sam build' needs python3.13 on PATH."; fi
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# The IAM policy evaluator of tests/iam (@cloud-copilot/iam-simulate, pinned by its lock file).
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
		npm ci --prefix $(IAM_EVALUATOR) --no-audit --no-fund --loglevel=error; \
	else \
		echo "note: node and npm not found; the IAM policy tests (tests/iam) will be skipped. Install Node.js 20+ to run them."; \
	fi
	touch $@

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints-checkov.txt checkov
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/layershift demo

# A rollout started by a git push to the local CodeCommit (a bare git repository).
demo-git: $(STAMP)
	$(BIN)/layershift demo --git

# cfn-lint runs again on its own for its informational rules, which sam validate leaves out (I3011:
# every stateful resource says what deletion and replacement do to it). checkov's cloudformation
# framework reads SAM templates (its serverless framework is the Serverless Framework's); a finding is
# fixed, or skipped on its resource with the reason (Metadata: checkov: skip). --skip-download keeps it
# offline.
lint: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy layers/core/layershift_core functions/*/app.py
	$(BIN)/python -m layershift.asl_lint statemachines/*.asl.json
	$(BIN)/sam validate --lint --template template.yaml
	$(BIN)/cfn-lint template.yaml --include-checks I
	$(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation --quiet --compact --skip-download

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

# Three pytest-xdist workers overlap the suite's waits (bakes, retry intervals, timeouts) and keep
# both cores busy. Each worker runs its own local AWS.
TEST_WORKERS ?= 3

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The fault matrix alone: every AWS call site of a rollout under throttling, a 5xx, AccessDenied
# and a timeout (about 3.5 minutes; make test runs it too).
faults: $(STAMP)
	$(BIN)/python -m pytest -q -s -m faults tests/integration/test_fault_matrix.py

sam-build: $(STAMP)
	$(BIN)/sam build --template template.yaml

# The layer build benchmark (bench/README.md); e.g. make bench BENCH_ARGS="--sets data --runs 7".
# The naive variant runs the machine's default python3: the PATH from before this Makefile's prefix.
bench: $(STAMP)
	BENCH_HOST_PATH="$(subst $(CURDIR)/$(BIN):$(PY313_PATH),,$(PATH))" $(BIN)/python -m bench.run $(BENCH_ARGS)

# The fleet benchmark (bench/scale.py): N = 100 and 1,000 on the local AWS with Lambda's limits, a
# promotion and an alarm-driven rollback each; e.g. make scale SCALE_ARGS="--sizes 5000".
scale: $(STAMP)
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(IAM_EVALUATOR)/node_modules .aws-sam .layershift .pytest_cache .ruff_cache
