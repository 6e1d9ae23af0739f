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
	@echo "== 1/3 inspect the shipped default model (a ViT trained on real handwritten digits)"
	$(VITEDGE) inspect builtin:digits-vit
	@echo "== 2/3 export to ONNX and check parity with PyTorch on the held-out images"
	$(VITEDGE) export builtin:digits-vit -o $(DEMO_OUT)/digits-onnx --data calibration/digits/heldout --parity-samples 64 --overwrite
	@echo "== 3/3 inspect the exported artifact"
	$(VITEDGE) inspect $(DEMO_OUT)/digits-onnx

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
