# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
VITEDGE := $(VENV)/bin/vitedge
STAMP := $(VENV)/.installed-stamp
DEMO_OUT := demo-out

.PHONY: install browser lint docs test test-matrix demo demo-prune clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The live page is tested in a real headless browser: Debian's chromium, installed when missing
# and this user can (root with apt-get); otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 && \
	  echo "installed chromium for the browser test"; } || echo "note: no chromium; the live-page browser test will skip"

# The linter's rules are in pyproject.toml ([tool.ruff]).
lint: install
	$(PY) -m ruff check vitedge tests benchmarks scripts

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a page
# missing from the navigation fails. The command pages' option tables are checked by the tests.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -q

test: install browser lint docs
	$(PY) -m pytest -q --durations=12

# The whole model-support matrix, the rows make test leaves out included (docs/support-matrix.md, †)
test-matrix: install
	VITEDGE_FULL_MATRIX=1 $(PY) -m pytest -q tests/test_matrix.py

demo: install
	@echo "== 1/12 inspect the shipped default model (a ViT trained on real handwritten digits)"
	$(VITEDGE) inspect builtin:digits-vit
	@echo "== 2/12 export to ONNX and check parity with PyTorch on the held-out images"
	$(VITEDGE) export builtin:digits-vit -o $(DEMO_OUT)/digits-onnx --data calibration/digits/heldout --parity-samples 64 --overwrite
	@echo "== 3/12 INT8 quantization (vit-safe, TensorRT-compatible symmetric) within a 0.5-point budget"
	$(VITEDGE) quantize $(DEMO_OUT)/digits-onnx --calib calibration/digits/train --eval calibration/digits/heldout -o $(DEMO_OUT)/digits-int8 --overwrite
	@echo "== 4/12 compile the INT8 model for this CPU (ONNX Runtime or OpenVINO, the faster one here, + passport)"
	$(VITEDGE) compile $(DEMO_OUT)/digits-int8 --target x86-cpu -o $(DEMO_OUT)/digits-x86 --overwrite
	@echo "== 5/12 predict with the bundle"
	$(VITEDGE) predict $(DEMO_OUT)/digits-x86 vitedge/assets/samples --top-k 3
	@echo "== 6/12 prepare a Jetson Orin Nano bundle here (the engine is built on the device)"
	$(VITEDGE) compile $(DEMO_OUT)/digits-int8 --target jetson-orin-nano -o $(DEMO_OUT)/digits-orin-nano --overwrite
	@echo "== 7/12 bench: PyTorch FP32 vs ONNX FP32 vs the INT8 CPU bundle, on the held-out digits"
	$(VITEDGE) bench builtin:digits-vit $(DEMO_OUT)/digits-onnx $(DEMO_OUT)/digits-x86 --batch 1,16 --data calibration/digits/heldout --runs 30
	@echo "== 8/12 a camera-like video from the held-out digits (moving, noisy, changing light)"
	$(PY) scripts/make_digits_video.py $(DEMO_OUT)/digits-camera.mp4 --frames 600
	@echo "== 9/12 run the INT8 bundle on it, shadowed by the FP32 model every 5th frame"
	$(VITEDGE) run $(DEMO_OUT)/digits-x86 --source $(DEMO_OUT)/digits-camera.mp4 --record $(DEMO_OUT)/run/annotated.mp4 -o $(DEMO_OUT)/run --overwrite -q
	@echo "== 10/12 the drift report"
	$(VITEDGE) report $(DEMO_OUT)/run -o $(DEMO_OUT)/report.html
	@echo "== 11/12 optimize: token merging x precision x runtime, each candidate measured here; the fastest within 1 point"
	$(VITEDGE) optimize builtin:digits-vit --target x86-cpu --data calibration/digits/heldout --calib calibration/digits/train --samples 128 --tome 0,4 -o $(DEMO_OUT)/digits-opt --overwrite -q
	@echo "== 12/12 package the CPU bundle as a Triton model repository (config checked against Triton's schema)"
	$(VITEDGE) package $(DEMO_OUT)/digits-x86 --for triton -o $(DEMO_OUT)/digits-triton --overwrite
	@echo "done: open $(DEMO_OUT)/report.html (quantization report: $(DEMO_OUT)/digits-int8/quant_report.md; optimize: $(DEMO_OUT)/digits-opt/report.html; Triton: $(DEMO_OUT)/digits-triton/README.md)"

# A second demo: structured pruning + distillation of the shipped model, then the usual path.
demo-prune: install
	@echo "== 1/6 prune half the heads and three quarters of the MLP units (compensated from the images), distill from the original"
	$(VITEDGE) prune builtin:digits-vit --heads 0.5 --mlp 0.75 --data calibration/digits/train --distill-steps 1500 -o $(DEMO_OUT)/digits-pruned --overwrite
	@echo "== 2/6 a budget instead of a cut: the largest MAC cut within 1 point on the held-out images"
	$(VITEDGE) prune builtin:digits-vit --max-drop 1 --data calibration/digits/train -o $(DEMO_OUT)/digits-budget --overwrite
	@echo "== 3/6 export the pruned model (parity-checked)"
	$(VITEDGE) export $(DEMO_OUT)/digits-pruned -o $(DEMO_OUT)/digits-pruned-onnx --data calibration/digits/heldout --overwrite
	@echo "== 4/6 INT8 on top of pruning (vit-safe)"
	$(VITEDGE) quantize $(DEMO_OUT)/digits-pruned-onnx --calib calibration/digits/train --eval calibration/digits/heldout -o $(DEMO_OUT)/digits-pruned-int8 --overwrite
	@echo "== 5/6 bench original vs pruned vs pruned INT8 on the held-out digits"
	$(VITEDGE) bench builtin:digits-vit $(DEMO_OUT)/digits-pruned $(DEMO_OUT)/digits-budget $(DEMO_OUT)/digits-pruned-onnx $(DEMO_OUT)/digits-pruned-int8 --batch 1,16 --data calibration/digits/heldout --runs 30
	@echo "== 6/6 reports: what was removed per block, agreement with and without compensation, after distillation; the budget curve"
	$(VITEDGE) report $(DEMO_OUT)/digits-pruned -o $(DEMO_OUT)/digits-pruned-report.html
	$(VITEDGE) report $(DEMO_OUT)/digits-budget -o $(DEMO_OUT)/digits-budget-report.html

clean:
	rm -rf $(DEMO_OUT) .pytest_cache site
