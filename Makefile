# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or refresh, when pyproject.toml or constraints.txt change) the virtual
# environment .venv with pinned dependencies, torch==2.13.0 CPU build included.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
S3RVER_VERSION := 3.7.1
S3RVER := .s3rver/node_modules/s3rver/package.json

.PHONY: setup demo demo-megatron test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# npm's s3rver (a disk-backed S3 server) for the storage and fault tests, in a git-ignored folder
$(S3RVER):
	npm install --prefix .s3rver --no-audit --no-fund --loglevel=error "s3rver@$(S3RVER_VERSION)"

demo: setup
	$(PY) tools/demo.py

# a Megatron-Core GPT saved at TP2 x PP2, resumed at TP1 x DP4 and TP4 (needs the dev extra's megatron-core)
demo-megatron: setup
	$(PY) tools/demo_megatron.py

test: setup $(S3RVER)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check bytecheckpoint netsim flsim integrations tools tests

bench: setup
	$(PY) tools/bench_checkpoint.py

clean:
	rm -rf $(VENV) .s3rver .pytest_cache .hypothesis build *.egg-info
