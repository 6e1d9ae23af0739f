"""What a model is: ViT structure, parameter count and MACs, from a torch module or ONNX graph."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from vitedge.card import VitStructure

if TYPE_CHECKING:
    import onnx
    import torch


def _pair_first(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0])
    return int(value)


def _mlp_hidden(mlp: Any) -> int | None:
    """The hidden width of a transformer MLP: Mlp's fc1, a gated MLP's half of fc1 (GluMlp) or its
    gate (SwiGLU)."""
    for name in ("fc1_g", "w1"):
        if hasattr(mlp, name):
            return int(getattr(mlp, name).out_features)
    if hasattr(mlp, "fc2") and hasattr(mlp.fc2, "in_features"):
        return int(mlp.fc2.in_features)
    return int(mlp.fc1.out_features) if hasattr(mlp, "fc1") else None


def timm_structure(model: torch.nn.Module) -> VitStructure | None:
    """timm ViTs: VisionTransformer and its subclasses (DeiT distilled, hybrid stems, GAP, MAE,
    registers, attention pool), EVA / EVA-02 (RoPE, SwiGLU), BEiT (relative position bias), and
    Swin (hierarchical: its widths are the first stage's, depth the blocks of all stages)."""
    from timm.models.beit import Beit
    from timm.models.eva import Eva
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, SwinTransformer):
        blocks = [block for stage in model.layers for block in stage.blocks]
        return VitStructure(
            is_vit=True, patch_size=_pair_first(getattr(model.patch_embed, "patch_size", None)),
            embed_dim=int(model.embed_dim), depth=len(blocks),
            num_heads=int(blocks[0].attn.num_heads) if blocks else None,
            mlp_hidden=_mlp_hidden(blocks[0].mlp) if blocks else None, num_prefix_tokens=0,
            class_token=False, global_pool=str(model.global_pool) or None, family="swin",
            hierarchical=True, token_layout="pyramid", attention_layers=len(blocks),
            **(stages(model, attention_modules(model)) or {}))
    if not isinstance(model, (VisionTransformer, Eva, Beit)):
        return None
    patch_embed = model.patch_embed
    hybrid = hasattr(patch_embed, "backbone")
    patch = _pair_first(getattr(patch_embed, "patch_size", None))
    grid = getattr(patch_embed, "grid_size", None)
    img = getattr(patch_embed, "img_size", None)
    if hybrid and grid and img:  # effective patch = backbone stride x projection patch
        patch = int(img[0]) // int(grid[0])
    first = model.blocks[0] if len(model.blocks) else None
    registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    return VitStructure(
        is_vit=True,
        patch_size=patch,
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(first.attn.num_heads) if first is not None else None,
        mlp_hidden=_mlp_hidden(first.mlp) if first is not None else None,
        num_prefix_tokens=int(model.num_prefix_tokens),
        class_token=getattr(model, "cls_token", None) is not None,
        distillation_token=getattr(model, "dist_token", None) is not None,
        global_pool=str(model.global_pool) or None,
        hybrid_stem=hybrid,
        register_tokens=registers,
        family={Eva: "eva", Beit: "beit"}.get(type(model), "vit") if not isinstance(model, VisionTransformer)
        else "vit",
        token_layout="flat", attention_layers=len(model.blocks),
    )


# Attention modules by class name, across timm's families (Attention, ClassAttn, XCA, GPSA, MHSA,
# LiteMLA, LinearSelfAttention, CascadedGroupAttention, Attention2d, GlobalSubSampleAttn, ...);
# CNN attention (squeeze-excite, CBAM's channel/spatial gates, ResNeSt's split attention) is not.
_ATTENTION = re.compile(r"attn|attention|mla$|mhsa|gpsa|^xca$", re.I)
_NOT_ATTENTION = re.compile(r"channel|spatial|selective|split|eca|cbam|excite|squeeze|gather", re.I)


