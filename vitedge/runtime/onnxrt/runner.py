"""Running ONNX Runtime: the one place vitedge creates inference sessions.

What prepares graphs for it (offline optimization for a CPU bundle) is beside this file (loader.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.runtime.base import Session, TensorInfo

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# Preference order for GPU-capable ONNX Runtime builds; CPU is always last and always present.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def optimization_level(name: str) -> onnxruntime.GraphOptimizationLevel:
    import onnxruntime as ort

    return {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[name]


def create_session(model: onnx.ModelProto | str | Path, providers: list[str], *, threads: int = 0,
                   optimization: str = "all") -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = optimization_level(optimization)
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
        from vitedge.errors import ModelLoadError

        what = str(model) if isinstance(model, (str, Path)) else "the graph"
        reason = str(exc).splitlines()[0].split(" failed:", 1)[-1].strip()[:300]
        raise ModelLoadError(f"ONNX Runtime cannot load {what}: {reason}",
                             "check the graph with onnx.checker, or re-export it") from None


def available_providers(wanted: list[str] | tuple[str, ...] = PREFERRED_PROVIDERS) -> list[str]:
    """`wanted` in order, keeping those this ONNX Runtime build has (CPU always)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have] or ["CPUExecutionProvider"]


def _info(args: list) -> list[TensorInfo]:
    return [TensorInfo(a.name, tuple(d if isinstance(d, int) else None for d in a.shape),
                       a.type.replace("tensor(", "").rstrip(")")) for a in args]


class OnnxRuntimeSession(Session):
    """A graph on disk or in memory (external data needs the path). A fixed batch dimension in
    the graph is its batch range unless one is given."""

    backend = "onnxruntime"

    def __init__(self, model: onnx.ModelProto | str | Path, *, providers: list[str] | None = None,
                 threads: int = 0, optimization: str = "all", precision: str = "fp32",
                 max_batch: int | None = None, min_batch: int = 1, description: str = "",
                 card: Any = None, origin: tuple[Path, ...] = ()) -> None:
        self.model_path = Path(model) if isinstance(model, (str, Path)) else None
        self.session = create_session(model, providers or ["CPUExecutionProvider"],
                                      threads=threads, optimization=optimization)
        self.providers = self.session.get_providers()
        fixed = self.session.get_inputs()[0].shape[0] if self.session.get_inputs() else None
        if isinstance(fixed, int) and max_batch is None:
            min_batch = max_batch = fixed
        super().__init__(inputs=_info(self.session.get_inputs()),
                         outputs=_info(self.session.get_outputs()), precision=precision,
                         max_batch=max_batch, min_batch=min_batch,
                         description=description or f"ONNX Runtime ({', '.join(self.providers)})",
                         card=card, origin=origin)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.outputs[0].name], {self.input.name: batch})[0]

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name (a checked batch, untimed): for per-layer comparisons."""
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, {self.input.name: self.check(batch)})))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
