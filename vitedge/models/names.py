"""The model's own module names on its ONNX graph's compute nodes.

Exported graphs name nodes after ops (`node_MatMul_69`, after simplification `val_83`), which
tell a user nothing. torch's dynamo exporter records each node's module scopes
(`pkg.torch.onnx.name_scopes`: `['', 'blocks', 'blocks.5', 'blocks.5.mlp', 'blocks.5.mlp.fc2',
'linear_23']`), but the simplifier drops node metadata. So `vitedge export` reads the module of
every compute node (MatMul, Gemm, Conv) before simplifying, and writes it back, in graph order,
onto the simplified graph's compute nodes as MODULE_KEY (ONNX node metadata, IR 10): the
simplifier may fuse MatMul + Add into Gemm, but keeps the compute nodes and their order; where
the counts or op kinds do not line up nothing is written (reports then show node names).
Reports read the names back with `module_names`.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

MODULE_KEY = "vitedge.module"
COMPUTE_OPS = ("MatMul", "Gemm", "Conv")
_SCOPES = "pkg.torch.onnx.name_scopes"
# ops whose scope is a function call inside a module, named by what they compute
_ATTENTION = {"scaled_dot_product_attention": ("attention scores", "attention x values")}


def _compute(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in COMPUTE_OPS]


def exported_modules(model: onnx.ModelProto) -> list[tuple[str, str | None]]:
    """(op type, module name or None) of each compute node, in graph order, from the exporter's
    scopes (None everywhere for a graph without them, e.g. the TorchScript exporter's)."""
    found: list[tuple[str, str | None]] = []
    seen: dict[tuple[str, ...], int] = {}
    for node in _compute(model):
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = [s for s in ast.literal_eval(meta[_SCOPES]) if s] if _SCOPES in meta else []
        except (ValueError, SyntaxError):
            scopes = []
        if len(scopes) < 2:
            found.append((node.op_type, None))
            continue
        module, call = scopes[-2], scopes[-1]
        if call.startswith(("_native_batch_norm", "batch_norm")) and len(scopes) >= 3:
            module, call = scopes[-3], "conv"  # a convolution with its BatchNorm folded in: the pair's module
        key = tuple(scopes)
        seen[key] = seen.get(key, 0) + 1
        roles = next((r for prefix, r in _ATTENTION.items() if call.startswith(prefix)), None)
        if roles is not None:
            module = f"{module} ({roles[min(seen[key], len(roles)) - 1]})"
        elif not call.startswith(("linear", "conv", "matmul", "addmm", "mm", "bmm")):
            module = f"{module} ({call})"
        found.append((node.op_type, module))
    return found


def record_modules(model: onnx.ModelProto, modules: list[tuple[str, str | None]]) -> int:
    """Write `modules` (from `exported_modules` of the graph `model` was simplified from) onto
    `model`'s compute nodes; the number written (0 when the graphs do not line up)."""
    nodes = _compute(model)
    compatible = {("MatMul", "Gemm"), ("Gemm", "MatMul")}
    if len(nodes) != len(modules) or any(
            op != node.op_type and (op, node.op_type) not in compatible for node, (op, _m) in zip(nodes, modules)):
        return 0
    written = 0
    for node, (_op, module) in zip(nodes, modules):
        for index in reversed(range(len(node.metadata_props))):
            if node.metadata_props[index].key == MODULE_KEY:
                del node.metadata_props[index]
        if module:
            entry = node.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, module
            written += 1
    return written


def module_names(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the model's module name, where export recorded one."""
    return {node.name: prop.value for node in model.graph.node for prop in node.metadata_props
            if prop.key == MODULE_KEY}
