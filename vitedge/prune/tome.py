"""Token merging (ToMe, Bolya et al., ICLR 2023): fewer tokens per block, no training.

After each block's attention, the r most similar token pairs (bipartite soft matching on the
attention keys, averaged over heads) are merged by a size-weighted average; later attention is
proportional (log token size added to the logits), so a merged token counts as many as it holds.
The prefix tokens (class, distillation, registers) are never merged; average-pooled models get
their tokens weighted by size before the head averages them. Token counts per block are fixed by r, so the
model exports to ONNX with static shapes.

Written here rather than imported: the reference implementation (facebookresearch/ToMe) patches
timm's classes at runtime and pins an old timm. This module swaps `model.blocks` for a
`ToMeBlocks` container holding the same submodules (weights untouched), which works with the
timm 1.0 Block/Attention attributes (qkv, num_heads, head_dim, attn_dim, q_norm, k_norm, norm,
proj, ls1/ls2, drop_path1/2, mlp).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitedge.errors import InputError


def default_start(depth: int) -> int:
    """First merging block when none is given: the first sixth of the blocks keep every token.

    Early keys barely tell similar patches apart yet. DeiT-Tiny (12 blocks), 500 real images, at
    the same average token count (~137 per block): r=11 from block 0 keeps 93.4 % top-1
    agreement with the unmerged model (KL 0.049), r=13 from block 1 94.2 % (KL 0.036), r=16 from
    block 2 94.4 % (KL 0.029), r=20 from block 3 94.4 % (KL 0.031) — and later starts need
    fewer merge steps, which is what merging costs on a CPU.
    """
    return depth // 6


def bipartite_merge(metric: torch.Tensor, r: int, protected: int = 0) -> tuple[torch.Tensor, ...]:
    """Indices for merging r tokens: (unmerged a, merged a, their b destinations), per image.

    The first `protected` tokens of `metric` (the class token) are kept aside. The others alternate into
    sets a and b exactly as in ToMe, where the class token is a's first member: patch tokens at
    odd positions here (even overall) form a, the others b. Each a token proposes its most similar
    b token and the r best proposals are merged.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, protected + 1::2, :] @ metric[:, protected::2, :].transpose(-1, -2)
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True)
    merged, unmerged = order.split([r, order.shape[1] - r], dim=1)  # one ONNX Split, not two Slices
    # Unmerged tokens go back to their positions: left in similarity order, a near-tie that
    # float noise flips (ONNX Runtime vs PyTorch, INT8) would reassign sets a/b in the next block
    # and merge other tokens (0.2 logit differences between export and PyTorch on DeiT-Tiny).
    return unmerged.sort(dim=1)[0], merged, node_idx.gather(dim=1, index=merged)


