"""Backends: base (validation, timing), parity, torch, and one package per runtime that keeps
what prepares a graph for it (loader.py) beside what runs it (runner.py), as Polygraphy's
backends do: onnxrt, openvino, tensorrt.

Package modules are imported directly (vitedge.runtime.<backend>.<module>): the package files
import nothing, so importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
