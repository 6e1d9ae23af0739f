"""Knowledge distillation: train a pruned model to match the original's logits on unlabeled images.

Label-free (KL between the teacher's and student's softened outputs on the same augmented
batch; optionally plus a token-feature term: mean squared error between the two models' final
normalized tokens, through a learned linear map when pruning narrowed the embedding), with a
held-out slice of the images for early stopping on top-1 agreement (or on the KL, finer with
few images), optionally every block's tokens matched to the original's, and a
checkpoint written at every evaluation so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitedge.errors import InputError


@dataclass(frozen=True)
class DistillConfig:
    steps: int
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    temperature: float = 2.0
    eval_every: int = 50
    patience: int = 4  # evaluations without a better agreement before stopping
    augment: bool = True
    seed: int = 0
    features: float = 0.0  # weight of the token-feature MSE next to the logit KL (0: logits only)
    vectors: bool = False  # the model outputs features (no classifier head): match them, not logits
    blocks: float = 0.0  # weight of every block's output tokens matched to the original's (0: not matched)
    mixup: bool = False  # also blend pairs of images (a new input each step; the teacher labels it)
    criterion: str = "agreement"  # early stopping on held-out top-1 agreement, or "kl" (lower is better)


def augment(batch: torch.Tensor, generator: torch.Generator, mixup: bool = False) -> torch.Tensor:
    """Random shift (reflect-padded crop), horizontal flip and a little noise, on model inputs;
    with `mixup`, each image blended with another of the batch by a uniform random share."""
    n, _, h, w = batch.shape
    if mixup and n > 1:
        share = torch.rand(n, generator=generator)[:, None, None, None]
        partner = torch.randperm(n, generator=generator)
        batch = share * batch + (1 - share) * batch[partner]
    pad = max(1, h // 8)
    padded = nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out + 0.05 * torch.randn(out.shape, generator=generator)


def closeness(student: nn.Module, teacher_logits: torch.Tensor, images: torch.Tensor,
              vectors: bool = False) -> dict[str, float]:
    """Top-1 agreement with the teacher and the mean KL divergence from its softmax; for feature
    outputs, their mean cosine similarity as the agreement."""
    student.eval()
    device = teacher_logits.device
    with torch.inference_mode():
        predicted = torch.cat([student(images[i:i + 64].to(device)) for i in range(0, len(images), 64)])
    if vectors:
        return {"agreement": float(nn.functional.cosine_similarity(predicted, teacher_logits, dim=1).mean())}
    kl = nn.functional.kl_div(nn.functional.log_softmax(predicted, 1), nn.functional.log_softmax(teacher_logits, 1),
                              log_target=True, reduction="batchmean")
    return {"agreement": float((predicted.argmax(1) == teacher_logits.argmax(1)).float().mean()), "kl": float(kl)}


def _score(measured: dict[str, float], criterion: str) -> float:
    """Higher is closer: the agreement, or minus the KL."""
    return -measured["kl"] if criterion == "kl" and "kl" in measured else measured["agreement"]


class _Tokens:
    """The output of a model's final norm (its tokens, B x N x C), caught by a forward hook."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.value = output[0] if isinstance(output, tuple) else output  # Hugging Face layers: a tuple


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """A resume state written by `distill`, loaded as plain data (weights_only: no code runs).

    None when there is none; a file that is not one is refused, never run and never replaced.
    """
    import pickle
    import zipfile


    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        raise InputError(f"{path} is in the way of the distillation checkpoint (not a plain file)",
                         "move it away, or choose another -o")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path} is not a vitedge distillation checkpoint: it holds Python objects "
                         "that would run code when loaded", "vitedge never runs code from it; move it "
                         "away, or choose another -o") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a vitedge distillation checkpoint (unreadable: "
                         f"{type(exc).__name__})", "move it away, or choose another -o") from None
    required = {"key", "step", "student", "projection", "optimizer", "schedule", "generator", "best",
                "best_state", "stale", "history"}
    if not isinstance(saved, dict) or not required <= set(saved):
        raise InputError(f"{path} is not a vitedge distillation checkpoint (unexpected content)",
                         "move it away, or choose another -o")
    return saved


