# Every target sets up .venv itself when it is missing or the pins changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench lint format proto proto-check local-stack chromium java clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# the dwbench command; built with the setuptools pinned in requirements-dev.txt, offline
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: the app on http://127.0.0.1:8000 (in local mode it starts the local stack itself)
run: $(STAMP)
	$(BIN)/python -m uvicorn main:app --host 127.0.0.1 --port 8000

## test: lint, type-check, check generated code, then the whole test suite
test: lint proto-check chromium java
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## chromium: Debian's Chromium for the browser tests (never a downloaded browser build)
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing Debian's chromium for the browser tests"; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi
	@/usr/bin/chromium --version

## java: Debian's OpenJDK for the spark executor's tests (pyspark runs Spark on a JVM)
java:
	@if ! command -v java >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing Debian's OpenJDK for the spark executor"; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	fi
	@java -version 2>&1 | head -1

## bench: benchmarks; results go to results/
bench: $(STAMP)
	$(BIN)/python -m bench.stack_bench --out results
	$(BIN)/python -m bench.app_bench --out results
	$(BIN)/python -m bench.harness_bench --out results
	$(BIN)/python -m bench.writers_bench --out results
	$(BIN)/python -m bench.durability_bench --out results
	$(BIN)/python -m bench.recovery_bench --out results
	$(BIN)/python -m bench.pipeline_bench --out results
	$(BIN)/python -m bench.loop_bench --out results
	$(BIN)/python -m bench.scale_bench --out results

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## proto: regenerate the protobuf and gRPC modules from proto/*.proto
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/zerobus_service.proto proto/arrow_flight.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/product_record.proto

## proto-check: fail when the committed generated modules differ from the .proto sources
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/proto && cp proto/*.proto $$tmp/proto/ && \
	( cd $$tmp && $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		--grpc_python_out=. proto/zerobus_service.proto proto/arrow_flight.proto && \
	  $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		proto/product_record.proto ) && \
	for f in $$tmp/proto/*_pb2*.py*; do \
		cmp -s $$f proto/$$(basename $$f) || { echo "proto/$$(basename $$f) is stale: run make proto"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated protobuf modules are up to date"

local-stack: $(STAMP)
	$(BIN)/python -m emulator --data-dir .data

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
