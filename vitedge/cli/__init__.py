"""The `vitedge` command line: `app.py` builds it, one module per command group."""
