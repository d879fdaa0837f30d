# Every target sets up .venv itself when it is missing or the pins changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench lint format proto proto-check local-stack clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## run: start the local stack and the app on http://127.0.0.1:8000
run: $(STAMP)
	$(BIN)/python -m emulator --data-dir .data

## test: lint, type-check, check generated code, then the whole test suite
test: lint proto-check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: benchmarks; results go to results/
bench: $(STAMP)
	$(BIN)/python -m bench.stack_bench --out results

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
		proto/zerobus_service.proto
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. proto/product_record.proto

## proto-check: fail when the committed generated modules differ from the .proto sources
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/proto && cp proto/*.proto $$tmp/proto/ && \
	( cd $$tmp && $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		--grpc_python_out=. proto/zerobus_service.proto && \
	  $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		proto/product_record.proto ) && \
	for f in $$tmp/proto/*_pb2*.py*; do \
		cmp -s $$f proto/$$(basename $$f) || { echo "proto/$$(basename $$f) is stale: run make proto"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated protobuf modules are up to date"

local-stack: $(STAMP)
	$(BIN)/python -m emulator --data-dir .data

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
