"""`vitedge optimize`: search.py runs the search, variants.py builds the models it compiles,
choose.py times and picks."""
