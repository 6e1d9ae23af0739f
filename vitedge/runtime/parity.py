"""Parity of a runtime's graph with the graph it was made from: what every CPU loader checks
before a bundle keeps its optimized or converted graph."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vitedge.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from vitedge.runtime.base import Session


def check_parity(source: Path, session: Session, *, int8: bool, bf16: bool, what: str,
                 same_level: Session | None = None) -> dict[str, float | int]:
    """Max |difference| of `session` from the unoptimized source graph on seeded inputs.

    A float graph run in FP32 must agree to 1e-3 of its largest logit. BF16 float layers lose
    precision by design (recorded, not refused). An INT8 graph cannot be held to 1e-3: integer
    kernels round differently from the Q/DQ reference, and a float difference in the last bit
    before a QuantizeLinear flips its rounding, which the layers after amplify (on a real
    DeiT-Tiny a 1e-6 difference from ONNX Runtime's NCHWc convolution moved logits by 0.4 and
    flipped 2 % of top-1). So an INT8 graph is held to: bit-for-bit agreement with the same
    optimization run online (`same_level`, which catches what saving lost), and a difference
    from the reference below half its largest logit (which catches broken kernels, as does the
    same bound for BF16).
    """
    import numpy as np

    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

    reference = OnnxRuntimeSession(source, optimization="disabled")
    batch = reference.random_batch(reference.min_batch if reference.max_batch == reference.min_batch else 2)
    shape = batch.shape
    expected = reference.infer(batch)
    reference.close()
    got = session.infer(batch)
    result: dict[str, float | int] = {"max_abs_diff": max_abs_diff(got, expected), "samples": shape[0],
                                      "largest_logit": float(np.abs(expected).max())}
    scale = float(np.abs(expected).max()) or 1.0
    if not np.isfinite(got).all():
        raise ExportError(f"{what} gives non-finite outputs on this graph",
                          "report this with the model; compile with the other --runtime")
    if same_level is not None:
        online = same_level.infer(batch)
        same_level.close()
        result["max_abs_diff_same_level"] = max_abs_diff(got, online)
        if result["max_abs_diff_same_level"] > 1e-5 * scale:
            raise ExportError(f"{what} changed the outputs when saved (max |diff| "
                              f"{result['max_abs_diff_same_level']:.3g} from the same optimization "
                              f"run in a session, largest logit {scale:.3g})",
                              "report this with the model; compile with the onnxruntime of the device")
    limit = 0.5 * scale if (int8 or bf16) else 1e-3 * scale + 1e-4
    if result["max_abs_diff"] > limit:
        raise ExportError(f"{what} changed the outputs (max |diff| {result['max_abs_diff']:.3g} vs "
                          f"largest logit {scale:.3g})",
                          "report this with the model; compile with the other --runtime or the "
                          "runtime version of the device")
    return result


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| (the figure parity checks record and bound)."""
    import numpy as np

    return float(np.abs(a - b).max())
