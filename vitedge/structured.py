"""Structured pruning of timm ViTs with Torch-Pruning (DepGraph), and rebuilding pruned models.

Torch-Pruning finds which tensors move together (qkv rows of a head and the proj columns that
read them; fc1 rows and fc2 columns; the embedding width through every block) and removes them.
vitedge chooses per-group ratios, computes Taylor or magnitude importance, and afterwards sets
what timm 1.0's Attention reads at run time (num_heads, head_dim, attn_dim), which
Torch-Pruning does not know about.

A pruned model no longer matches any timm constructor (each block keeps its own head count and
MLP width), so the artifact stores the state dict plus the per-block structure, and `rebuild`
shrinks a freshly built timm model to those shapes before loading the weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitedge.errors import InputError


@dataclass(frozen=True)
class PruneRatios:
    heads: float = 0.0  # share of attention heads removed per block (whole heads)
    mlp: float = 0.0  # share of MLP hidden units removed
    embed: float = 0.0  # share of the embedding width removed (whole model)

    def check(self) -> None:
        for name, value in (("--heads", self.heads), ("--mlp", self.mlp), ("--embed", self.embed)):
            if not 0.0 <= value < 1.0:
                raise InputError(f"{name} {value} is outside [0, 1)",
                                 "give the share to remove, e.g. 0.25 removes a quarter")


def _vit_modules(model: nn.Module) -> tuple[list[Any], list[Any]]:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise InputError(f"structured pruning supports timm VisionTransformer models (ViT, DeiT), "
                         f"not {type(model).__name__}", "load the model as timm:NAME --weights ...")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    if any(getattr(a, "gate", None) is not None for a in attentions):
        raise InputError("gated attention is not supported by structured pruning")
    return attentions, mlps


def structure_of(model: nn.Module) -> dict[str, Any]:
    attentions, mlps = _vit_modules(model)
    return {"embed_dim": int(model.patch_embed.proj.out_channels),
            "num_heads": [int(a.num_heads) for a in attentions],
            "head_dim": [int(a.head_dim) for a in attentions],
            "mlp_hidden": [int(m.fc1.out_features) for m in mlps]}


def prune_model(model: nn.Module, ratios: PruneRatios, *, importance: str = "taylor",
                batches: Iterable[torch.Tensor] = (), teacher: nn.Module | None = None,
                round_to: int = 8) -> dict[str, Any]:
    """Prune `model` in place; return its structure before and after."""
    import torch_pruning as tp

    ratios.check()
    attentions, mlps = _vit_modules(model)
    before = structure_of(model)
    example = torch.zeros(1, 3, *model.patch_embed.img_size)
    ignored: list[nn.Module] = [model.head]
    ratio_dict: dict[nn.Module, float] = {}
    for attention in attentions:
        ratio_dict[attention.qkv] = ratios.heads
    for mlp in mlps:
        ratio_dict[mlp.fc1] = ratios.mlp
    if ratios.embed == 0:
        # proj, fc2 and the patch embedding write the embedding width: only --embed prunes it
        ignored += [a.proj for a in attentions] + [m.fc2 for m in mlps] + [model.patch_embed.proj]
    if importance == "taylor":
        criterion = tp.importance.GroupTaylorImportance()
    elif importance == "l2":
        criterion = tp.importance.GroupMagnitudeImportance(p=2)
    else:
        raise InputError(f"--importance {importance!r} is not one of taylor, l2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unwrapped parameters": cls_token/pos_embed, pruned on their last dim as wanted
        pruner = tp.pruner.BasePruner(
            model, example, importance=criterion, pruning_ratio=ratios.embed,
            pruning_ratio_dict=ratio_dict, ignored_layers=ignored,
            num_heads={a.qkv: a.num_heads for a in attentions}, prune_num_heads=ratios.heads > 0,
            prune_head_dims=False, head_pruning_ratio=ratios.heads, round_to=round_to)
        if importance == "taylor":
            _accumulate_taylor(model, teacher, batches)
        pruner.step()
    model.zero_grad(set_to_none=True)
    for attention in attentions:
        heads = int(pruner.num_heads[attention.qkv])
        if heads < 1:
            raise InputError("--heads would remove every head of a block", "use a smaller --heads")
        attention.num_heads = heads
        attention.head_dim = attention.qkv.out_features // 3 // heads
        attention.attn_dim = heads * attention.head_dim
    if any(m.fc1.out_features < 1 for m in mlps):
        raise InputError("--mlp would remove every MLP unit of a block", "use a smaller --mlp")
    model.embed_dim = model.num_features = model.head_hidden_size = model.patch_embed.proj.out_channels
    return {"before": before, "after": structure_of(model)}


def _accumulate_taylor(model: nn.Module, teacher: nn.Module | None, batches: Iterable[torch.Tensor]) -> None:
    """Gradients for Taylor importance from a label-free loss against the unpruned model.

    KL to the unpruned model has zero gradient before anything is removed, so the loss is the
    cross-entropy to the teacher's own top-1 (hard pseudo-labels): no labels needed, and the
    gradient says which units the current predictions lean on.
    """
    model.train(False)
    seen = 0
    for batch in batches:
        with torch.no_grad():
            target = (teacher or model)(batch).argmax(1)
        loss = nn.functional.cross_entropy(model(batch), target)
        loss.backward()
        seen += 1
    if seen == 0:
        raise InputError("--importance taylor needs images", "pass --data DIR, or --importance l2")


def rebuild(model: nn.Module, state_dict: dict[str, torch.Tensor], structure: dict[str, Any]) -> nn.Module:
    """Shrink a freshly built timm ViT to a pruned state dict's shapes, then load it."""
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        weight = state_dict.get(f"{name}.weight")
        if weight is None or weight.shape == getattr(module, "weight", torch.empty(0)).shape:
            continue
        bias = f"{name}.bias" in state_dict
        if isinstance(module, nn.Linear):
            replacement: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        elif isinstance(module, nn.LayerNorm):
            replacement = nn.LayerNorm(weight.shape[0], eps=module.eps, bias=bias)
        elif isinstance(module, nn.Conv2d):
            replacement = nn.Conv2d(weight.shape[1], weight.shape[0], module.kernel_size,
                                    module.stride, module.padding, bias=bias)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, replacement)
    for name in ("cls_token", "pos_embed", "reg_token", "dist_token"):
        if name in state_dict and getattr(model, name, None) is not None:
            setattr(model, name, nn.Parameter(torch.empty_like(state_dict[name])))
    attentions, _ = _vit_modules(model)
    for attention, heads, head_dim in zip(attentions, structure["num_heads"], structure["head_dim"]):
        attention.num_heads, attention.head_dim, attention.attn_dim = heads, head_dim, heads * head_dim
    model.embed_dim = model.num_features = model.head_hidden_size = structure["embed_dim"]
    model.load_state_dict(state_dict)
    return model
