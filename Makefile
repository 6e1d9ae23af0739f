# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
VITEDGE := $(VENV)/bin/vitedge
STAMP := $(VENV)/.installed-stamp
DEMO_OUT := demo-out

.PHONY: install test demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	@echo "== 1/8 inspect the shipped default model (a ViT trained on real handwritten digits)"
	$(VITEDGE) inspect builtin:digits-vit
	@echo "== 2/8 export to ONNX and check parity with PyTorch on the held-out images"
	$(VITEDGE) export builtin:digits-vit -o $(DEMO_OUT)/digits-onnx --data calibration/digits/heldout --parity-samples 64 --overwrite
	@echo "== 3/8 inspect the exported artifact"
	$(VITEDGE) inspect $(DEMO_OUT)/digits-onnx
	@echo "== 4/8 INT8 quantization (vit-safe, TensorRT-compatible symmetric) within a 0.5-point budget"
	$(VITEDGE) quantize $(DEMO_OUT)/digits-onnx --calib calibration/digits/train --eval calibration/digits/heldout -o $(DEMO_OUT)/digits-int8 --overwrite
	@echo "== 5/8 compile the INT8 model for this CPU (ONNX Runtime bundle + passport)"
	$(VITEDGE) compile $(DEMO_OUT)/digits-int8 --target x86-cpu -o $(DEMO_OUT)/digits-x86 --overwrite
	@echo "== 6/8 predict with the bundle"
	$(VITEDGE) predict $(DEMO_OUT)/digits-x86 vitedge/assets/samples --top-k 3
	@echo "== 7/8 prepare a Jetson Orin Nano bundle here (engine is built on the device)"
	$(VITEDGE) compile $(DEMO_OUT)/digits-int8 --target jetson-orin-nano -o $(DEMO_OUT)/digits-orin-nano --overwrite
	@echo "== 8/8 bench: PyTorch FP32 vs ONNX FP32 vs the INT8 CPU bundle, on the held-out digits"
	$(VITEDGE) bench builtin:digits-vit $(DEMO_OUT)/digits-onnx $(DEMO_OUT)/digits-x86 --batch 1,16 --data calibration/digits/heldout --runs 30
	@echo "quantization report: $(DEMO_OUT)/digits-int8/quant_report.md; bundles: $(DEMO_OUT)/digits-x86, $(DEMO_OUT)/digits-orin-nano"

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
