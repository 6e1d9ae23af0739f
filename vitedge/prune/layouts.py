"""Where each ViT family keeps the layers structured pruning touches, and what it refuses.

timm `VisionTransformer` and BEiT, torchvision `VisionTransformer`, and Hugging Face ViT/DeiT
(through hf.py's wrappers). A `Layout` names the patch projection, the attention modules, the
q/k/v and fc1 layers, the residual writers and the classifier heads; `checked_layout` refuses
the ratios a family's structure cannot take, with the reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from torch import nn

from vitedge.errors import InputError
from vitedge.prune.plan import PruneRatios

FAMILIES = ("timm", "torchvision", "huggingface")
HF_TYPES = ("vit", "deit")  # Hugging Face model types whose layers this module knows


@dataclass
class Layout:
    """Where one model keeps the layers pruning touches."""

    family: str  # one of FAMILIES
    patch: nn.Conv2d  # the patch projection: its outputs are the embedding width
    heads: list[nn.Module]  # classifier layers: their outputs (the classes) are never pruned
    attentions: list[nn.Module]  # one per block
    qkv: list[list[nn.Linear]]  # per block, the Linear(s) writing queries, keys and values
    fc1: list[nn.Linear]  # per block, the MLP's first layer (its outputs are the MLP width)
    writers: list[nn.Module]  # what writes the residual stream; only --embed prunes their outputs
    input_size: tuple[int, int]
    features_out: bool = False  # no classifier: the output is embedding-width features
    kind: str = "vit"  # within a family: "vit", or "beit" (MLP width only)

    @property
    def heads_attribute(self) -> str:
        return "num_attention_heads" if self.family == "huggingface" else "num_heads"


_WHY_NOT = {  # what makes a family's structure one vitedge does not prune (yet)
    "Eva": "its attention applies rotary embeddings per head dimension and its MLP is gated (SwiGLU)",
    "SwinTransformer": "it is hierarchical: windowed attention and patch merging between stages",
}


# Why the other families are not pruned, by how their tokens are laid out (models/structure.py)
_WHY_NOT_LAYOUT = {
    "none": "it has no attention layers (not a transformer)",
    "pyramid": "it is a hierarchical conv-attention model (stages of convolutions and attention at "
               "shrinking resolution); vitedge prunes the heads and MLPs of flat ViTs",
    "class-attention": "its class-attention blocks (CaiT/XCiT layout) are not a layout vitedge prunes yet",
    "cross-scale": "its two token branches attend to each other (cross-scale), which vitedge does not prune",
}


def _unsupported(model: nn.Module) -> InputError:
    from vitedge.models.structure import transformer_structure

    name = type(model).__name__
    why = _WHY_NOT.get(name) or _WHY_NOT_LAYOUT.get(str(transformer_structure(model).token_layout),
                                                     "it is not a transformer vitedge knows the layers of")
    return InputError(f"structured pruning cannot prune {name}: {why}",
                      "prune a timm ViT/DeiT/BEiT, a torchvision vit_* or a Hugging Face ViT/DeiT folder")


def layout_of(model: nn.Module) -> Layout:
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return _timm_layout(model)
    if isinstance(model, Beit):
        return _beit_layout(model)
    # The other families are recognised without importing them: a model of theirs has loaded them.
    torchvision_vit = sys.modules.get("torchvision.models.vision_transformer")
    if torchvision_vit is not None and isinstance(model, torchvision_vit.VisionTransformer):
        return _torchvision_layout(model)
    transformers = sys.modules.get("transformers")
    inner = getattr(model, "inner", None)  # hf.py's HFClassifier / HFEncoder
    if transformers is not None and isinstance(inner, transformers.PreTrainedModel):
        return _hf_layout(model, inner)
    raise _unsupported(model)


def _timm_layout(model: nn.Module) -> Layout:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention

    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    if any(getattr(a, "gate", None) is not None for a in attentions):
        raise InputError("gated attention is not supported by structured pruning")
    return Layout("timm", model.patch_embed.proj, [model.head], attentions,
                   [[a.qkv] for a in attentions], [m.fc1 for m in mlps],
                   [a.proj for a in attentions] + [m.fc2 for m in mlps] + [model.patch_embed.proj],
                   tuple(model.patch_embed.img_size))


def _beit_layout(model: nn.Module) -> Layout:
    """timm BEiT: its MLPs prune like a ViT's. Heads and the embedding width are refused in
    `checked_layout`: the relative position bias table holds one column per head and the q/v
    biases are separate parameters, which Torch-Pruning's head grouping does not follow."""
    from timm.models.beit import Attention

    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    return Layout("timm", model.patch_embed.proj, [model.head], attentions, [[] for _ in attentions],
                   [block.mlp.fc1 for block in model.blocks],
                   [a.proj for a in attentions] + [block.mlp.fc2 for block in model.blocks]
                   + [model.patch_embed.proj], tuple(model.patch_embed.img_size), kind="beit")


