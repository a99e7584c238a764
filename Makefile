# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# TORCH pins the CPU build that lies on this machine's disk; on a CUDA box use e.g.
#   make run ORT_FLAVOUR=gpu TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# ORT_FLAVOUR picks the onnxruntime distribution: cpu (onnxruntime, the default) or gpu
# (onnxruntime-gpu, CUDA). Changing it reinstalls into the same venv, one flavour only.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ORT_FLAVOUR ?= cpu
BIN := $(VENV)/bin
# One stamp per flavour, so that switching ORT_FLAVOUR reinstalls.
STAMP := $(BIN)/.installed-$(ORT_FLAVOUR)
ORT_OTHER := $(if $(filter gpu,$(ORT_FLAVOUR)),onnxruntime,onnxruntime-gpu)
RUN_DIR := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test clean-venv

# Both flavours write the same onnxruntime/ files and uninstalling one breaks the other, so a
# switch removes both before installing the wanted one.
$(STAMP): pyproject.toml Makefile
	$(if $(filter cpu gpu,$(ORT_FLAVOUR)),,$(error ORT_FLAVOUR must be cpu or gpu, not '$(ORT_FLAVOUR)'))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	if $(BIN)/python -m pip show -q $(ORT_OTHER) 2>/dev/null; then \
	    $(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
	$(BIN)/python -m pip install -q -e '.[$(ORT_FLAVOUR),dev,demo]'
	rm -f $(BIN)/.installed $(BIN)/.installed-*
	touch $@

# Main job: the whole pipeline (train, prune, ONNX, INT8, TensorRT where present, bench, report.md)
# for LeNet-5 on the MNIST subset shipped in data/. MODELS=lenet5,alexnet,resnet18 for all three.
MODELS ?= lenet5
run: $(STAMP)
	$(BIN)/cnndeploy pipeline --dataset mnist --data-dir data/mnist-mini --models $(MODELS) --out $(RUN_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
