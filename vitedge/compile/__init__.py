"""Artifact + target -> bundle with a passport: prepare (compile), rebuild (build/--rebuild), bundle, passport.

Package modules are imported directly (vitedge.compile.<module>): this file imports nothing, so
importing one stage never drags in the others (tests/test_layers.py keeps it so).
"""
