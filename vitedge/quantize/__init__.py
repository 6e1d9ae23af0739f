"""INT8 post-training quantization: ptq (the step), recipes, report, qdq helpers, TensorRT-rules lint.

Package modules are imported directly (vitedge.quantize.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
