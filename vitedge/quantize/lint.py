"""TensorRT-rules lint of a QDQ ONNX graph, run after every quantization and before compiling.

TensorRT's explicit quantization takes a QDQ graph as it is: a zero-point other than 0, a
per-channel activation scale or a Q/DQ pair on a residual Add changes what runs (or stops the
build). These checks read the graph only; they need no TensorRT.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge import ASSETS

if TYPE_CHECKING:
    import onnx

# Ops that a ViT-safe graph keeps in float: quantizing them collapses ViT accuracy.
FLOAT_ONLY_OPS = ("Add", "LayerNormalization", "Softmax", "Erf", "Gelu", "ReduceMean", "Pow",
                  "Sqrt", "Div")
INT8_TYPES = (2, 3)  # onnx.TensorProto.UINT8, INT8


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error" | "warning"
    node: str
    message: str


@dataclass
class LintResult:
    """Truthy when no finding is an error."""

    findings: list[Finding] = field(default_factory=list)
    quantize_nodes: int = 0
    dequantize_nodes: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def __bool__(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "quantize_nodes": self.quantize_nodes,
                "dequantize_nodes": self.dequantize_nodes,
                "findings": [asdict(f) for f in self.findings]}


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def lint_qdq(model: onnx.ModelProto, *, symmetric: bool = True, vit_safe: bool = True) -> LintResult:
    """Check a QDQ graph against the rules TensorRT (symmetric) or a ViT-safe recipe need.

    symmetric: every zero-point must be 0 (TensorRT supports only symmetric INT8).
    vit_safe: no DequantizeLinear may feed a residual Add, LayerNorm, Softmax or GELU.
    """
    from onnx import helper

    result = LintResult()
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers_of: dict[str, list[onnx.NodeProto]] = {}
    for consumer in model.graph.node:
        for name in consumer.input:
            consumers_of.setdefault(name, []).append(consumer)
    constants = {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "QuantizeLinear":
            result.quantize_nodes += 1
        else:
            result.dequantize_nodes += 1
        scale = _constant(model, node.input[1])
        zero = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if scale is None:
            result.findings.append(Finding("constant-scale", "error", node.name,
                                           "scale is not a constant; TensorRT needs build-time scales"))
        elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            result.findings.append(Finding("positive-scale", "error", node.name,
                                           "scale has zero, negative or non-finite values"))
        if zero is not None:
            if zero.dtype not in (np.int8, np.uint8):
                result.findings.append(Finding("int8-type", "error", node.name,
                                               f"zero-point type {zero.dtype} is not INT8"))
            elif zero.dtype == np.uint8 and symmetric:
                result.findings.append(Finding("int8-type", "error", node.name,
                                               "UINT8 quantization; TensorRT takes signed INT8"))
            if symmetric and np.any(zero != 0):
                result.findings.append(Finding("zero-point", "error", node.name,
                                               f"zero-point {int(np.max(np.abs(zero)))} != 0; "
                                               "TensorRT supports symmetric INT8 only"))
        source_is_weight = node.input[0] in constants
        if node.op_type == "DequantizeLinear" and source_is_weight:
            weight = _constant(model, node.input[0])
            if scale is not None and scale.size == 1 and weight is not None and weight.ndim >= 2:
                result.findings.append(Finding("per-channel-weights", "warning", node.name,
                                               "weights quantized per tensor; per-channel keeps accuracy"))
            elif scale is not None and weight is not None and scale.size > 1:
                consumers = consumers_of.get(node.output[0], [])
                expected = _weight_axis(consumers[0], weight.ndim) if consumers else None
                if expected is not None and axis % weight.ndim != expected:
                    result.findings.append(Finding(
                        "per-channel-axis", "error", node.name,
                        f"per-channel axis {axis} is not the output-channel axis {expected} of "
                        f"{consumers[0].op_type} {consumers[0].name}"))
        elif scale is not None and scale.size > 1 and not source_is_weight:
            result.findings.append(Finding("per-tensor-activations", "error", node.name,
                                           "activation scale is per channel; TensorRT needs one "
                                           "scale per activation tensor"))
    if vit_safe:
        for node in model.graph.node:
            if node.op_type not in FLOAT_ONLY_OPS:
                continue
            for name in node.input:
                producer = producers.get(name)
                if producer is not None and producer.op_type == "DequantizeLinear":
                    result.findings.append(Finding(
                        "vit-safe", "error", node.name,
                        f"{node.op_type} reads a dequantized tensor; residual adds, LayerNorm, "
                        "Softmax and GELU stay float in a ViT-safe graph"))
                    break
    return result


def culprits(model: onnx.ModelProto, result: LintResult, compute: set[str]) -> set[str]:
    """The compute nodes (Linear, Conv, MatMul names in `compute`) whose INT8 inputs caused the
    lint's errors: kept float, their quantizers go and the rules hold. A finding's dequantize
    nodes are its own (a DQ), those its quantize feeds (a Q), or those a float-only op reads."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {node.name: node for node in model.graph.node}
    found: set[str] = set()
    for finding in result.errors:
        node = by_name.get(finding.node)
        if node is None:
            continue
        if node.op_type == "DequantizeLinear":
            dequantized = [node]
        elif node.op_type == "QuantizeLinear":
            dequantized = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        else:
            dequantized = [p for p in (producers.get(n) for n in node.input)
                           if p is not None and p.op_type == "DequantizeLinear"]
        for dq in dequantized:
            found |= {c.name for c in consumers.get(dq.output[0], []) if c.name in compute}
    return found


def _weight_axis(consumer: onnx.NodeProto, ndim: int) -> int | None:
    """Output-channel axis of a weight for its consumer (MatMul [K, N] -> 1, Gemm/Conv -> 0)."""
    from onnx import helper

    if consumer.op_type == "MatMul":
        return ndim - 1
    if consumer.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in consumer.attribute
                        if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type in ("Conv", "ConvTranspose"):
        return 0 if consumer.op_type == "Conv" else 1
    return None


# ------------------------------------------------------------- TensorRT ONNX-parser coverage
TENSORRT_OPS = ASSETS / "tensorrt_onnx_ops.json"


def tensorrt_op_table(version: str) -> tuple[str, dict[str, Any]]:
    """The documented op table for a TensorRT version: the newest documented one not after it.

    Tables come from onnx/onnx-tensorrt docs/operators.md (8.5, 8.6, 10.1); later 10.x and 11.x
    use 10.1's, the newest in the stored copy of that repository.
    """
    tables = json.loads(TENSORRT_OPS.read_text())["versions"]

    def key(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:2]) or (0,)

    wanted = key(version)
    usable = [v for v in tables if key(v) <= wanted]
    chosen = max(usable, key=key) if usable else min(tables, key=key)
    return chosen, tables[chosen]


def check_tensorrt_ops(model: onnx.ModelProto, version: str) -> list[Finding]:
    """Ops and opset the target's TensorRT ONNX parser does not take, as error findings."""
    documented, table = tensorrt_op_table(version)
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > table["max_opset"]:
        findings.append(Finding("tensorrt-opset", "error", "graph",
                                f"opset {opset} is above {table['max_opset']}, the highest TensorRT "
                                f"{version} parses (table for {documented})"))
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type in seen:
            continue
        seen.add(node.op_type)
        entry = table["ops"].get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if entry is None or not entry["supported"]:
            where = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            findings.append(Finding("tensorrt-op", "error", node.name,
                                    f"{where}{node.op_type} is not supported by TensorRT {version}'s "
                                    f"ONNX parser (table for {documented})"))
    return findings
