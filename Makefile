# earthops: `make demo` and `make test` work on a fresh machine (Python 3.11 and Go on the PATH).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup lint crds verify-crds envtest envtest-sync stacapi samples demo test unit integration bench lock clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

# pip's and setuptools' output (the editable-install notice included) goes to $(VENV)/install.log; a
# failure shows its end (scripts/quietly.sh)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@bash scripts/quietly.sh $(VENV)/install.log "installing earthops with every extra into $(VENV) from constraints.txt" \
	  "a few minutes the first time, seconds after" -- \
	  bash -c '$(BIN)/python -m pip install --upgrade "pip>=24" && $(BIN)/python -m pip install -c constraints.txt -e ".[all]"'
	@touch $@

setup: $(STAMP) ## create .venv and install earthops with every extra from the lock

lint: setup ## the layer contracts (import-linter, pyproject.toml) and ruff; fails on any violation
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check operator runtimes tests

crds: setup ## regenerate crds/ and the chart's CRDs from earthops.api
	$(BIN)/earthops crds --out crds --out charts/earthops/crds

verify-crds: setup ## fail if crds/ or the chart's CRDs drifted from the models
	$(BIN)/python -m pytest -q tests/unit/test_crds.py -k drift

envtest: ## build (once, cached by version) kube-apiserver, etcd, kube-controller-manager, kubectl; fetch KubeRay/KServe CRDs
	bash tests/envtest/build.sh

stacapi: ## install PostgreSQL+PostGIS (apt, as root), the STAC API server's own venv and the STAC API conformance suite's venv for the tests
	bash tests/stacapi/setup.sh
	bash tests/stacvalidator/setup.sh

envtest-sync: ## after editing tests/envtest/versions.env: regenerate the envtest go.mod/go.sum
	bash tests/envtest/sync.sh

samples: setup ## fetch the real sample imagery and catalogue it
	$(BIN)/earthops samples

demo: setup samples ## set up, then run the main example on the embedded executor: dataset, tuning, registered model, search, one prediction from the served model
	$(BIN)/earthops run --dry-run -f examples/ship-iceberg/
	$(BIN)/earthops run -f examples/ship-iceberg/01-dataset.yaml -f examples/ship-iceberg/02-tuning.yaml
	$(BIN)/earthops get
	$(BIN)/earthops describe eodataset iceberg-chips
	$(BIN)/earthops get models
	$(BIN)/earthops describe model iceberg-tuning
	$(BIN)/earthops search --bbox=-56,50,-50,56 --limit 5
	$(BIN)/earthops run -f examples/ship-iceberg/04-deployment.yaml --port 0 --predict-once

test: setup lint envtest stacapi ## set up, lint, then run the unit and integration tests (CI runs exactly this)
	$(BIN)/python -m pytest -m "not bench" $(PYTEST_ARGS)

unit: setup ## only the fast unit tests
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

integration: setup envtest stacapi ## only the integration tests (real API server, S3, ...)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

bench: setup ## benchmarks in tests/bench (each prints a ratio measured side by side)
	$(BIN)/python -m pytest -m bench -s tests/bench $(PYTEST_ARGS)

lock: ## re-resolve the dependencies from pyproject.toml into constraints.txt
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e ".[all]"
	{ head -n 2 constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

clean: ## remove the virtual environment and caches in the work tree
	rm -rf $(VENV) .pytest_cache build *.egg-info operator/*.egg-info runtimes/*.egg-info