def attention_modules(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, module) of every attention module, innermost only (a block that wraps one is not)."""
    found = [(name, module) for name, module in model.named_modules()
             if name and _ATTENTION.search(type(module).__name__)
             and not _NOT_ATTENTION.search(type(module).__name__)]
    names = [name for name, _ in found]
    return [(name, module) for name, module in found
            if not any(other.startswith(name + ".") for other in names)]


def _heads(module: Any) -> int | None:
    for name in ("num_heads", "heads", "n_heads", "num_attention_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _blocks_in(stage: Any) -> int:
    import torch

    inner = getattr(stage, "blocks", None)
    if isinstance(inner, (torch.nn.Sequential, torch.nn.ModuleList)):
        return len(inner)
    if isinstance(stage, (torch.nn.Sequential, torch.nn.ModuleList)):
        return len(stage)
    return 1


def _submodule(model: torch.nn.Module, name: str) -> tuple[str, Any] | None:
    """(name, module) of the stage timm's feature_info names; Twins lists its stages as "block.N",
    the modules are "blocks.N"."""
    for candidate in (name, re.sub(r"^block\.", "blocks.", name)):
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def stages(model: torch.nn.Module, attention: list[tuple[str, Any]]) -> dict[str, Any] | None:
    """Per-stage widths, blocks, attention modules and heads, from timm's feature_info (the
    stages timm itself hands out as features); None where the model has no feature_info or a
    flat sequence of blocks (one resolution: the stages are the blocks)."""
    info = [entry for entry in getattr(model, "feature_info", None) or []
            if isinstance(entry, dict) and entry.get("module")]
    if len({entry.get("reduction") for entry in info}) < 2 or len({e["module"] for e in info}) < len(info):
        return None
    widths, depths, counts, heads = [], [], [], []
    for entry in info:
        found = _submodule(model, entry["module"])
        if found is None:
            return None
        prefix, stage = found[0] + ".", found[1]
        inside = [module for name, module in attention if name.startswith(prefix)]
        widths.append(int(entry["num_chs"]))
        depths.append(_blocks_in(stage))
        counts.append(len(inside))
        heads.append(_heads(inside[0]) if inside else None)
    return {"stage_widths": widths, "stage_depths": depths, "stage_attention": counts, "stage_heads": heads}


def _token_layout(model: torch.nn.Module, attention: list[tuple[str, Any]], pyramid: bool) -> str:
    kinds = {type(module).__name__ for _, module in attention}
    if not attention:
        return "none"
    if any("ClassAttn" in kind for kind in kinds) or hasattr(model, "cls_attn_blocks"):
        return "class-attention"
    if any("CrossAttention" in kind for kind in kinds):
        return "cross-scale"
    return "pyramid" if pyramid else "flat"


def family_name(model: torch.nn.Module, architecture: str | None) -> str | None:
    """timm's family: the module its architecture is registered in (mobilevit, pvt_v2, xcit)."""
    if architecture:
        try:
            from timm.models import model_entrypoint

            return model_entrypoint(architecture.split(".")[0]).__module__.rsplit(".", 1)[-1]
        except Exception:  # noqa: BLE001 - a name for the card, never a reason to refuse
            pass
    return type(model).__name__.lower()


def transformer_structure(model: torch.nn.Module, architecture: str | None = None) -> VitStructure:
    """Any other timm model, read from what it is made of: its attention modules and the stages
    timm lists in feature_info. Conv-attention hybrids (MobileViT, EfficientFormer, TinyViT,
    EfficientViT, LeViT, PVTv2, Twins, EdgeNeXt, FastViT with attention), class-attention
    (CaiT, XCiT), ConViT and CrossViT are transformers; a model without attention (a CNN, RepViT,
    FastViT's RepMixer-only sizes) is not."""
    attention = attention_modules(model)
    per_stage = stages(model, attention)
    layout = _token_layout(model, attention, pyramid=per_stage is not None)
    if not attention:
        return VitStructure(is_vit=False, token_layout="none", family=family_name(model, architecture),
                            **(per_stage or {}))
    first_heads = next((h for h in (_heads(m) for _, m in attention) if h), None)
    embed = getattr(model, "embed_dim", None)
    embed = embed[0] if isinstance(embed, (list, tuple)) else embed
    patch = _pair_first(getattr(getattr(model, "patch_embed", None), "patch_size", None))
    if per_stage is not None:
        info = [entry for entry in model.feature_info if isinstance(entry, dict)]
        patch = int(info[0]["reduction"])  # the first stage's stride: the stem's "patch"
        attended = [w for w, n in zip(per_stage["stage_widths"], per_stage["stage_attention"]) if n]
        embed = attended[0] if attended else embed
    class_token = getattr(model, "cls_token", None) is not None
    pool = getattr(model, "global_pool", None)
    return VitStructure(
        is_vit=True, patch_size=patch, embed_dim=int(embed) if isinstance(embed, int) else None,
        depth=len(attention), num_heads=first_heads, class_token=class_token,
        global_pool=pool if isinstance(pool, str) and pool else None,
        hybrid_stem=bool(per_stage and per_stage["stage_attention"][0] == 0),
        family=family_name(model, architecture), hierarchical=per_stage is not None,
        token_layout=layout, attention_layers=len(attention), **(per_stage or {}))


