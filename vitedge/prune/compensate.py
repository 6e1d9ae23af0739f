"""Compensated structured pruning: remove MLP units and attention heads chosen from calibration
statistics, and fold what they did into the layer that reads them, in closed form. No labels.

What a block's removed units wrote is modelled as an affine function of the units it keeps,
fitted by ridge regression on the calibration images' tokens (CORP, arXiv 2602.05243):

    h_P ~ B h_S + c,   B = S_PS (S_SS + lambda I)^-1,   c = mu_P - B mu_S

(S the centered covariance of the layer's inputs, mu their mean), then folded into the reader:
fc2 for MLP units (`W_S += W_P B`, `b += W_P c`), the output projection for heads (a head's
channels are one group). Which units go is chosen by the error they leave *after* compensation
(the Optimal-Brain-Surgeon saliency: a unit's output weight energy times its variance given the
kept units, ``|w_j|^2 / (S^-1)_jj``; for a head, ``tr(W_g ((S^-1)_gg)^-1 W_g^T)``), removed one
at a time with the kept units' weights updated and the inverse downdated in between, so that a
unit another unit can stand in for goes first and that other unit then stays. The ridge
strength is chosen per layer on held-out tokens (half the images fit, the other half judge),
then the final fit uses all of them.

Blocks are pruned in order and each one's statistics are collected on the model as pruned so
far (the inputs to block i come out of the already-pruned blocks 0..i-1), heads before the MLP
of the same block; then each reader is refitted toward the unpruned model's block output (with
`teacher`), which also takes up the drift the earlier blocks left. The widths to reach per block
come from the caller (`prune_model`'s rounding, allocation and MAC search), so the shapes, the
card and `rebuild` are the same as for plain pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitedge.errors import InputError
from vitedge.prune.layouts import Layout, checked_layout, layout_of, structure_of
from vitedge.prune.plan import PruneRatios
from vitedge.prune.structured import _set_attributes, set_heads

RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # lambda as a share of the mean variance, tried per layer
SELECTION_RIDGE = 1e-4  # lambda while ranking: small, so a unit another one copies ranks as free


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what it needed was captured."""


