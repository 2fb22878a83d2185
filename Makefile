# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
# torch is pinned and installed first: where a local CPU wheel of it lies (find-links in pip's
# config), pip takes that one, and the project's own install then needs nothing more of torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo run test soak audit lock lint format bench bench-env proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements.lock pins every package to the versions tested together (make lock writes it).
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(REPOSITORY)/fraud/config.yaml: | $(VENV)/.installed
	$(BIN)/serve-app demo build --out $(REPOSITORY)

demo: $(REPOSITORY)/fraud/config.yaml

# Ray Serve's high-throughput settings (serve_app/config.py: RAY_SERVE_ENV; README, "Speed").
RAY_SERVE_ENV := RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=0

# serve run configs/local.yaml: starts a local Ray cluster and serves until Ctrl-C.
run: install demo
	$(RAY_SERVE_ENV) $(BIN)/serve run configs/local.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The reliability suite's soak, longer: 64 clients for SOAK_SECONDS (README, "Reliability").
SOAK_SECONDS ?= 600
soak: install
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest --timeout=0 tests/reliability/test_load.py $(PYTEST_ARGS)

# Known vulnerabilities in requirements.lock; accepted ones live in security/accepted-vulnerabilities.txt.
audit: install
	$(BIN)/python scripts/audit.py

lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^#' > requirements.lock

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# MLServer, the peer of benchmarks/stacks.py, lives in an environment of its own.
MLSERVER_VENV := benchmarks/.mlserver

$(MLSERVER_VENV)/.installed: benchmarks/mlserver-requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r benchmarks/mlserver-requirements.txt
	touch $@

bench-env: $(MLSERVER_VENV)/.installed

bench: install bench-env
	$(BIN)/python benchmarks/stacks.py
	$(BIN)/python benchmarks/graph_latency.py
	$(BIN)/python benchmarks/protocol_formats.py
	$(BIN)/python benchmarks/shadow_latency.py
	$(BIN)/python benchmarks/drift_overhead.py
	$(BIN)/python benchmarks/batch_throughput.py
	$(BIN)/python benchmarks/quantization.py

# The gRPC modules are generated from the .proto beside them by the pinned grpcio-tools (dev extra).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
		serve_app/protocol/generated/grpc_predict_v2.proto

clean:
	rm -rf $(VENV) $(REPOSITORY) .pytest_cache $(MLSERVER_VENV)
