# One entry point for set-up, the demo, the tests and the benchmarks.
# Everything installs into .venv; torch 2.13.0 (CPU build) goes in first so nothing pulls a CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install tools demo test test-fast crds lint bench-operator bench-trainer bench-dataset bench-serve clean

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

bench-dataset: install
	$(PY) bench/bench_dataset.py

bench-serve: install
	$(PY) bench/bench_serve.py

clean:
	rm -rf $(VENV) .pytest_cache .demo .bench build *.egg-info
