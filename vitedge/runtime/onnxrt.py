"""ONNX Runtime sessions, the one place vitedge creates them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnxruntime


def cpu_session(model: onnx.ModelProto | str | Path) -> onnxruntime.InferenceSession:
    """A quiet CPU session for a graph in memory or on disk (external data needs the path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