def torchvision_structure(model: torch.nn.Module) -> VitStructure | None:
    from torchvision.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return None
    layers = list(model.encoder.layers)
    return VitStructure(
        is_vit=True, patch_size=int(model.patch_size), embed_dim=int(model.hidden_dim),
        depth=len(layers), num_heads=int(layers[0].self_attention.num_heads) if layers else None,
        mlp_hidden=int(model.mlp_dim), num_prefix_tokens=1, class_token=True,
        global_pool="token", hybrid_stem=False, token_layout="flat", attention_layers=len(layers),
    )


def hf_structure(config: Any, *, distillation_token: bool, module: Any = None) -> VitStructure:
    if getattr(config, "model_type", None) in ("swin", "mobilevit"):
        return _hf_staged(config, module)
    hidden = getattr(config, "hidden_size", None)
    mlp = getattr(config, "intermediate_size", None)
    if mlp is None and hidden and getattr(config, "mlp_ratio", None):  # Dinov2: a ratio, not a width
        mlp = int(hidden * config.mlp_ratio)
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    return VitStructure(
        is_vit=True, patch_size=_pair_first(getattr(config, "patch_size", None)),
        embed_dim=hidden, depth=getattr(config, "num_hidden_layers", None),
        num_heads=getattr(config, "num_attention_heads", None), mlp_hidden=mlp,
        num_prefix_tokens=1 + int(distillation_token) + registers, class_token=True,
        distillation_token=distillation_token, global_pool="token", hybrid_stem=False,
        register_tokens=registers, family=getattr(config, "model_type", None), token_layout="flat",
        attention_layers=getattr(config, "num_hidden_layers", None),
    )


_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layers|layer|encoder_layer_?)\.?(\d+)\.")


def _hf_staged(config: Any, module: Any) -> VitStructure:
    """Hugging Face Swin (windowed pyramid) and MobileViT (conv stages with transformer blocks)."""
    attention = attention_modules(module) if module is not None else []
    if config.model_type == "swin":
        depths, heads = list(config.depths), list(config.num_heads)
        widths = [int(config.embed_dim) * 2 ** i for i in range(len(depths))]
        return VitStructure(
            is_vit=True, patch_size=_pair_first(config.patch_size), embed_dim=int(config.embed_dim),
            depth=sum(depths), num_heads=heads[0], mlp_hidden=int(config.embed_dim * config.mlp_ratio),
            num_prefix_tokens=0, class_token=False, global_pool="avg", family="swin", hierarchical=True,
            token_layout="pyramid", attention_layers=sum(depths), stage_widths=widths, stage_depths=depths,
            stage_attention=depths, stage_heads=heads)
    # MobileViT: five stages after the stem (two of MobileNetV2 blocks, three with a transformer of
    # 2, 4 and 3 layers at hidden_sizes); neck_hidden_sizes are the stem's and the stages' channels
    layers = [0, 0, 2, 4, 3]
    return VitStructure(
        is_vit=True, patch_size=2, embed_dim=int(config.hidden_sizes[0]), depth=len(attention) or sum(layers),
        num_heads=int(config.num_attention_heads), mlp_hidden=int(config.hidden_sizes[0] * config.mlp_ratio),
        num_prefix_tokens=0, class_token=False, global_pool="avg", hybrid_stem=True, family="mobilevit",
        hierarchical=True, token_layout="pyramid", attention_layers=len(attention) or sum(layers),
        stage_widths=[int(w) for w in config.neck_hidden_sizes[1:6]], stage_attention=layers,
        stage_heads=[int(config.num_attention_heads) if n else None for n in layers])


def state_dict_structure(state: dict[str, Any], attrs: dict[str, Any] | None = None) -> VitStructure:
    """Best effort from parameter names and shapes (TorchScript, torch.export, unknown modules).

    A patch embedding is a Conv2d with 3 input channels and a square kernel > 1 followed by
    attention weights (qkv / in_proj / query) in numbered blocks.
    """
    attrs = attrs or {}
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_INDEX.search(k))}
    attention = [k for k in state if re.search(r"(qkv|in_proj|query|q_proj)[._]?weight", k)]
    patch_conv = next((v for k, v in state.items()
                       if getattr(v, "ndim", 0) == 4 and v.shape[1] == 3
                       and v.shape[2] == v.shape[3] and v.shape[2] > 1), None)
    is_vit = bool(blocks and attention and patch_conv is not None)
    if not is_vit:
        return VitStructure(is_vit=False)
    return VitStructure(
        is_vit=True, patch_size=int(patch_conv.shape[2]), embed_dim=int(patch_conv.shape[0]),
        depth=len(blocks), num_heads=attrs.get("num_heads"),
        class_token=any(k.endswith(("cls_token", "class_token")) for k in state) or None,
        distillation_token=any(k.endswith("dist_token") for k in state),
    )


