# Two commands for a newcomer on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs repulse into it first (CPU torch by default;
# GPU users: `make install TORCH=torch` or see the README's GPU section).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= deepspeed,ray,dev
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m repulse demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
