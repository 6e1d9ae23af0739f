"""ONNX Runtime: loader.py prepares graphs for it, runner.py runs them."""
