# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# TORCH pins the CPU build that lies on this machine's disk; on a CUDA box use e.g.
#   make run TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
RUN_DIR := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test clean-venv

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,demo]'
	touch $@

# Main job: the whole pipeline (train, prune, ONNX, INT8, TensorRT where present, bench, report.md)
# for LeNet-5 on the MNIST subset shipped in data/. MODELS=lenet5,alexnet,resnet18 for all three.
MODELS ?= lenet5
run: $(BIN)/.installed
	$(BIN)/cnndeploy pipeline --dataset mnist --data-dir data/mnist-mini --models $(MODELS) --out $(RUN_DIR)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
