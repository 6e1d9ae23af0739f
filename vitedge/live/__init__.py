"""Live inference: watch (`vitedge.live.run`, the whole of `vitedge run`), loop (the frame loop
over one or several sources, batched, and its shadow), shadow (the reference worker), camera
(frame sources), serve (the live page), metrics (Prometheus), capture (frames to a folder).

Nothing is imported when the package is: `vitedge.live.run` resolves on first use, so importing
one module of the stage never drags in the others (tests/test_layers.py keeps it so).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run":
        from vitedge.live.watch import run

        return run
    raise AttributeError(f"module 'vitedge.live' has no attribute {name!r}")
