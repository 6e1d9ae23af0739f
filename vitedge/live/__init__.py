"""Live inference: loop (run + shadow), camera (frame sources), serve (live page), capture.

Package modules are imported directly (vitedge.live.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
