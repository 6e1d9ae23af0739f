"""Preparing graphs for ONNX Runtime: the offline optimization saved into CPU bundles, checked
against the graph it came from, and what the bundle's passport records about it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession, optimization_level

if TYPE_CHECKING:
    from vitedge.runtime.base import Session

# Offline optimization level written into CPU bundles. "extended" fusions (Gelu, LayerNorm,
# attention, QDQ -> integer kernels) are ONNX Runtime operators, not hardware layouts; "all"
# adds NCHWc layouts tied to the CPU, which ONNX Runtime's docs say not to save for other machines.
OFFLINE_LEVEL = "extended"


def optimize_offline(source: Path, destination: Path, level: str = OFFLINE_LEVEL) -> None:
    """Save the graph as ONNX Runtime's CPU provider optimizes it, so devices skip that work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = optimization_level(level)
    options.optimized_model_filepath = str(destination)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def onnxruntime_built(facts: dict[str, Any], *, optimized_offline: bool = False,
                      parity: dict[str, float | int] | None = None,
                      note: str | None = None) -> dict[str, Any]:
    """The passport's `built` of an ONNX Runtime bundle made on this machine."""
    return {"optimized_offline": optimized_offline,
            "optimization_level": OFFLINE_LEVEL if optimized_offline else None,
            "arch": facts["arch"], "cpu_features": facts["cpu_features"],
            "onnxruntime": facts["onnxruntime"], "parity_vs_source": parity, "note": note}


def optimize_here(source: Path, destination: Path, facts: dict[str, Any], *, int8: bool,
                  threads: int = 0) -> tuple[dict[str, Any], Session]:
    """Optimize `source` into `destination` for this machine and check it; the passport's
    `built`, and the session of the saved graph (as the bundle will run it)."""
    from vitedge.runtime.parity import check_parity

    optimize_offline(source, destination)
    saved = OnnxRuntimeSession(destination, optimization="disabled", threads=threads)
    same_level = OnnxRuntimeSession(source, optimization=OFFLINE_LEVEL)
    parity = check_parity(source, saved, int8=int8, bf16=False,
                          what="ONNX Runtime's offline optimization", same_level=same_level)
    return onnxruntime_built(facts, optimized_offline=True, parity=parity), saved
