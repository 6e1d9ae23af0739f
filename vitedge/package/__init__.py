"""`vitedge package`: bundles laid out for the serving engines fleets run (Triton first)."""