@dataclass
class Moments:
    """Running first and second moments of a layer's input channels, over tokens, for two halves
    of the images (fit on one, judge the ridge on the other)."""

    count: list[int]
    total: list[torch.Tensor]
    outer: list[torch.Tensor]

    @classmethod
    def empty(cls, width: int, device: torch.device) -> Moments:
        zeros = [torch.zeros(width, dtype=torch.float64, device=device) for _ in range(2)]
        return cls([0, 0], zeros, [torch.zeros(width, width, dtype=torch.float64, device=device) for _ in range(2)])

    def add(self, half: int, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        self.count[half] += x.shape[0]
        self.total[half] += x.sum(0)
        self.outer[half] += x.T @ x

    def first(self, width: int) -> Moments:
        """The moments of the first `width` channels."""
        return Moments(list(self.count), [t[:width] for t in self.total], [o[:width, :width] for o in self.outer])

    def raw(self, halves: Sequence[int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, E[x x^T]) over the given halves."""
        n = sum(self.count[h] for h in halves)
        return sum(self.total[h] for h in halves) / n, sum(self.outer[h] for h in halves) / n

    def covariance(self, halves: Sequence[int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        mean, second = self.raw(halves)
        return mean, second - torch.outer(mean, mean)

    def augmented(self, halves: Sequence[int] = (0, 1)) -> torch.Tensor:
        """E[z z^T] for z = [x, 1]: the raw moments with a constant channel last (affine maps)."""
        mean, second = self.raw(halves)
        n = second.shape[0]
        moments = torch.empty(n + 1, n + 1, dtype=second.dtype, device=second.device)
        moments[:n, :n], moments[:n, n], moments[n, :n], moments[n, n] = second, mean, mean, 1.0
        return moments


def affine_fit(cov: torch.Tensor, mean: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
               ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, c) with h_removed ~ B h_kept + c, by ridge regression on the covariance."""
    s_kk = cov[kept][:, kept]
    scale = float(torch.diagonal(s_kk).mean()) if len(kept) else 0.0
    regularized = s_kk + ridge * max(scale, 1e-12) * torch.eye(len(kept), dtype=cov.dtype, device=cov.device)
    b = torch.linalg.solve(regularized, cov[kept][:, removed]).T  # (removed, kept); S_kk symmetric
    return b, mean[removed] - b @ mean[kept]


def residual_error(weight: torch.Tensor, moments: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
                   b: torch.Tensor | None, c: torch.Tensor | None) -> float:
    """E |W_P (h_P - B h_S - c)|^2 over tokens with `Moments.augmented` moments; without B, c
    (no compensation) E |W_P h_P|^2 — what the removed units' output loses."""
    n = moments.shape[0] - 1
    transform = torch.zeros(len(removed), n + 1, dtype=moments.dtype, device=moments.device)
    transform[torch.arange(len(removed)), removed] = 1.0
    if b is not None and c is not None:
        transform[:, kept] = -b
        transform[:, n] = -c
    projected = weight[:, removed].to(moments.dtype) @ transform
    return float(torch.einsum("ij,jk,ik->", projected, moments, projected))


def choose_groups(weight: torch.Tensor, cov: torch.Tensor, groups: list[torch.Tensor], drop: int,
                  ridge: float = SELECTION_RIDGE) -> list[int]:
    """Which of `groups` (channel index sets of equal size) to remove, `drop` of them, one at a
    time: each time the one whose removal leaves the least error once the kept channels stand in
    for it (Optimal Brain Surgeon on the reader's input covariance), then the kept weights take
    its share and the inverse covariance loses its rows (a downdate, not a new inverse), so a
    unit whose twin just went is no longer free."""
    weight = weight.to(cov.dtype).clone()
    scale = float(torch.diagonal(cov).mean())
    inverse = torch.linalg.inv(cov + ridge * max(scale, 1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype,
                                                                          device=cov.device))
    left = list(range(len(groups)))
    single = all(len(g) == 1 for g in groups)
    removed: list[int] = []
    for _ in range(drop):
        if single:
            channels = torch.cat([groups[g] for g in left])
            saliency = ((weight[:, channels] ** 2).sum(0) / torch.diagonal(inverse)[channels]).tolist()
        else:
            saliency = [float(torch.trace(weight[:, groups[g]] @ torch.linalg.solve(
                inverse[groups[g]][:, groups[g]], weight[:, groups[g]].T))) for g in left]
        pick = left[min(range(len(left)), key=lambda i: saliency[i])]
        idx = groups[pick]
        # the kept channels take its share (W -= W_g inv_gg^-1 inv_g:) and it leaves the inverse
        # (inv -= inv_:g inv_gg^-1 inv_g:); its own rows and columns become zero in both
        row = torch.linalg.solve(inverse[idx][:, idx], inverse[idx])
        weight -= weight[:, idx] @ row
        inverse -= inverse[:, idx] @ row
        removed.append(pick)
        left.remove(pick)
    return removed


def fold(weight: torch.Tensor, bias: torch.Tensor | None, moments: Moments, kept: torch.Tensor,
         removed: torch.Tensor, *, compensate: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The reader's new weight (kept columns) and bias, the ridge chosen on held-out tokens, and
    the relative output error left with and without compensation (on all tokens)."""
    w = weight.detach().to(torch.float64)
    bias64 = bias.detach().to(torch.float64) if bias is not None else torch.zeros(len(w), dtype=w.dtype,
                                                                                   device=w.device)
    every, judge = moments.augmented(), moments.augmented((1,))
    n = every.shape[0] - 1

    def energy(m: torch.Tensor) -> float:  # E |W h|^2: the layer's output without its bias
        return float(torch.einsum("ij,jk,ik->", w, m[:n, :n], w)) or 1.0

    info: dict[str, Any] = {"error_uncompensated": residual_error(w, every, kept, removed, None, None) / energy(every)}
    if not compensate or not len(removed):
        info["error"] = info["error_uncompensated"]
        return w[:, kept].to(weight.dtype), bias64.to(weight.dtype), info
    fit_mean, fit_cov = moments.covariance((0,))
    trials = {ridge: residual_error(w, judge, kept, removed, *affine_fit(fit_cov, fit_mean, kept, removed, ridge))
              for ridge in RIDGES}
    ridge = min(trials, key=lambda r: trials[r])
    all_mean, all_cov = moments.covariance()
    b, c = affine_fit(all_cov, all_mean, kept, removed, ridge)
    info.update(ridge=ridge, error=residual_error(w, every, kept, removed, b, c) / energy(every),
                error_held_out=trials[ridge] / energy(judge))
    new_weight = w[:, kept] + w[:, removed] @ b
    new_bias = bias64 + w[:, removed] @ c
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype), info


def correct(weight: torch.Tensor, bias: torch.Tensor, joint: Moments, kept: torch.Tensor, width: int
            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Refit the reader's kept columns toward the teacher: `joint` holds moments of [h, t] (h the
    reader's full input, `width` channels; t what its output should be for the block to give the
    unpruned model's output). The compensated weights are the prior; a ridge-shrunk correction
    on top, its strength (or none) chosen on the held-out half."""
    k, total = len(kept), joint.outer[0].shape[0]
    targets = torch.arange(width, total, device=kept.device)
    inputs = torch.cat([kept, torch.tensor([total], device=kept.device)])  # [h_S, 1] in `augmented`
    w0 = torch.cat([weight.to(torch.float64), bias.to(torch.float64)[:, None]], 1)  # (out, k+1)

    def blocks(halves: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        moments = joint.augmented(halves)
        return (moments[inputs][:, inputs], moments[inputs][:, targets],
                torch.trace(moments[targets][:, targets]))

    def error(w: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
        m_uu, m_ut, tt = moments
        return float(tt - 2 * torch.trace(w @ m_ut) + torch.einsum("ij,jk,ik->", w, m_uu, w))

    def solve(moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ridge: float) -> torch.Tensor:
        m_uu, m_ut, _ = moments
        penalty = torch.diagonal(m_uu)[:k].mean() * ridge * torch.ones(k + 1, dtype=m_uu.dtype, device=m_uu.device)
        penalty[k] = 0.0
        delta = torch.linalg.solve(m_uu + torch.diag(penalty), m_ut - m_uu @ w0.T)
        return w0 + delta.T

    fit, judge = blocks((0,)), blocks((1,))
    trials = {None: error(w0, judge)} | {ridge: error(solve(fit, ridge), judge) for ridge in RIDGES + (1.0, 3.0)}
    ridge = min(trials, key=lambda r: trials[r] if trials[r] == trials[r] else float("inf"))
    both = blocks((0, 1))
    w = w0 if ridge is None else solve(both, ridge)
    before, after = error(w0, both), error(w, both)
    scale = float(both[2]) or 1.0
    return (w[:, :k].to(weight.dtype), w[:, k].to(weight.dtype),
            {"correction_ridge": ridge, "teacher_error_before": before / scale, "teacher_error": after / scale})


# ------------------------------------------------------------------------------- the model
def _block_of(model: nn.Module, attention: nn.Module, fc1: nn.Module) -> nn.Module:
    """The module holding one block's attention and MLP (the deepest common ancestor)."""
    names = {id(m): n for n, m in model.named_modules()}
    a, b = names[id(attention)].split("."), names[id(fc1)].split(".")
    common = []
    for x, y in zip(a, b):
        if x != y:
            break
        common.append(x)
    return model.get_submodule(".".join(common))


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in order (each holding one attention and one MLP)."""
    layout = layout_of(model)
    return [_block_of(model, a, f) for a, f in zip(layout.attentions, layout.fc1)]


def _readers(layout: Layout) -> tuple[list[nn.Linear | None], list[nn.Linear]]:
    """Per block: the attention's output projection (None where heads cannot go) and fc2."""
    count = len(layout.attentions)
    writers = layout.writers
    projections = [w if isinstance(w, nn.Linear) and layout.qkv[i] else None for i, w in enumerate(writers[:count])]
    return projections, list(writers[count:2 * count])


def _check_compensable(model: nn.Module, layout: Layout) -> None:
    for block, fc1 in enumerate(layout.fc1):
        mlp = _parent(model, fc1)
        norm = getattr(mlp, "norm", None)
        if norm is not None and not isinstance(norm, nn.Identity):
            raise InputError(f"block {block}'s MLP normalizes its hidden units before fc2, so removed units "
                             "cannot be folded into fc2", "use --method plain")
    for block, attention in enumerate(layout.attentions):
        norm = getattr(attention, "norm", None)
        if layout.qkv[block] and norm is not None and not isinstance(norm, nn.Identity):
            raise InputError(f"block {block}'s attention normalizes the heads' output before its projection, "
                             "so removed heads cannot be folded into it", "use --method plain")


def _parent(model: nn.Module, child: nn.Module) -> nn.Module:
    for module in model.modules():
        if any(c is child for c in module.children()):
            return module
    raise AssertionError("a layer outside its model")


def _shrink(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
            weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
    """Keep `rows` (outputs) / `cols` (inputs) of `linear`, or set the given weight and bias."""
    with torch.no_grad():
        new_weight = weight if weight is not None else linear.weight.detach()
        new_bias = bias if bias is not None else (linear.bias.detach() if linear.bias is not None else None)
        if weight is None and cols is not None:
            new_weight = new_weight[:, cols]
        if rows is not None:
            new_weight = new_weight[rows]
            new_bias = new_bias[rows] if new_bias is not None else None
        linear.weight = nn.Parameter(new_weight.contiguous().clone())
        if new_bias is not None:
            linear.bias = nn.Parameter(new_bias.contiguous().clone())
        linear.out_features, linear.in_features = new_weight.shape


def _head_rows(layout: Layout, block: int, heads: list[int], head_dim: int,
               total: int) -> list[tuple[nn.Linear, torch.Tensor]]:
    """(layer, rows to keep) for the q/k/v layers of `block` when `heads` stay."""
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
    qkv = layout.qkv[block]
    if len(qkv) == 1:  # timm: one Linear, q then k then v
        width = total * head_dim
        return [(qkv[0], torch.cat([rows, rows + width, rows + 2 * width]))]
    return [(layer, rows) for layer in qkv]


def compensated_prune(model: nn.Module, target: dict[str, Any], images: torch.Tensor, *,
                      batch_size: int | None = None, compensate: bool = True, teacher: nn.Module | None = None,
                      say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prune `model` in place to the per-block widths of `target` (`structure_of`'s form: heads and
    MLP units per block; the embedding width must not change), with compensation. Returns the
    structure before and after and, per block, what was removed and the errors left."""
    say = say or (lambda _m: None)
    model.eval()
    layout = layout_of(model)
    _check_compensable(model, layout)
    before = structure_of(model)
    if target["embed_dim"] != before["embed_dim"]:
        raise InputError("compensated pruning keeps the embedding width", "use --method plain with --embed")
    device = next(model.parameters()).device
    projections, fc2s = _readers(layout)
    blocks = blocks_of(model)
    batch_size = batch_size or max(1, min(32, len(images) // 4))  # at least 2 batches per half
    inputs = _block_inputs(model, blocks[0], images, batch_size, device)
    teacher_inputs = teacher_blocks = None
    if teacher is not None:  # the unpruned model's block outputs: what each pruned block is refitted toward
        teacher.eval()
        teacher_blocks = blocks_of(teacher)
        teacher_inputs = _block_inputs(teacher, teacher_blocks[0], images, batch_size, device)
    report = []
    for index, block in enumerate(blocks):
        teacher_outputs = _advance(teacher_blocks[index], teacher_inputs) if teacher_blocks is not None else None
        entry: dict[str, Any] = {"block": index}
        heads_now, heads_goal = before["num_heads"][index], target["num_heads"][index]
        if heads_goal < heads_now:
            projection = projections[index]
            if projection is None:
                raise InputError(f"block {index}'s heads cannot be removed in this family", "use --mlp")
            head_dim = before["head_dim"][index]
            moments = _collect(block, projection, inputs, device)
            _mean, cov = moments.covariance()
            groups = [torch.arange(h * head_dim, (h + 1) * head_dim, device=device) for h in range(heads_now)]
            gone = sorted(choose_groups(projection.weight.detach(), cov, groups, heads_now - heads_goal))
            stay = [h for h in range(heads_now) if h not in gone]
            kept_channels = torch.cat([groups[h] for h in stay])
            removed_channels = torch.cat([groups[h] for h in gone])
            weight, bias, info = fold(projection.weight, projection.bias, moments, kept_channels,
                                      removed_channels, compensate=compensate)
            _shrink(projection, weight=weight, bias=bias)
            for layer, rows in _head_rows(layout, index, stay, head_dim, heads_now):
                _shrink(layer, rows=rows.to(device))
            set_heads(layout, layout.attentions[index], len(stay), head_dim)
            entry["heads"] = {"removed": gone, **info}
        units_now, units_goal = before["mlp_hidden"][index], target["mlp_hidden"][index]
        if units_goal < units_now:
            fc2, fc1 = fc2s[index], layout.fc1[index]
            if teacher_outputs is not None:
                joint = _collect(block, fc2, inputs, device, teacher_outputs, _scale(block, "ls2"))
                moments = joint.first(units_now)
            else:
                moments = _collect(block, fc2, inputs, device)
            _mean, cov = moments.covariance()
            groups = [torch.tensor([j], device=device) for j in range(units_now)]
            gone = sorted(choose_groups(fc2.weight.detach(), cov, groups, units_now - units_goal))
            keep = torch.tensor([j for j in range(units_now) if j not in set(gone)], device=device)
            weight, bias, info = fold(fc2.weight, fc2.bias, moments, keep, torch.tensor(gone, device=device),
                                      compensate=compensate)
            if teacher_outputs is not None and compensate:
                weight, bias, corrected = correct(weight, bias, joint, keep, units_now)
                info.update(corrected)
            _shrink(fc2, weight=weight, bias=bias)
            _shrink(fc1, rows=keep)
            entry["mlp"] = {"removed": len(gone), **info}
        report.append(entry)
        if index + 1 < len(blocks):
            inputs = _advance(block, inputs)
            teacher_inputs = teacher_outputs
        parts = [f"{k} error {100 * v['error']:.1f}% (uncompensated {100 * v['error_uncompensated']:.1f}%)"
                 for k, v in entry.items() if isinstance(v, dict)]
        if parts:
            say(f"block {index}: " + ", ".join(parts))
    after = structure_of(model)
    _set_attributes(model, layout, after["num_heads"], after["head_dim"], after["embed_dim"])
    return {"before": before, "after": after, "blocks": report}


def _block_inputs(model: nn.Module, first: nn.Module, images: torch.Tensor, batch_size: int,
                  device: torch.device) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """What the first block is called with, per batch (the model run only up to it)."""
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                try:
                    model(images[start:start + batch_size].to(device))
                except _Stop:
                    pass
    finally:
        handle.remove()
    return captured


def _run(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """A block's output tokens (Hugging Face layers may return a tuple)."""
    result = block(*args, **kwargs)
    return result[0] if isinstance(result, tuple) else result


def _scale(block: nn.Module, name: str) -> torch.Tensor | float:
    """A residual branch's layer scale (timm `ls1`/`ls2`), or 1."""
    gamma = getattr(getattr(block, name, None), "gamma", None)
    return gamma.detach() if isinstance(gamma, torch.Tensor) else 1.0


def _collect(block: nn.Module, layer: nn.Module, inputs: list, device: torch.device,
             teacher_outputs: list | None = None, scale: torch.Tensor | float = 1.0) -> Moments:
    """Moments of `layer`'s input over every token of every batch run through `block` (batches
    alternate between the two halves). With `teacher_outputs`, of [layer input, layer output +
    (teacher's block output - this block's) / scale]: also what the layer's output would have to
    be for the block to match the teacher."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        seen["in"], seen["out"] = args[0].detach(), output.detach()

    handle = layer.register_forward_hook(hook)
    moments: Moments | None = None
    try:
        with torch.inference_mode():
            for i, (args, kwargs) in enumerate(inputs):
                result = _run(block, args, kwargs)
                sample = seen["in"]
                if teacher_outputs is not None:
                    target = seen["out"] + (teacher_outputs[i][0][0] - result) / scale
                    sample = torch.cat([sample, target], -1)
                if moments is None:
                    moments = Moments.empty(sample.shape[-1], device)
                moments.add(i % 2, sample)
    finally:
        handle.remove()
    if moments is None or min(moments.count) == 0:
        raise InputError("compensated pruning needs at least 2 batches of images", "pass more images with --data")
    return moments


def _advance(block: nn.Module, inputs: list) -> list:
    """The next block's inputs: this (pruned) block's outputs."""
    with torch.inference_mode():
        return [((_run(block, args, kwargs), *args[1:]), kwargs) for args, kwargs in inputs]


def check_method(model: nn.Module, ratios: PruneRatios) -> None:
    """Refuse, before any work, what compensated pruning cannot do to this model."""
    layout = checked_layout(model, ratios)
    if ratios.embed > 0:
        raise InputError("compensated pruning keeps the embedding width (--embed)",
                         "drop --embed, or use --method plain")
    _check_compensable(model, layout)