def _torchvision_layout(model: nn.Module) -> Layout:
    layers = list(model.encoder.layers)
    for layer in layers:
        attention, mlp = layer.self_attention, layer.mlp
        if not (isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim
                and isinstance(mlp[0], nn.Linear) and isinstance(mlp[3], nn.Linear)):
            raise InputError(f"{type(model).__name__} has blocks unlike torchvision's ViT "
                             "(nn.MultiheadAttention with one in_proj, MLPBlock of Linears)",
                             "prune a torchvision vit_* model as built by torchvision")
    attentions = [layer.self_attention for layer in layers]
    return Layout("torchvision", model.conv_proj, [model.heads], attentions,
                   [[] for _ in layers], [layer.mlp[0] for layer in layers],
                   attentions + [layer.mlp[3] for layer in layers] + [model.conv_proj],
                   (model.image_size, model.image_size))


def _hf_layout(model: nn.Module, inner: Any) -> Layout:
    model_type = getattr(inner.config, "model_type", "?")
    if model_type not in HF_TYPES:
        raise InputError(f"structured pruning supports Hugging Face {' and '.join(HF_TYPES)} models, "
                         f"not {model_type!r}: vitedge knows the layers of those two layouts only",
                         "load a ViT/DeiT folder, or the same model with timm (e.g. timm's DINOv2 or MAE)")
    base = inner.base_model
    layers = list(getattr(base, "layers", None) or [])
    if not layers or not all(hasattr(layer.attention, name) for layer in layers for name in
                             ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "num_attention_heads")):
        raise InputError(f"this transformers version lays out {type(inner).__name__} differently from "
                         "what vitedge prunes (layers[i].attention.q_proj/k_proj/v_proj/o_proj, "
                         "layers[i].mlp.fc1/fc2)", "use transformers 5, or load the model with timm")
    if getattr(base, "pooler", None) is not None:
        raise InputError(f"{type(inner).__name__} has a pooler, which its vitedge wrapper never runs",
                         "load the folder with vitedge (it builds the model without a pooler)")
    attentions = [layer.attention for layer in layers]
    heads = [] if base is inner else [child for child in inner.children() if child is not base
                                      and any(isinstance(m, nn.Linear) for m in child.modules())]
    projection = base.embeddings.patch_embeddings.projection
    return Layout("huggingface", projection, heads, attentions,
                   [[a.q_proj, a.k_proj, a.v_proj] for a in attentions],
                   [layer.mlp.fc1 for layer in layers],
                   [a.o_proj for a in attentions] + [layer.mlp.fc2 for layer in layers] + [projection],
                   tuple(base.embeddings.patch_embeddings.image_size), features_out=not heads)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm whose output is the model's final tokens (what feature distillation matches)."""
    layout = layout_of(model)
    if layout.family == "timm":
        return model.norm
    if layout.family == "torchvision":
        return model.encoder.ln
    return model.inner.base_model.layernorm


def check_prunable(model: nn.Module, ratios: PruneRatios) -> str:
    """The model's family, after refusing what structured pruning cannot do to it."""
    return checked_layout(model, ratios).family


def checked_layout(model: nn.Module, ratios: PruneRatios) -> Layout:
    layout = layout_of(model)
    if layout.kind == "beit" and (ratios.heads > 0 or ratios.embed > 0):
        raise InputError("--heads and --embed cannot prune a BEiT: its relative position bias table "
                         "holds one column per head and its q/v biases are separate parameters, which "
                         "whole-head removal would have to cut in step", "use --mlp on BEiT")
    if layout.family == "torchvision" and ratios.heads > 0:
        raise InputError("--heads cannot prune a torchvision ViT: its nn.MultiheadAttention ties the "
                         "head width to the embedding width, so whole heads cannot be removed",
                         "use --mlp / --embed, or prune a timm or Hugging Face ViT")
    if layout.features_out and ratios.embed > 0:
        raise InputError(f"--embed cannot prune {type(model.inner).__name__}: without a classifier it "
                         "outputs embedding-width features, and --embed would change their width",
                         "use --heads / --mlp, or prune a model with a classification head")
    return layout


def structure_of(model: nn.Module) -> dict[str, Any]:
    layout = layout_of(model)
    return {"embed_dim": int(layout.patch.out_channels),
            "num_heads": [int(getattr(a, layout.heads_attribute)) for a in layout.attentions],
            "head_dim": [int(getattr(a, "head_dim", None) or attention_width(layout, a)
                             // int(getattr(a, layout.heads_attribute))) for a in layout.attentions],
            "mlp_hidden": [int(fc1.out_features) for fc1 in layout.fc1]}


def attention_width(layout: Layout, attention: nn.Module) -> int:
    """Channels of all heads together (queries only)."""
    if layout.family == "timm":
        return attention.qkv.out_features // 3
    if layout.family == "huggingface":
        return attention.q_proj.out_features
    return attention.in_proj_weight.shape[0] // 3
