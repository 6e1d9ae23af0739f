"""Channel-wise shifts of Linear inputs (Outlier Suppression+), folded into the layer's bias.

Symmetric INT8 (what TensorRT runs: zero-point 0) spends half of its 255 steps on negative
values, and a post-GELU activation hardly has any (GELU >= -0.17): the fc2 inputs of a ViT use
about half of the range, and their channels are offset from each other. Subtracting a
per-channel shift z = (max + min) / 2 centres every channel; the layer y = x W + b becomes
y = (x - z) W + (b + z W), the same function in exact arithmetic, whose input symmetric INT8
covers more finely. The shift is an elementwise Sub before the layer's QuantizeLinear (it stays
float, as the other elementwise ops do; TensorRT fuses it into the preceding pointwise kernel).
A layer is shifted only when it gains: the largest |x| must shrink by `min_gain` or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from vitedge.data import DataSet

SHIFT_PREFIX = "vitedge_shift/"


@dataclass(frozen=True)
class Shift:
    node: str  # the MatMul whose input is shifted
    gain: float  # largest |x| before / after: how much finer symmetric INT8 steps become


def shift_linear_inputs(model: onnx.ModelProto, calibration: DataSet, *, samples: int = 64,
                        min_gain: float = 1.25) -> tuple[onnx.ModelProto, list[Shift]]:
    """A copy of the float graph with the skewed Linear inputs centred (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    from vitedge.quantize.qdq import compute_nodes, constant_names

    constants = {t.name: t for t in model.graph.initializer}
    linear = {n.name for n in compute_nodes(model) if n.kind == "linear" and n.op_type == "MatMul"}
    nodes = [n for n in model.graph.node if n.name in linear and n.input[1] in constants
             and len(constants[n.input[1]].dims) == 2 and n.input[0] not in constant_names(model)]
    if not nodes:
        return model, []
    low, high = _channel_ranges(model, [n.input[0] for n in nodes], calibration, samples)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shifted = onnx.ModelProto()
    shifted.CopyFrom(model)
    graph = shifted.graph
    by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    shifts: list[Shift] = []
    for node in nodes:
        lo, hi = low[node.input[0]], high[node.input[0]]
        if lo is None:
            continue
        z = ((hi + lo) / 2).astype(np.float32)
        before = float(max(np.abs(lo).max(), np.abs(hi).max()))
        after = float(((hi - lo) / 2).max())
        if after <= 0 or before / after < min_gain:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        if weight.shape[0] != z.shape[0]:
            continue
        bias = _bias_add(node, consumers, inits)
        if bias is None:
            continue
        add, index = bias
        target = by_name[node.name]
        shift_name = f"{SHIFT_PREFIX}{node.name}"
        graph.initializer.append(numpy_helper.from_array(z, f"{shift_name}/z"))
        graph.node.append(helper.make_node("Sub", [node.input[0], f"{shift_name}/z"], [f"{shift_name}/out"],
                                           name=shift_name))
        target.input[0] = f"{shift_name}/out"
        old = numpy_helper.to_array(inits[add.input[index]])
        new = (old.astype(np.float64) + z.astype(np.float64) @ weight).astype(old.dtype)
        inits[add.input[index]].CopyFrom(numpy_helper.from_array(new, add.input[index]))
        shifts.append(Shift(node.name, before / after))
    _topological(graph)
    return shifted, shifts


def _bias_add(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
              inits: dict[str, onnx.TensorProto]) -> tuple[onnx.NodeProto, int] | None:
    """The Add that adds a constant bias to the MatMul's output, and the bias' input index, when
    the MatMul feeds nothing else (so the bias can absorb z W)."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    for index, name in enumerate(add.input):
        if name != node.output[0] and name in inits and len(inits[name].dims) == 1:
            # the bias must be used by this Add only, or folding changes other layers
            if len(consumers.get(name, [])) == 1:
                return add, index
    return None


def _channel_ranges(model: onnx.ModelProto, names: list[str], calibration: DataSet,
                    samples: int) -> tuple[dict[str, np.ndarray | None], dict[str, np.ndarray | None]]:
    """Per-channel (last axis) min and max of the named tensors over `samples` calibration images."""
    import onnx
    from onnx import TensorProto, helper

    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = OnnxRuntimeSession(probe, optimization="disabled")
    low: dict[str, np.ndarray | None] = {n: None for n in names}
    high: dict[str, np.ndarray | None] = {n: None for n in names}
    seen = 0
    for batch in calibration.batches(16):
        batch = batch[:max(0, samples - seen)]
        if not len(batch):
            break
        outputs = session.infer_outputs(batch)
        for name in names:
            value = outputs[name].reshape(-1, outputs[name].shape[-1])
            lo, hi = value.min(0), value.max(0)
            low[name] = lo if low[name] is None else np.minimum(low[name], lo)
            high[name] = hi if high[name] is None else np.maximum(high[name], hi)
        seen += len(batch)
    session.close()
    return low, high


def _topological(graph: onnx.GraphProto) -> None:
    """Re-order the nodes so every input is produced before it is used (the Subs were appended)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
