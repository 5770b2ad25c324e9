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

.PHONY: setup run run-gateway run-trainer test bench clean protos node-client

setup: $(SETUP_STAMP) $(PROTO_STAMP)

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