def merge_weighted(x: torch.Tensor, size: torch.Tensor, indices: tuple[torch.Tensor, ...],
                   protected: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of merged tokens; returns the new tokens and their sizes.

    Tokens (times their size) and sizes travel as one tensor, and the batch is flattened so the
    gathers and the scatter index one axis (ONNX Gather/ScatterND, no per-element index tensors):
    on a CPU these small ops are what merging costs.
    """
    unmerged, merged, destination = indices
    values = torch.cat([x * size, size], dim=-1)
    head = values[:, :protected]
    src, dst = values[:, protected + 1::2, :], values[:, protected::2, :]  # a, b as in bipartite_merge
    batch, count_a, channels = src.shape
    count_b = dst.shape[1]
    offset_a = (torch.arange(batch, device=x.device) * count_a)[:, None]
    offset_b = (torch.arange(batch, device=x.device) * count_b)[:, None]
    flat_src = src.reshape(batch * count_a, channels)
    # index_select exports as one Gather; x[idx] would be Unsqueeze + GatherND
    keep = flat_src.index_select(0, (unmerged + offset_a).reshape(-1)).reshape(batch, -1, channels)
    moved = flat_src.index_select(0, (merged + offset_a).reshape(-1))
    dst = dst.reshape(batch * count_b, channels).index_add(0, (destination + offset_b).reshape(-1), moved)
    total = torch.cat([head, keep, dst.reshape(batch, count_b, channels)], dim=1)
    weighted, size = total.split([channels - 1, 1], dim=-1)
    return weighted / size, size


class ToMeBlocks(nn.Module):
    """The transformer blocks of a timm ViT, merging `r[i]` tokens after block i's attention."""

    def __init__(self, blocks: nn.Sequential, r: list[int], protected: int, weighted_pool: bool = False) -> None:
        super().__init__()
        self.blocks = blocks
        self.r = list(r)
        self.protected = protected
        # Average-pooled models (no class token): the head averages the tokens, so a merged token
        # must count as many as it holds. Scaling each token by size * count / total makes the
        # head's plain mean the size-weighted mean (exact for the unmerged model: all sizes 1).
        self.weighted_pool = weighted_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = bias = None  # token sizes and their log (attention bias) once something is merged
        for block, r in zip(self.blocks, self.r):
            if size is None and r == 0:  # nothing merged yet: the unchanged timm block
                x = block(x)
                continue
            attended, metric = self._attention(block, block.norm1(x), bias)
            x = x + block.drop_path1(block.ls1(attended))
            if r > 0:
                indices = bipartite_merge(metric, r, self.protected)
                x, size = merge_weighted(x, torch.ones_like(x[..., :1]) if size is None else size,
                                         indices, self.protected)
                bias = size.log()[:, None, None, :, 0]  # proportional attention, until the next merge
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        if self.weighted_pool and size is not None:
            head, tokens, sizes = x[:, :self.protected], x[:, self.protected:], size[:, self.protected:]
            x = torch.cat([head, tokens * sizes * (tokens.shape[1] / sizes.sum(dim=1, keepdim=True))], dim=1)
        return x

    @staticmethod
    def _attention(block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        attn = block.attn
        batch, tokens, _ = x.shape
        qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, attn.attn_dim)
        out = attn.proj(attn.norm(out))
        return out, k.mean(1)


def token_schedule(tokens: int, depth: int, r: int, protected: int, start: int = 0) -> list[int]:
    """r per block from block `start` on, reduced where fewer than 2r mergeable tokens are left."""
    schedule = []
    for index in range(depth):
        merge = max(0, min(r, (tokens - protected) // 2)) if index >= start else 0
        schedule.append(merge)
        tokens -= merge
    return schedule


def apply_tome(model: nn.Module, r: int, start: int | None = None) -> dict[str, Any]:
    """Make a timm VisionTransformer merge r tokens per block from block `start` on (in place)."""
    from timm.models.vision_transformer import VisionTransformer

    if r < 0:
        raise InputError(f"--tome {r} is negative", "give tokens to merge per block, e.g. 8")
    if not isinstance(model, VisionTransformer) or isinstance(model.blocks, ToMeBlocks):
        raise InputError(f"token merging supports timm ViTs, not {type(model).__name__}: "
                         + _why_not(model), "use a timm ViT/DeiT (timm:NAME or its artifact)")
    if any(getattr(block.attn, "gate", None) is not None for block in model.blocks):
        raise InputError("gated attention blocks are not supported by token merging")
    pool = model.global_pool
    if pool not in ("token", "avg") or (pool == "token" and model.cls_token is None):
        raise InputError(f"token merging cannot serve global_pool={pool!r}: an attention-pool head would "
                         "need the merged tokens' sizes in its own attention", "merge ViTs that read a "
                         "class token or average their tokens")
    if pool == "avg" and not isinstance(model.norm, nn.Identity):
        raise InputError("token merging cannot weight an average taken after the final norm "
                         "(this model normalizes its tokens before pooling)",
                         "merge ViTs built with fc_norm (timm's default for global_pool='avg')")
    grid = model.patch_embed.grid_size
    protected = int(model.num_prefix_tokens)  # class, distillation and register tokens: never merged
    tokens = grid[0] * grid[1] + protected
    start = default_start(len(model.blocks)) if start is None else start
    if start < 0 or (start >= len(model.blocks) and r):
        raise InputError(f"--tome-from {start} is not a block of this model ({len(model.blocks)} blocks, "
                         "counted from 0)", f"give 0 to {len(model.blocks) - 1}")
    schedule = token_schedule(tokens, len(model.blocks), r, protected, start)
    model.blocks = ToMeBlocks(model.blocks, schedule, protected, weighted_pool=pool == "avg")
    return {"r": r, "start": start, "schedule": schedule, "tokens_in": tokens, "tokens_out": tokens - sum(schedule),
            "protected": protected}


def _why_not(model: nn.Module) -> str:
    """Why a timm family that is not a plain ViT cannot merge tokens."""
    name = type(model).__name__
    reasons = {"Eva": "its rotary position embeddings are computed per token position, which merged "
                      "tokens no longer have",
               "Beit": "its relative position bias is indexed by token pairs, which merging reorders",
               "SwinTransformer": "its attention runs in fixed windows of the token grid"}
    if name in reasons:
        return reasons[name]
    from vitedge.models.structure import transformer_structure

    layout = transformer_structure(model).token_layout
    return {"none": "it has no attention layers: there are no tokens to merge",
            "pyramid": "its tokens are feature maps of stages at shrinking resolution (a hierarchical "
                       "conv-attention model), not one flat sequence",
            "class-attention": "its class-attention blocks expect every patch token",
            "cross-scale": "its two token branches exchange class tokens across scales",
            }.get(str(layout), "it is not a transformer with a flat token sequence")
