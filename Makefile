# Tandem: `make run` trains on the built-in Unity stand-in, `make test` runs the tests.
# Both build the virtual environment first when it is missing or stale.

SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.tandem-setup
PROTO_STAMP := protos/tandem/v1/.generated
PROTOS := $(wildcard protos/tandem/v1/*.proto)
NODE_CLIENT := clients/node
NODE_STAMP := $(NODE_CLIENT)/node_modules/.tandem-installed

# User-facing knobs (ML-Agents style)
CONFIG ?= configs/ppo/3DBall.yaml
RUN_ID ?= tandem-3dball
ENV ?=
TRAINER ?=
GATEWAY_ARGS ?=
TRAINER_ARGS ?=
PYTEST_ARGS ?=
# JAX build for the trainer: auto = CUDA when `nvidia-smi -L` lists a GPU (cuda13 when its
# driver reports CUDA 13 or newer, cuda12 otherwise), else the CPU build; or cpu, cuda12, cuda13.
JAX ?= auto
JAX_DETECTED = $(shell if nvidia-smi -L >/dev/null 2>&1; then \
	  v=$$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1); \
	  if [ "$${v:-12}" -ge 13 ]; then echo cuda13; else echo cuda12; fi; else echo cpu; fi)
JAX_BUILD := $(if $(filter auto,$(JAX)),$(JAX_DETECTED),$(JAX))
ifeq ($(filter cpu cuda12 cuda13,$(JAX_BUILD)),)
$(error JAX=$(JAX): expected auto, cpu, cuda12 or cuda13)
endif
JAX_STAMP := $(VENV)/.tandem-jax-$(JAX_BUILD)

.PHONY: setup run run-gateway run-trainer test bench clean protos node-client

setup: $(SETUP_STAMP) $(JAX_STAMP) $(PROTO_STAMP)

$(SETUP_STAMP): pyproject.toml gateway/env/mlagents_protobuf.py
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,envs]'
	# mlagents-envs pins Python<=3.10.12, grpcio<=1.48.2, protobuf<3.21, numpy<1.24: it works
	# on modern versions once its protocol modules are rebuilt (see README), so no resolver.
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python mlagents-envs==1.1.0
	$(BIN)/python gateway/env/mlagents_protobuf.py
	touch $@

# The JAX build: jax's own extras (`.[cuda12]` -> `jax[cuda12]`) pin the CUDA plugin to the
# installed jax version; the CPU build is plain jaxlib, so switching back removes the plugins.
$(JAX_STAMP): $(SETUP_STAMP)
	rm -f $(VENV)/.tandem-jax-*
	$(if $(filter cpu,$(JAX_BUILD)),$(BIN)/python -m pip uninstall --quiet --yes jax-cuda12-plugin jax-cuda12-pjrt jax-cuda13-plugin jax-cuda13-pjrt,$(BIN)/python -m pip install --quiet -e '.[$(JAX_BUILD)]')
	$(BIN)/python -c 'import jax; print("tandem: JAX", jax.__version__, "($(JAX_BUILD) build), devices:", jax.devices())'
	touch $@

$(PROTO_STAMP): $(PROTOS) $(SETUP_STAMP)
	rm -f protos/tandem/v1/*_pb2*.py protos/tandem/v1/*_pb2.pyi
	$(if $(PROTOS),$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos $(PROTOS),true)
	touch $@

protos: $(PROTO_STAMP)

$(NODE_STAMP): $(NODE_CLIENT)/package.json
	cd $(NODE_CLIENT) && npm install --no-audit --no-fund --loglevel=error
	touch $@

node-client: $(NODE_STAMP)

run: setup
	$(BIN)/tandem-trainer $(CONFIG) --run-id $(RUN_ID) --with-gateway $(TRAINER_ARGS)

run-gateway: setup
	$(BIN)/tandem-gateway $(if $(ENV),--env $(ENV)) $(if $(TRAINER),--trainer $(TRAINER)) $(GATEWAY_ARGS)

run-trainer: setup
	$(BIN)/tandem-trainer $(CONFIG) --run-id $(RUN_ID) $(TRAINER_ARGS)

test: setup $(if $(wildcard $(NODE_CLIENT)/package.json),node-client)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH)

clean:
	rm -rf $(VENV) $(PROTO_STAMP) protos/tandem/v1/*_pb2*.py protos/tandem/v1/*_pb2.pyi $(NODE_CLIENT)/node_modules
