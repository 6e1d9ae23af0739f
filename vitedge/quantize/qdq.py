"""Reading and editing QDQ (QuantizeLinear/DequantizeLinear) ONNX graphs.

NNCF writes the quantized graph; vitedge needs to ask it questions (which compute nodes run in
INT8, what share of the Linear/Conv MACs that is) and to revert single nodes to float during the
accuracy-budget search without re-running calibration. NNCF keeps node names, so a node of the
quantized graph is reverted by restoring the inputs it had in the float graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

LINEAR_OPS = ("MatMul", "Gemm", "Conv")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def constant_names(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


@dataclass(frozen=True)
class ComputeNode:
    name: str
    op_type: str
    kind: str  # "linear" (weights are constants) or "attention" (activation x activation)
    macs: int | None


def compute_nodes(model: onnx.ModelProto) -> list[ComputeNode]:
    """Linear layers and attention MatMuls of a float graph, with their MACs (batch 1)."""
    from vitedge.models.structure import node_macs

    constants = constant_names(model)
    macs = node_macs(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS:
            continue
        weight_const = len(node.input) > 1 and node.input[1] in constants
        data_const = node.input[0] in constants
        if node.op_type == "MatMul" and not weight_const and not data_const:
            kind = "attention"
        elif weight_const:
            kind = "linear"
        else:
            continue
        nodes.append(ComputeNode(node.name, node.op_type, kind, macs.get(node.name)))
    return nodes


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def quantized_node_names(model: onnx.ModelProto) -> set[str]:
    """Compute nodes with at least one input coming from a DequantizeLinear."""
    producers = _producers(model)
    names = set()
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS and any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                for i in node.input):
            names.add(node.name)
    return names


def dq_consumers(model: onnx.ModelProto) -> Counter[str]:
    """How many inputs of each op type are fed by a DequantizeLinear (graph-structure summary)."""
    producers = _producers(model)
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        for name in node.input:
            if producers.get(name) is not None and producers[name].op_type == "DequantizeLinear":
                counts[node.op_type] += 1
    return counts


def revert_to_float(quantized: onnx.ModelProto, float_model: onnx.ModelProto,
                    names: set[str]) -> onnx.ModelProto:
    """A copy of `quantized` in which the named compute nodes compute in float again.

    Each node gets back the inputs it had in the float graph, and so does the bias Add after
    it: NNCF's bias correction rewrites biases for the INT8 layer, which are wrong for float.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    float_nodes = {node.name: node for node in float_model.graph.node}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    constants = constant_names(float_model)
    restore = set(names)
    producers = _producers(float_model)
    for node in float_model.graph.node:  # bias Adds fed by a reverted node
        if node.op_type != "Add" or not any(i in constants for i in node.input):
            continue
        feeders = [producers.get(i) for i in node.input if i not in constants]
        if any(p is not None and p.name in names for p in feeders):
            restore.add(node.name)
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    current = {t.name: t for t in model.graph.initializer}
    available = {o for n in model.graph.node for o in n.output} | set(current) | {
        i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.name not in restore or node.name not in float_nodes:
            continue
        original = []
        for name in float_nodes[node.name].input:
            if name in float_inits:
                here = current.get(name)
                if here is None or not np.array_equal(numpy_helper.to_array(here),
                                                      numpy_helper.to_array(float_inits[name])):
                    copy = onnx.TensorProto()
                    copy.CopyFrom(float_inits[name])
                    copy.name = f"{name}__float"
                    if copy.name not in current:
                        model.graph.initializer.append(copy)
                        current[copy.name] = copy
                    name = copy.name
            elif name and name not in available:
                raise ValueError(f"cannot revert {node.name}: {name} is not in the graph")
            original.append(name)
        del node.input[:]
        node.input.extend(original)
    return remove_dead_nodes(model)


def _feeding(nodes: list[onnx.NodeProto], wanted: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes (in graph order) that `wanted` depends on, and every tensor name they read or
    that is wanted."""
    needed, keep = set(wanted), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    return keep, needed


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on."""
    keep, needed = _feeding(list(model.graph.node), [o.name for o in model.graph.output])
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def int8_mac_share(model: onnx.ModelProto, linear: list[ComputeNode]) -> float:
    """Share of the float graph's Linear/Conv MACs that run in INT8 in `model`."""
    quantized = quantized_node_names(model)
    total = sum(n.macs or 0 for n in linear if n.kind == "linear")
    done = sum(n.macs or 0 for n in linear if n.kind == "linear" and n.name in quantized)
    return done / total if total else 0.0


def to_signed_int8(model: onnx.ModelProto) -> int:
    """Turn symmetric UINT8 activation quantizers (zero-point 0) into signed INT8, in place.

    A non-negative tensor quantized to [0, 255] * s is requantized to [-128, 127] * s' with
    s' = s * 255 / 127: the same largest value, half the steps (what any signed-only runtime,
    TensorRT among them, does with such a tensor). Each QuantizeLinear and the DequantizeLinear
    nodes reading its output get their own new scale and zero-point. Returns how many changed.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            readers.setdefault(node.input[0], []).append(node)
    changed = 0
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zero = inits[node.input[2]]
        if zero.data_type != TensorProto.UINT8 or np.any(numpy_helper.to_array(zero)) \
                or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32) * np.float32(255 / 127)
        scale_name, zero_name = f"{node.output[0]}_scale_s8", f"{node.output[0]}_zero_point_s8"
        model.graph.initializer.extend([
            numpy_helper.from_array(scale.astype(np.float32), scale_name),
            numpy_helper.from_array(np.zeros(numpy_helper.to_array(zero).shape, np.int8), zero_name)])
        for target in (node, *readers.get(node.output[0], [])):
            target.input[1], target.input[2] = scale_name, zero_name
        for info in model.graph.value_info:  # the quantized tensor's declared type follows
            if info.name == node.output[0] and info.type.tensor_type.elem_type == TensorProto.UINT8:
                info.type.tensor_type.elem_type = TensorProto.INT8
        changed += 1
    if changed:
        remove_unused_initializers(model)
    return changed


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def single_cuts(model: onnx.ModelProto) -> list[str]:
    """Tensors that alone carry everything the rest of the graph needs (the graph input, a ViT's
    residual stream before each LayerNorm), in graph order: the graph can be run from there on
    with that tensor as its only input (`subgraph`)."""
    constants = constant_names(model)
    nodes = list(model.graph.node)
    last_read: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name and name not in constants:
                last_read[name] = index
    for output in model.graph.output:
        last_read[output.name] = len(nodes)
    live = {i.name for i in model.graph.input if i.name in last_read and i.name not in constants}
    cuts: list[str] = []
    for index, node in enumerate(nodes):  # live: made before this node, read by it or later
        if len(live) == 1 and (not cuts or cuts[-1] not in live):
            cuts.extend(live)
        live.difference_update([name for name in node.input if last_read.get(name) == index])
        live.update(name for name in node.output if last_read.get(name, -1) > index)
    return cuts


def subgraph(model: onnx.ModelProto, start: str, outputs: list[str] | None = None,
             containing: set[str] | frozenset[str] = frozenset()) -> onnx.ModelProto:
    """The nodes after tensor `start` (one of `single_cuts`) that compute `outputs` (default: the
    graph's), as a model whose only input is `start`.

    Raises ValueError when they need another tensor made before `start`, when a node named in
    `containing` is not among them (it would not run, e.g. it comes before `start`), or when the
    graph does not record the type of `start` or of an output.
    """
    from onnx import helper

    constants = constant_names(model)
    nodes = list(model.graph.node)
    after = next((i + 1 for i, n in enumerate(nodes) if start in n.output), 0)
    if after == 0 and start not in {i.name for i in model.graph.input}:
        raise ValueError(f"{start} is not a tensor of the graph")
    wanted = outputs if outputs is not None else [o.name for o in model.graph.output]
    kept, needed = _feeding(nodes[after:], wanted)
    made = {o for n in kept for o in n.output}
    missing = sorted(needed - made - constants - {start})
    if missing:
        raise ValueError(f"the graph after {start} also needs {missing[0]}")
    absent = set(containing) - {n.name for n in kept}
    if absent:
        raise ValueError(f"{sorted(absent)[0]} does not run after {start}")
    constant_nodes = [n for n in nodes[:after] if n.op_type == "Constant" and any(o in needed for o in n.output)]
    types = {v.name: v for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    unknown = [name for name in (start, *wanted) if name not in types]
    if unknown:  # a piece's inputs and outputs need their element type
        raise ValueError(f"the graph does not record the type of {unknown[0]}")

    def typed(name: str) -> onnx.ValueInfoProto:  # the element type only: shapes may pin a batch size
        return helper.make_tensor_value_info(name, types[name].type.tensor_type.elem_type, None)

    graph = helper.make_graph([*constant_nodes, *kept], f"{model.graph.name}_from_{start}", [typed(start)],
                              [typed(name) for name in wanted],
                              [t for t in model.graph.initializer if t.name in needed])
    piece = helper.make_model(graph, opset_imports=list(model.opset_import))
    piece.ir_version = model.ir_version
    return piece
