"""Per-node sensitivity: the model's error to FP32 with one INT8 node at a time back in float.

Reverting a node changes nothing before it, so each reverted graph is run only from the last
single cut before the node (a ViT's residual stream before the node's LayerNorm), on that
tensor as the INT8 graph computes it; the tensors at the cuts are carried forward piece by piece,
so one is held at a time. On a ViT that is about half the work of running every reverted graph
whole, with the same figures up to float rounding (each piece is optimized by ONNX Runtime on its
own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitedge.drift import compare
from vitedge.quantize.qdq import revert_to_float, single_cuts, subgraph

if TYPE_CHECKING:
    import onnx

BATCH = 32


def revert_errors(quantized: onnx.ModelProto, float_model: onnx.ModelProto, names: list[str],
                  images: np.ndarray, reference: np.ndarray, *, features: bool
                  ) -> tuple[float, dict[str, float]]:
    """The error to `reference` (FP32 outputs on `images`) of `quantized`, and of `quantized` with
    each named node alone reverted to float: KL of the class distributions, or the relative error
    of feature vectors."""
    base = _error(reference, _run(quantized, images), features)
    cuts = single_cuts(quantized)
    position = {node.name: index for index, node in enumerate(quantized.graph.node)}
    made_at = {out: index for index, node in enumerate(quantized.graph.node) for out in node.output}
    made_at.update({i.name: -1 for i in quantized.graph.input})
    carried = (quantized.graph.input[0].name, images)  # a cut and its value in the INT8 graph
    errors: dict[str, float] = {}
    for name in sorted(names, key=lambda n: position.get(n, len(position))):
        reverted = revert_to_float(quantized, float_model, {name})
        before = [cut for cut in cuts if made_at[cut] < position.get(name, -1)]
        found = _last_piece(reverted, before, name)
        if found is not None and found[0] != carried[0] and made_at[found[0]] > made_at[carried[0]]:
            try:
                carried = (found[0], _run(subgraph(quantized, carried[0], [found[0]]), carried[1]))
            except ValueError:
                found = None
        if found is None or found[0] != carried[0]:
            outputs = _run(reverted, images)  # no cut to start from: the whole graph
        else:
            outputs = _run(found[1], carried[1])
        errors[name] = _error(reference, outputs, features)
    return base, errors


def _last_piece(reverted: onnx.ModelProto, cuts: list[str], name: str) -> tuple[str, onnx.ModelProto] | None:
    """The last of `cuts` from which the reverted graph runs with node `name` in it, and that piece."""
    for cut in reversed(cuts):
        try:
            return cut, subgraph(reverted, cut, containing={name})
        except ValueError:
            continue
    return None


def _run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    from vitedge.runtime.onnxrt.runner import create_session

    session = create_session(model, ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + BATCH]})[0]
                           for i in range(0, len(inputs), BATCH)]).astype(np.float32, copy=False)


def _error(reference: np.ndarray, outputs: np.ndarray, features: bool) -> float:
    return float(compare(reference, outputs, features=features).error)
