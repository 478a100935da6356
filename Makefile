# Two commands set everything up on a fresh machine: `make test` and `make demo`.
# torch is installed first and pinned: on CPU machines the pinned version resolves to a local CPU
# build, whereas an unpinned torch would pull several GB of CUDA packages.
PYTHON      ?= python3.11
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
EXTRAS      ?= dev,data,pipeline,export
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
comma       := ,
STAMP       := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

export MLFLOW_DISABLE_TELEMETRY=true
export GX_ANALYTICS_ENABLED=false
export DVC_NO_ANALYTICS=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false

.PHONY: venv test test-all lint bench demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

# Fast suite (< 10 min on 2 cores); `slow` end-to-end checks run in test-all.
test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) tests/benchmarks/bench_networks.py

demo:
	@echo "make demo arrives with the orchestration issue (#8): it will create the venv, install,"
	@echo "run 'dvc repro' on the built-in digits dataset on CPU and print where the outputs are."
	@exit 1

clean-venv:
	rm -rf $(VENV)
