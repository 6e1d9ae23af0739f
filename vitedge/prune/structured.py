"""Structured pruning of ViTs with Torch-Pruning (DepGraph), and rebuilding pruned models.

Three families (layouts.py finds their layers): timm `VisionTransformer` (ViT, DeiT) and BEiT,
torchvision `VisionTransformer`, and Hugging Face ViT/DeiT (`ViTForImageClassification`,
`DeiTForImageClassification[WithTeacher]`, `ViTModel`/`DeiTModel`, as wrapped by hf.py). Torch-Pruning finds which tensors move together
(q/k/v rows of a head and the output-projection columns that read them; fc1 rows and fc2
columns; the embedding width through every block) and removes them. vitedge chooses per-group
ratios, computes Taylor or magnitude importance, and afterwards sets what each family reads at
run time, which Torch-Pruning does not know about:

- timm 1.0 `Attention`: `num_heads`, `head_dim`, `attn_dim`; the model's `embed_dim`.
- Hugging Face `ViTAttention`/`DeiTAttention`: `num_attention_heads`, `head_dim`, `scaling`; the
  config's `hidden_size`, `num_attention_heads`, `head_dim`, `intermediate_size`.
- torchvision: `hidden_dim` (`_process_input` reshapes with it) and `mlp_dim`;
  `nn.MultiheadAttention`'s `embed_dim`/`head_dim` are updated by Torch-Pruning itself.

torchvision's `nn.MultiheadAttention` splits the full residual width into heads (num_heads x
head_dim == hidden_dim), so whole heads cannot be removed without replacing the module: that
family takes `--mlp` and `--embed` only, and `--embed` removes the same channels from every head.

A pruned model need not match its family's constructor (each block may keep its own head count
and MLP width), so the artifact stores the state dict plus the per-block structure, and `rebuild`
shrinks a freshly built model of the same family to those shapes before loading the weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vitedge.errors import InputError
from vitedge.prune.layouts import (
    Layout,
    attention_width,
    checked_layout,
    layout_of,
    structure_of,
)
from vitedge.prune.plan import Allocation, Importance, PruneRatios, choice


def prune_model(model: nn.Module, ratios: PruneRatios, *, importance: Importance | str = Importance.TAYLOR,
                batches: Iterable[torch.Tensor] = (), teacher: nn.Module | None = None,
                round_to: int = 8, allocation: Allocation | str = Allocation.UNIFORM,
                strict: bool = True) -> dict[str, Any]:
    """Prune `model` in place; return its structure before and after.

    `strict`: a nonzero ratio that removes nothing (rounding) is an error; the --target-macs
    search turns that off while it probes.

    allocation "uniform": every block loses the same share of heads and of MLP units; "global":
    heads and MLP units are ranked across all blocks (Torch-Pruning's global scope), so blocks
    that matter less lose more — timm only, whose rebuild takes any per-block widths.
    """
    import torch_pruning as tp

    ratios.check()
    layout = checked_layout(model, ratios)
    allocation = choice(Allocation, allocation, "--allocation")
    importance = choice(Importance, importance, "--importance")
    if allocation is Allocation.GLOBAL and layout.family != "timm":
        raise InputError(f"--allocation global needs timm models (per-block widths); this is a {layout.family} model",
                         "use --allocation uniform, or load the model with timm")
    before = structure_of(model)
    example = torch.zeros(1, 3, *layout.input_size)
    ignored: list[nn.Module] = list(layout.heads)
    ratio_dict: dict[nn.Module, float] = {}
    num_heads: dict[nn.Module, int] = {}
    for attention, qkv in zip(layout.attentions, layout.qkv):
        for layer in qkv:
            ratio_dict[layer] = ratios.heads
            num_heads[layer] = int(getattr(attention, layout.heads_attribute))
    if allocation is Allocation.GLOBAL:  # one ranking scope for the MLP units of every block
        ratio_dict[tuple(layout.fc1)] = ratios.mlp  # type: ignore[index]
    else:
        for fc1 in layout.fc1:
            ratio_dict[fc1] = ratios.mlp
    if ratios.embed == 0:
        # the attention output, fc2 and the patch embedding write the embedding width: only --embed prunes it
        ignored += layout.writers
    embed_ratio, rounding, groups = ratios.embed, round_to, {}
    if layout.family == "torchvision":
        embed_ratio, groups = _torchvision_ratios(layout, ratios, round_to, ratio_dict)
        rounding = None
    if importance is Importance.TAYLOR:
        criterion = tp.importance.GroupTaylorImportance()
    else:
        criterion = tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():
        # "unwrapped parameters": class/position tokens, pruned on their last dim as wanted
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            model, example, importance=criterion, pruning_ratio=embed_ratio,
            pruning_ratio_dict=ratio_dict, ignored_layers=ignored,
            num_heads=num_heads, prune_num_heads=ratios.heads > 0, global_pruning=allocation is Allocation.GLOBAL,
            prune_head_dims=False, head_pruning_ratio=ratios.heads, round_to=rounding,
            in_channel_groups=groups, out_channel_groups=dict(groups))
        if importance is Importance.TAYLOR:
            _accumulate_taylor(model, teacher, batches)
        pruner.step()
    model.zero_grad(set_to_none=True)
    heads = [int(pruner.num_heads[qkv[0]]) if qkv else int(getattr(attention, layout.heads_attribute))
             for attention, qkv in zip(layout.attentions, layout.qkv)]
    if min(heads) < 1:
        raise InputError("--heads would remove every head of a block", "use a smaller --heads")
    if any(fc1.out_features < 1 for fc1 in layout.fc1):
        raise InputError("--mlp would remove every MLP unit of a block", "use a smaller --mlp")
    head_dims = [attention_width(layout, a) // h for a, h in zip(layout.attentions, heads)]
    _set_attributes(model, layout, heads, head_dims, int(layout.patch.out_channels))
    after = structure_of(model)
    if strict:
        _check_removed(ratios, before, after, round_to)
    return {"before": before, "after": after}


def _check_removed(ratios: PruneRatios, before: dict[str, Any], after: dict[str, Any], round_to: int) -> None:
    """An asked-for ratio that removed nothing is an error, not a silent no-op."""
    for flag, ratio, key in (("--heads", ratios.heads, "num_heads"), ("--mlp", ratios.mlp, "mlp_hidden"),
                             ("--embed", ratios.embed, "embed_dim")):
        if ratio > 0 and before[key] == after[key]:
            raise InputError(f"{flag} {ratio:g} removed nothing: with widths kept in multiples of "
                             f"--round-to {round_to}, it would keep none or all of them",
                             f"lower --round-to (widths: {before[key]}), or pick another {flag}")


def _torchvision_ratios(layout: Layout, ratios: PruneRatios, round_to: int,
                        ratio_dict: dict[nn.Module, float]) -> tuple[float, dict[nn.Module, int]]:
    """Exact ratios for torchvision, whose widths are rounded here rather than by Torch-Pruning.

    --embed prunes nn.MultiheadAttention's q/k/v channels with the residual channels of the same
    index. Grouping those channels per head (Torch-Pruning's channel groups) removes the same
    offsets from every head, so the heads keep their boundaries instead of being re-split across
    each other. Torch-Pruning's round_to rounds each group's share against the layer's whole width
    (4 heads of 16 channels, --embed 0.25, round_to 8: it removes 8 per head, not 4), so kept
    widths are computed here, rounded as it would, and passed on as ratios with round_to off.
    """
    for fc1 in layout.fc1:
        kept = _kept(fc1.out_features, ratios.mlp, round_to)
        if kept < 1:
            raise InputError(f"--mlp {ratios.mlp} would remove every MLP unit of a block "
                             f"({fc1.out_features}, kept in multiples of --round-to {round_to})",
                             "use a smaller --mlp or --round-to")
        ratio_dict[fc1] = _exact_ratio(fc1.out_features, kept)
    if ratios.embed == 0:
        return 0.0, {}
    width, heads = int(layout.patch.out_channels), int(layout.attentions[0].num_heads)
    step = math.lcm(round_to, heads)
    kept = _kept(width, ratios.embed, step)
    if kept < 1:
        raise InputError(f"--embed {ratios.embed} would remove the whole embedding width ({width}, kept in "
                         f"multiples of {step}: the least common multiple of --round-to and the head count)",
                         "use a smaller --embed or --round-to")
    return _exact_ratio(width // heads, kept // heads), {a: int(a.num_heads) for a in layout.attentions}


def _kept(width: int, ratio: float, step: int) -> int:
    """Channels Torch-Pruning keeps of `width` at `ratio` with round_to=`step`."""
    if ratio == 0:
        return width  # Torch-Pruning rounds only what it prunes
    kept = int(width * (1 - ratio))
    return kept - kept % step


def _exact_ratio(width: int, kept: int) -> float:
    # Torch-Pruning keeps int(width * (1 - ratio)); the half channel lands the floor on `kept`
    # whatever the float rounding.
    return 0.0 if kept >= width else 1.0 - (kept + 0.5) / width


def set_heads(layout: Layout, attention: nn.Module, count: int, dim: int) -> None:
    """Set what one attention module reads at run time to `count` heads of `dim` channels."""
    if layout.family == "timm":
        attention.num_heads, attention.head_dim, attention.attn_dim = count, dim, count * dim
    elif layout.family == "huggingface":
        attention.num_attention_heads, attention.head_dim = count, dim
        attention.scaling = dim ** -0.5
    else:  # nn.MultiheadAttention: one width for queries, keys, values and the residual
        attention.num_heads, attention.head_dim = count, dim
        attention.embed_dim = attention.kdim = attention.vdim = count * dim


def _set_attributes(model: nn.Module, layout: Layout, heads: list[int], head_dims: list[int],
                    embed_dim: int) -> None:
    """Set what the family reads at run time (and describes itself with) to the pruned shapes."""
    mlp_widths = [int(fc1.out_features) for fc1 in layout.fc1]
    for attention, count, dim in zip(layout.attentions, heads, head_dims):
        set_heads(layout, attention, count, dim)
    if layout.family == "timm":
        model.embed_dim = model.num_features = model.head_hidden_size = embed_dim
    elif layout.family == "huggingface":
        # One config for every layer: it describes the model exactly when all blocks keep the
        # same widths (always so with vitedge's per-block ratios); the card's structure is exact.
        config = model.inner.config
        config.hidden_size, config.intermediate_size = embed_dim, max(mlp_widths)
        config.num_attention_heads, config.head_dim = max(heads), max(head_dims)
    else:
        model.hidden_dim, model.mlp_dim = embed_dim, max(mlp_widths)


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
    """Shrink a freshly built model (any family above) to a pruned state dict's shapes, then load it."""
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        weight = state_dict.get(f"{name}.weight")
        if weight is None or weight.shape == getattr(module, "weight", torch.empty(0)).shape:
            continue
        bias = f"{name}.bias" in state_dict
        if isinstance(module, nn.Linear):
            # nn.MultiheadAttention's out_proj keeps its own (same-signature) Linear subclass
            linear = type(module) if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear) \
                else nn.Linear
            replacement: nn.Module = linear(weight.shape[1], weight.shape[0], bias=bias)
        elif isinstance(module, nn.LayerNorm):
            replacement = nn.LayerNorm(weight.shape[0], eps=module.eps, bias=bias)
        elif isinstance(module, nn.Conv2d):
            replacement = nn.Conv2d(weight.shape[1], weight.shape[0], module.kernel_size,
                                    module.stride, module.padding, bias=bias)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, replacement)
    # Parameters held directly by a module: class/position/distillation tokens,
    # nn.MultiheadAttention's in_proj_weight and in_proj_bias.
    modules = dict(model.named_modules())
    for key, tensor in state_dict.items():
        owner_name, _, attribute = key.rpartition(".")
        owner = modules.get(owner_name)
        current = owner._parameters.get(attribute) if owner is not None else None
        if current is not None and current.shape != tensor.shape:
            setattr(owner, attribute, nn.Parameter(torch.empty_like(tensor)))
    layout = layout_of(model)
    _set_attributes(model, layout, list(structure["num_heads"]), list(structure["head_dim"]),
                    int(structure["embed_dim"]))
    model.load_state_dict(state_dict)
    return model
