"""Load any source into a torch module (or ONNX graph) plus its card: load, loaded, graphs, hf, checkpoints, structure.

Package modules are imported directly (vitedge.models.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