def distill(student: nn.Module, teacher: nn.Module, train: np.ndarray, holdout: np.ndarray,
            config: DistillConfig, *, checkpoint: Path | None = None, identity: dict[str, Any] | None = None,
            tick: Callable[[int, int, float | None], None] | None = None,
            feature_norms: tuple[nn.Module, nn.Module] | None = None,
            block_pairs: list[tuple[nn.Module, nn.Module]] | None = None) -> dict[str, Any]:
    """Train `student` in place; return the history. `identity` ties a checkpoint to its run.

    `feature_norms` (student's, teacher's final norm) are needed when `config.features` > 0;
    `block_pairs` (each block of the student with the teacher's same block, same width) when
    `config.blocks` > 0: every token of every block's output is matched, each block's squared
    error relative to the teacher's output energy there.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    teacher.eval()
    images = torch.from_numpy(train)
    held = torch.from_numpy(holdout)
    device = next(student.parameters()).device  # the images move there a batch at a time
    with torch.inference_mode():
        held_targets = torch.cat([teacher(held[i:i + 64].to(device)) for i in range(0, len(held), 64)])
    hooks: tuple[_Tokens, _Tokens] | None = None
    projection: nn.Module = nn.Identity()
    if config.features > 0:
        if feature_norms is None:
            raise ValueError("config.features > 0 needs feature_norms (student, teacher)")
        hooks = (_Tokens(feature_norms[0]), _Tokens(feature_norms[1]))
        widths = [int(norm.weight.shape[0]) for norm in feature_norms]
        if widths[0] != widths[1]:  # --embed narrowed the student: learn a map to the teacher's width
            projection = nn.Linear(widths[0], widths[1], bias=False, device=device)
    pairs: list[tuple[_Tokens, _Tokens]] = []
    if config.blocks > 0:
        if not block_pairs:
            raise ValueError("config.blocks > 0 needs block_pairs (student block, teacher block)")
        pairs = [(_Tokens(s), _Tokens(t)) for s, t in block_pairs]
    trained = list(student.parameters()) + list(projection.parameters())
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    # one-cycle warms up over the first 10 % of the steps; under 20 steps that is less than two steps,
    # which its phase arithmetic cannot take (it divided by zero), so a short run keeps the rate
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1) if config.steps >= 20 else \
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    key = hashlib.sha256(json.dumps({"config": asdict(config), **(identity or {})},
                                    sort_keys=True, default=str).encode()).hexdigest()
    start = 0
    measured = closeness(student, held_targets, held, config.vectors)
    best = _score(measured, config.criterion)
    history: dict[str, Any] = {"agreement_before": measured["agreement"], "kl_before": measured.get("kl"),
                               "criterion": config.criterion, "evaluations": [], "resumed_from": None}
    best_measured = measured
    best_state = {k: v.clone() for k, v in student.state_dict().items()}
    stale = 0
    saved = read_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None:
        if saved.get("key") == key:
            student.load_state_dict(saved["student"])
            projection.load_state_dict(saved["projection"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            generator.set_state(saved["generator"])
            start, best, best_state, stale = saved["step"], saved["best"], saved["best_state"], saved["stale"]
            best_measured = saved.get("best_measured", {"agreement": best})
            history = saved["history"]
            history["resumed_from"] = start
    temperature = config.temperature
    step = start
    for step in range(start, config.steps):
        student.train()
        index = torch.randint(0, len(images), (min(config.batch_size, len(images)),), generator=generator)
        batch = images[index]
        if config.augment:
            batch = augment(batch, generator, config.mixup)  # on the CPU, with the seeded generator
        batch = batch.to(device)
        with torch.no_grad():
            reference = teacher(batch)
        predicted = student(batch)
        if config.vectors:  # features: squared error relative to their spread, never a softmax
            loss = nn.functional.mse_loss(predicted, reference) / (reference.var() + 1e-8)
        else:
            loss = nn.functional.kl_div(nn.functional.log_softmax(predicted / temperature, dim=1),
                                        nn.functional.log_softmax(reference / temperature, dim=1),
                                        log_target=True, reduction="batchmean") * temperature ** 2
        if hooks is not None:
            student_tokens, teacher_tokens = hooks[0].value, hooks[1].value
            assert student_tokens is not None and teacher_tokens is not None
            loss = loss + config.features * nn.functional.mse_loss(projection(student_tokens), teacher_tokens)
        if pairs:
            matched = [nn.functional.mse_loss(s.value, t.value) / (t.value.pow(2).mean() + 1e-8)
                       for s, t in pairs if s.value is not None and t.value is not None]
            loss = loss + config.blocks * torch.stack(matched).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            measured = closeness(student, held_targets, held, config.vectors)
            current = _score(measured, config.criterion)
            history["evaluations"].append({"step": done, "loss": float(loss.detach()), **measured})
            if current > best:
                best, stale, best_measured = current, 0, measured
                best_state = {k: v.clone() for k, v in student.state_dict().items()}
            else:
                stale += 1
            if checkpoint is not None:
                partial = checkpoint.with_name(checkpoint.name + ".partial")
                try:
                    checkpoint.parent.mkdir(parents=True, exist_ok=True)  # the output's folder, as its writer makes it
                    torch.save({"key": key, "step": done, "student": student.state_dict(),
                                "projection": projection.state_dict(),
                                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                "generator": generator.get_state(), "best": best, "best_state": best_state,
                                "best_measured": best_measured,
                                "stale": stale, "history": history}, partial)
                    os.replace(partial, checkpoint)
                except (OSError, RuntimeError) as exc:  # torch reports a full or read-only disk as RuntimeError
                    partial.unlink(missing_ok=True)
                    reason = str(exc).split("strerror:")[-1].strip().splitlines()[0][:120]
                    raise InputError(f"the distillation checkpoint {checkpoint} could not be written ({reason})",
                                     "free some space or choose a writable output folder") from None
            if tick is not None:
                tick(done, config.steps, measured["agreement"])
            if stale >= config.patience:
                history["early_stop_at"] = done
                break
    for hook in [*(hooks or ()), *(h for pair in pairs for h in pair)]:
        hook.handle.remove()
    student.load_state_dict(best_state)
    student.eval()
    history.update({"agreement_after": best_measured["agreement"], "kl_after": best_measured.get("kl"), "steps_run": step + 1 - start + (start or 0),
                    "holdout_samples": len(holdout), "train_samples": len(train)})
    return history
