"""Session backends only: base (validation, timing), onnxrt, torch, tensorrt.

Package modules are imported directly (vitedge.runtime.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