def out_features(model: torch.nn.Module) -> int | None:
    """Output width of the last Linear layer: the class count of a classifier."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(linears[-1].out_features) if linears else None


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) or sum(
        t.numel() for t in model.state_dict().values() if t.is_floating_point())


def count_macs(model: torch.nn.Module, input_size: tuple[int, int]) -> int | None:
    """Multiply-accumulates of one image, counted by PyTorch's own FLOP counter (FLOPs / 2)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    first = next(model.parameters(), None)
    sample = torch.zeros(1, 3, *input_size, device=first.device if first is not None else "cpu")
    counter = FlopCounterMode(display=False)
    # The counter's module tracker hooks every tensor that requires grad; a parameter passed
    # straight into a submodule (timm's attention-pool latent query) trips it even under
    # no_grad, so parameters stop requiring grad while counting.
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        # The math backend decomposes fused attention into matmuls the counter sees; the fused
        # CPU kernel has no FLOP formula and its attention products would go uncounted.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(sample)
    except Exception:  # noqa: BLE001 - counting is a report, never a reason to refuse a model
        return None
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)
    total = counter.get_total_flops()
    return int(total // 2) if total else None


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor shape ONNX shape inference can fix, with a dynamic batch taken as 1."""
    import onnx
    from onnx import shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    shapes: dict[str, list[int]] = {}
    try:
        inferred = shape_inference.infer_shapes(fixed, data_prop=True)
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = [d.dim_value for d in dims]
    except Exception:  # noqa: BLE001 - shape inference is advisory; MACs are then unknown
        pass
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def node_macs(model: onnx.ModelProto) -> dict[str, int | None]:
    """MACs of each MatMul / Gemm / Conv node for one image (None where shapes are unknown)."""
    import numpy as np

    shapes = _static_shapes(model)
    macs: dict[str, int | None] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not (a and out):
                macs[node.name] = None
                continue
            k = a[0] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
            macs[node.name] = int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            macs[node.name] = int(np.prod(out)) * int(np.prod(w[1:])) if w and out else None
    return macs


def onnx_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Structure, parameter count and MACs read from an ONNX graph (batch taken as 1)."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    ops = Counter(node.op_type for node in graph.node)
    per_node = node_macs(model)
    known = bool(per_node) and all(v is not None for v in per_node.values())
    macs = sum(v for v in per_node.values() if v)
    patch_conv = None
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in init:
            weight = numpy_helper.to_array(init[node.input[1]])
            strides = _attr(node, "strides") or [1, 1]
            if weight.shape[1] == 3 and weight.shape[2] == weight.shape[3] == strides[0] > 1:
                patch_conv = weight
            break
    # attention multiplies two activations (queries x keys, weights x values); a Linear or Conv
    # multiplies by constant weights. A hybrid has no patch convolution but has these.
    constants = set(init) | {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    for node in graph.node:  # an INT8 graph's weights: DequantizeLinear of a constant (graph order)
        if node.op_type in ("DequantizeLinear", "Transpose", "Reshape") and node.input and node.input[0] in constants:
            constants.update(node.output)
    attention = sum(1 for node in graph.node if node.op_type == "MatMul"
                    and node.input[0] not in constants and node.input[1] not in constants)
    plain = patch_conv is not None and ops["Softmax"] > 0 and (
        ops["LayerNormalization"] > 0 or ops["ReduceMean"] > 0)
    is_vit = plain or attention > 0
    structure = VitStructure(
        is_vit=is_vit,
        patch_size=int(patch_conv.shape[2]) if patch_conv is not None else None,
        embed_dim=int(patch_conv.shape[0]) if patch_conv is not None else None,
        depth=(ops["Softmax"] or None) if is_vit else None,
        token_layout=None if is_vit else "none",
    )
    return {"params": params, "macs": macs if known and macs else None,
            "structure": structure, "ops": dict(ops)}


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None
