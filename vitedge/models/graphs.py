"""Sources that arrive as graphs, not architectures: TorchScript, torch.export, ONNX, pickles.

They record no preprocessing, and their ViT structure is read back from parameter names, module
attributes or the graph itself (best effort: unknown fields stay None).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.card import ModelCard, Preprocessing, VitStructure
from vitedge.errors import ModelLoadError, exception_line
from vitedge.models.structure import (
    onnx_summary,
    out_features,
    state_dict_structure,
    timm_structure,
    torchvision_structure,
)

if TYPE_CHECKING:
    import torch

    from vitedge.models.loaded import LoadedModel


def _graph_card(kind: str, path: Path, structure: VitStructure, input_size: tuple[int, int] | None,
                num_classes: int | None) -> ModelCard:
    card = ModelCard(
        architecture=f"{kind} ({path.name})",
        source={"kind": kind, "path": str(path.resolve())},
        preprocessing=Preprocessing(input_size=input_size or (224, 224)),
        structure=structure, num_classes=num_classes,
    )
    named = {"onnx": "an ONNX", "torchscript": "a TorchScript", "pt2": "a torch.export"}.get(kind, f"a {kind}")
    card.warnings.append(f"{named} file records no preprocessing: using ImageNet mean/std, "
                         "bicubic, crop 0.875; override with --mean/--std/--crop-pct/"
                         "--interpolation if the model was trained otherwise")
    if input_size is None:
        card.warnings.append("input size unknown: assuming 224x224 (override with --input-size)")
    return card


def from_module(model: torch.nn.Module, path: Path, *, kind: str) -> LoadedModel:
    structure = _known_structure(model) or state_dict_structure(
        model.state_dict(), {"num_heads": _first_attr(model, "num_heads")})
    size = _first_attr(model, "img_size") or _first_attr(model, "image_size")
    input_size = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (
        (int(size), int(size)) if size else None)
    card = _graph_card(kind, path, structure, input_size, out_features(model))
    from vitedge.models.loaded import LoadedModel

    return LoadedModel(card, model)


def _known_structure(model: torch.nn.Module) -> VitStructure | None:
    return timm_structure(model) or torchvision_structure(model)


def _first_attr(model: Any, name: str) -> Any:
    for module in [model, *getattr(model, "modules", lambda: [])()]:
        value = getattr(module, name, None)
        if value is not None and not callable(value):
            return value
    return None


def load_torchscript(path: Path) -> LoadedModel:
    import torch

    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ModelLoadError(f"TorchScript file {path} could not be loaded ({str(exc).splitlines()[0]})",
                             "re-save it with torch.jit.save") from None
    return from_module(model, path, kind="torchscript")


def load_exported_program(path: Path) -> LoadedModel:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch.export.load raises many types on bad files
        raise ModelLoadError(f"{path} is not a readable torch.export program "
                             f"({exception_line(exc)})",
                             "re-save it with torch.export.save") from None
    inputs = [spec for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    shapes = [node.meta["val"].shape for node in program.graph.nodes
              if node.op == "placeholder" and node.name in {s.arg.name for s in inputs}]
    input_size = (int(shapes[0][2]), int(shapes[0][3])) if shapes and len(shapes[0]) == 4 else None
    module = program.module()
    state = dict(program.state_dict)
    structure = state_dict_structure(state)
    card = _graph_card("torch.export", path, structure, input_size, None)
    card.source["batch_dynamic"] = bool(shapes) and not isinstance(shapes[0][0], int)
    from vitedge.models.loaded import LoadedModel

    loaded = LoadedModel(card, module)
    card.num_classes = _probe_classes(module, card.preprocessing.input_size)
    return loaded


def _probe_classes(module: torch.nn.Module, input_size: tuple[int, int]) -> int | None:
    import torch

    with torch.no_grad():
        out = module(torch.zeros(1, 3, *input_size))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1]) if out.ndim == 2 else None


def load_onnx(path: Path) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise ModelLoadError(f"{path} is not a valid ONNX model "
                             f"({exception_line(exc)})",
                             "re-export it, or check it with onnx.checker") from None
    from vitedge.limits import check_graph

    _check_operators(model, path)
    check_graph(model, path)
    summary = onnx_summary(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    input_size = (dims[2].dim_value, dims[3].dim_value) if len(dims) == 4 and dims[2].dim_value else None
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    num_classes = out_dims[-1].dim_value if out_dims and out_dims[-1].dim_value else None
    card = _graph_card("onnx", path, summary["structure"], input_size, num_classes)
    card.format = "onnx"
    card.params, card.macs = summary["params"], summary["macs"]
    from vitedge.models.loaded import LoadedModel

    return LoadedModel(card, None, onnx_path=path)


# Operator domains a runtime vitedge drives implements: ONNX's own, ONNX-ML, and ONNX Runtime's
# contrib operators (graphs ONNX Runtime optimized offline hold them).
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _check_operators(model: Any, path: Path) -> None:
    """Refuse an operator no runtime here implements (a custom domain, a misspelt op) with one
    line, before a runtime fails on it deep inside its loader."""
    import onnx

    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph):
        if (node.domain, node.op_type) in local:
            continue
        if node.domain in ("", "ai.onnx", "ai.onnx.ml"):
            if onnx.defs.has(node.op_type, node.domain):
                continue
        elif node.domain in _KNOWN_DOMAINS:
            continue
        name = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
        where = f" (node {node.name})" if node.name else ""
        raise ModelLoadError(f"{path} uses the operator {name}{where}, which ONNX "
                             "Runtime, OpenVINO and TensorRT do not implement",
                             "export the model with standard ONNX operators, or replace that node")


def _all_nodes(graph: Any) -> Any:
    """Every node of a graph, those inside If/Loop/Scan bodies included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)
