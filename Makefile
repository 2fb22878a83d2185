# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
PYTEST_ARGS ?=
# The extras the development environment has; `make install CUDA=1` adds `cuda` (on a CUDA machine: the CUDA
# and cuDNN libraries ONNX Runtime's CUDA provider loads). Each set of extras has its own stamp file.
comma := ,
EXTRAS := dev,torch,drift$(if $(filter 1,$(CUDA)),$(comma)cuda)
INSTALLED := $(VENV)/.installed$(if $(filter 1,$(CUDA)),-cuda)

.PHONY: install demo run test test-stories test-object-store test-live-changes check-install soak reliability-report docs audit lock lint format bench bench-env perf-analyzer proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements.lock pins every package to the versions tested together (make lock writes it). Its
# torch==2.13.0 also matches a local build such as 2.13.0+cpu, which pip takes where one lies in a
# find-links folder of its config; elsewhere torch comes from the index.
$(INSTALLED): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[$(EXTRAS)]'
	touch $@

install: $(INSTALLED)

$(REPOSITORY)/fraud/config.yaml: | $(INSTALLED)
	$(BIN)/serve-app demo build --out $(REPOSITORY)

demo: $(REPOSITORY)/fraud/config.yaml

# Ray Serve's high-throughput settings and its HAProxy ingress (serve_app/config.py: RAY_SERVE_ENV; docs/speed.md).
RAY_SERVE_ENV := RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S=60 \
	RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5 RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT=31500 \
	RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT=32500

# serve run configs/local.yaml: starts a local Ray cluster and serves until Ctrl-C.
run: install demo
	$(RAY_SERVE_ENV) $(BIN)/serve run configs/local.yaml

# The install checks (pytest marker `install`) are left to make check-install, the stories to make test-stories,
# the object-store crashes to make test-object-store, the live changes to make test-live-changes.
test: install
	$(BIN)/python -m pytest -m 'not install and not stories and not object_store and not live_changes' --durations=15 $(PYTEST_ARGS)

# Applications changed under traffic (the repository API's load and unload, serve deploy, changes racing,
# a two-node cluster), each a redeploy that restarts every replica: a session of its own, about ten minutes.
test-live-changes: install
	$(BIN)/python -m pytest -m live_changes --durations=10 tests/serve tests/e2e/test_triton_tools.py $(PYTEST_ARGS)

# The seed's stories (shadow, challenger, drift) played end to end by `serve-app simulate`: a session of their own.
test-stories: install
	$(BIN)/python -m pytest -m stories --durations=5 tests/e2e/test_stories.py $(PYTEST_ARGS)

# The batch job on an S3-compatible server (moto's, on the loopback interface), crashed at each commit
# step in turn and run again: every row exactly once. A session of its own, about two minutes.
test-object-store: install
	$(BIN)/python -m pytest -m object_store --durations=5 tests/batch/test_batch_job.py $(PYTEST_ARGS)

# A user's install: requirements.lock resolved from the public index alone for Python 3.10-3.12
# (tests/install/test_lock.py), and the project without extras in a fresh virtual environment of
# $(PYTHON), serving the demo (tests/install/test_lean_install.py; test-output/install-sizes.json).
check-install: install
	INSTALL_PYTHON='$(PYTHON)' $(BIN)/python -m pytest -s -m install tests/install $(PYTEST_ARGS)

# The reliability suite's soak, longer: 64 clients for SOAK_SECONDS; its row of the table goes into
# docs/reliability.md.
SOAK_SECONDS ?= 600
soak: install
	SERVE_APP_WRITE_RELIABILITY_TABLE=1 SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest --timeout=0 tests/reliability/test_load.py $(PYTEST_ARGS)

# The reliability suite, its table written into docs/reliability.md (a plain make test writes it to
# test-output/ only).
reliability-report: install
	SERVE_APP_WRITE_RELIABILITY_TABLE=1 $(BIN)/python -m pytest tests/reliability $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, docs/) into build/docs. --strict: a broken link or anchor, or a page
# missing from the nav, fails the build. docs/requirements.txt pins MkDocs and its Material theme.
docs: install
	$(BIN)/python -m pip install --quiet -r docs/requirements.txt
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir build/docs

# Known vulnerabilities in requirements.lock; accepted ones live in security/accepted-vulnerabilities.txt.
audit: install
	$(BIN)/python scripts/audit.py

# requirements.lock: exact pins of every package of every extra, one lock for every Python from 3.10
# up (--universal: a marker where a pin differs by Python or platform), resolved on the public index
# (uv reads no pip config). uv prefers the pins already in its output file, so it starts from what is
# installed and tested here (pip freeze, local labels such as +cpu dropped: the index has no such builds).
lock: install
	$(BIN)/python -m pip freeze --all --exclude-editable | sed 's/+[^ ;]*//' > $(VENV)/lock.txt
	$(BIN)/uv pip compile --quiet pyproject.toml --all-extras --universal --python-version 3.10 \
		--python $(BIN)/python --no-annotate --custom-compile-command 'make lock' --output-file $(VENV)/lock.txt
	mv $(VENV)/lock.txt requirements.lock

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

# Triton's load generator, for benchmarks/triton_perf.py, and Debian's libb64 that it links against.
perf-analyzer: install
	ldconfig -p | grep -q libb64.so.0d || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d)
	$(BIN)/python benchmarks/triton_perf.py --install

# wrk, the compiled load generator of the throughput points (Debian's package).
bench-env: $(MLSERVER_VENV)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

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
