"""Per-node sensitivity: the model's error to FP32 with one INT8 node at a time back in float.

Reverting a node changes nothing before it, so each reverted graph is run only from the last
single cut before the node (a ViT's residual stream before the node's LayerNorm), on that
tensor as the INT8 graph computes it; the tensors at the cuts are carried forward piece by piece,
so one is held at a time. On a ViT that is about half the work of running every reverted graph
whole, with the same figures up to float rounding (each piece is optimized by ONNX Runtime on its
own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from vitedge.drift import compare
from vitedge.quantize.qdq import revert_to_float, single_cuts, subgraph

if TYPE_CHECKING:
    import onnx

BATCH = 32


def revert_errors(quantized: onnx.ModelProto, float_model: onnx.ModelProto, names: list[str],
                  images: np.ndarray, reference: np.ndarray, *, features: bool,
                  tick: Callable[[int, int], None] | None = None) -> tuple[float, dict[str, float]]:
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
    for done, name in enumerate(sorted(names, key=lambda n: position.get(n, len(position)))):
        reverted = revert_to_float(quantized, float_model, {name})
        before = [cut for cut in cuts if made_at[cut] < position.get(name, -1)]
        piece: onnx.ModelProto | None = None
        start: str | None = None
        for cut in reversed(before):  # the last cut before the node the reverted graph runs from
            try:
                piece = subgraph(reverted, cut, containing={name})
                start = cut
                break
            except ValueError:
                continue
        if piece is not None and start is not None and start != carried[0] \
                and made_at[start] > made_at[carried[0]]:
            try:
                carried = (start, _run(subgraph(quantized, carried[0], [start]), carried[1]))
            except ValueError:
                piece = None
        if piece is None or start != carried[0]:
            outputs = _run(reverted, images)  # no cut to start from: the whole graph
        else:
            outputs = _run(piece, carried[1])
        errors[name] = _error(reference, outputs, features)
        if tick is not None:
            tick(done + 1, len(names))
    return base, errors


def _run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    from vitedge.runtime.onnxrt import create_session

    session = create_session(model, ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + BATCH]})[0]
                           for i in range(0, len(inputs), BATCH)]).astype(np.float32, copy=False)


def _error(reference: np.ndarray, outputs: np.ndarray, features: bool) -> float:
    return float(compare(reference, outputs, features=features).error)
