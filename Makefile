# One entry point for set-up, the demo, the tests and the benchmarks.
# Everything installs into .venv; torch 2.13.0 (CPU build) goes in first so nothing pulls a CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install tools demo test security-check test-fast crds lint bench-operator bench-trainer bench-dpo bench-dataset bench-serve gpu-check gpu-wheels gpu-env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[operator,trainer,dev]'
	touch $(STAMP)

## install: the virtual environment with the operator, the trainer and the test tools
install: $(STAMP)

## tools: promtool (Debian's prometheus package) for the metrics checks and chromium for the console's browser
## tests; skipped without root or apt (those tests then skip, saying why)
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "warning: could not install promtool; its checks will be skipped"; \
	  else echo "note: promtool not found and no root to install it; its checks will be skipped"; fi; }
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	      || echo "warning: could not install chromium; the console's browser tests will be skipped"; \
	  else echo "note: chromium not found and no root to install it; the console's browser tests will be skipped"; fi; }

## demo: the whole pipeline on this machine: dataset, fine-tune, serve, evaluate
demo: install
	$(PY) -m finetune_local.demo $(if $(KEEP),--keep)

## test: every test, as CI runs them
test: install tools
	$(PY) -m pytest -q -p no:cacheprovider

## security-check: the red-team suite (tests/security/ and the pods' attack tests); last line: attacks tried, refused
security-check: install
	FINETUNE_SECURITY_REPORT=1 $(PY) -m pytest -q -p no:cacheprovider tests/security tests/datasets/test_fetch_rules.py \
	  tests/evaluate/test_endpoint_rules.py tests/trainer/test_checkpoint_files.py tests/trainer/test_manifest_paths.py

## test-fast: the tests that neither train nor serve a model
test-fast: install
	$(PY) -m pytest -q -m "not slow"

## crds: regenerate crds/ (and the chart's copy) from the API models
crds: install
	$(PY) -m finetune_operator.api.crdgen

bench-operator: install
	$(PY) bench/bench_operator.py

bench-trainer: install
	$(PY) bench/bench_trainer.py

bench-dpo: install
	$(PY) bench/bench_dpo.py

bench-dataset: install
	$(PY) bench/bench_dataset.py

bench-serve: install
	$(PY) bench/bench_serve.py

# The GPU check runs on a GPU machine with that machine's own torch (built for its driver), in a venv that
# sees it, with the wheels it lacks brought from here by `make gpu-wheels` (it may have no network).
GPU_PYTHON ?= python3
GPU_VENV   := .venv-gpu
GPU_WHEELS := .gpu-wheels
GPU_PYTHON_VERSION ?= 3.11

## gpu-check: LoRA, QLoRA and full fine-tuning steps and the merge on one GPU, one JSON line (bench/gpu_check.py); DRY=1: the same plumbing on CPU, tiny shapes
ifeq ($(DRY),)
gpu-check: $(GPU_VENV)/.ready
	PYTHONPATH=trainer/src:operator/src $(GPU_VENV)/bin/python bench/gpu_check.py
else
gpu-check: install
	$(PY) bench/gpu_check.py --dry
endif

## gpu-wheels: download the wheels a GPU machine's own torch lacks (bitsandbytes, transformers, peft...) into .gpu-wheels
gpu-wheels: install
	$(PY) bench/gpu_wheels.py --dest $(GPU_WHEELS) --python-version $(GPU_PYTHON_VERSION) $(if $(SKIP),--skip $(SKIP))

## gpu-env: (on the GPU machine) a venv over its own torch, completed from .gpu-wheels without network
gpu-env: $(GPU_VENV)/.ready

$(GPU_VENV)/.ready:
	$(GPU_PYTHON) -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to this torch'"
	$(GPU_PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --no-index --find-links $(GPU_WHEELS) $(GPU_WHEELS)/*.whl
	touch $@

clean:
	rm -rf $(VENV) $(GPU_VENV) .pytest_cache .demo .bench build *.egg-info
