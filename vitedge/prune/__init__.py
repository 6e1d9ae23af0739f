"""Make a ViT do less work: structured pruning, token merging, distillation; pipeline runs them.

Package modules are imported directly (vitedge.prune.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
