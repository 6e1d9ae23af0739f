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
	@echo "== 1/4 inspect the shipped default model (a ViT trained on real handwritten digits)"
	$(VITEDGE) inspect builtin:digits-vit
	@echo "== 2/4 export to ONNX and check parity with PyTorch on the held-out images"
	$(VITEDGE) export builtin:digits-vit -o $(DEMO_OUT)/digits-onnx --data calibration/digits/heldout --parity-samples 64 --overwrite
	@echo "== 3/4 inspect the exported artifact"
	$(VITEDGE) inspect $(DEMO_OUT)/digits-onnx
	@echo "== 4/4 INT8 quantization (vit-safe, TensorRT-compatible symmetric) within a 0.5-point budget"
	$(VITEDGE) quantize $(DEMO_OUT)/digits-onnx --calib calibration/digits/train --eval calibration/digits/heldout -o $(DEMO_OUT)/digits-int8 --overwrite
	@echo "report: $(DEMO_OUT)/digits-int8/quant_report.md"

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
