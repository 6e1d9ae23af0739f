"""`vitedge prune`: make a ViT do less work — fewer heads, narrower MLPs/embedding, fewer tokens.

Structured pruning (Torch-Pruning, see structured.py) removes whole heads, MLP units and
embedding channels of timm, torchvision and Hugging Face ViTs; a short label-free distillation
from the original (distill.py) recovers agreement; token merging (tome.py, timm only) can be
added on top, training-free. The result is a torch artifact whose card records the pruned shapes
and the merge schedule, so loading it rebuilds the same model, and export, quantize, compile and
run take it like any other.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.artifact import artifact_hash, write_card
from vitedge.card import ModelCard
from vitedge.errors import InputError
from vitedge.models.loaded import LoadedModel
from vitedge.outputs import releasing
from vitedge.prune.structured import FAMILIES, PruneRatios
from vitedge.versions import tool_versions


@releasing
def prune(loaded: LoadedModel, out: str | Path, *, ratios: PruneRatios | None = None,
          target_macs: float | None = None, importance: str | None = None,
          data: str | Path | None = None, distill_steps: int = 0, tome: int = 0,
          tome_from: int | None = None,
          round_to: int = 8, allocation: str = "uniform", samples: int | None = None,
          batch_size: int = 32, lr: float = 5e-4, distill_features: float = 0.0,
          overwrite: bool = False, progress: Callable[[str], None] | None = None,
          tick: Callable[[int, int, float | None], None] | None = None) -> dict[str, Any]:
    """Prune, distill and/or merge tokens; write the artifact at `out`; return its metrics."""
    import torch

    from vitedge.models.structure import count_macs
    from vitedge.prune.structured import check_prunable, prune_model

    say = progress or (lambda _message: None)
    ratios = ratios or PruneRatios()
    ratios.check()
    structured = any((ratios.heads, ratios.mlp, ratios.embed)) or target_macs is not None
    if target_macs is not None and not 0.0 < target_macs < 1.0:
        raise InputError(f"--target-macs {target_macs} is outside (0, 1)",
                         "give the share of MACs to keep, e.g. 0.6")
    if not structured and not tome:
        raise InputError("nothing to prune: no --heads/--mlp/--embed/--target-macs and no --tome",
                         "e.g. --heads 0.25 --mlp 0.25, or --target-macs 0.6, or --tome 8")
    if distill_steps and data is None:
        raise InputError("--distill-steps needs --data: distillation trains the pruned model to match "
                         "the original on unlabeled images", "pass --data with a folder of images")
    if distill_steps < 0 or round_to < 1:
        raise InputError("--distill-steps must be >= 0 and --round-to >= 1")
    if distill_features < 0 or (distill_features and not distill_steps):
        raise InputError(f"--distill-features {distill_features} needs to be >= 0 and comes with --distill-steps",
                         "e.g. --distill-steps 1000 --distill-features 1.0")
    importance = importance or ("taylor" if data is not None else "l2")
    if importance == "taylor" and data is None and structured:
        raise InputError("--importance taylor needs --data (gradients on images)",
                         "pass --data DIR, or --importance l2")
    from vitedge.outputs import OutputKind, check_output, input_paths, writing

    inputs = [*loaded.origin, *input_paths(data)]
    out = check_output(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs)
    checkpoint = Path(str(out) + ".distill.pt")
    if distill_steps:
        from vitedge.prune.distill import read_checkpoint

        read_checkpoint(checkpoint)  # a file in the way is refused before any work
    source = loaded.card.source
    kind = source.get("kind")
    if kind not in FAMILIES or source.get("pruned") or source.get("tome"):
        pruned = " and is already pruned" if source.get("pruned") or source.get("tome") else ""
        raise InputError(f"vitedge prunes timm, torchvision and Hugging Face ViTs that are not pruned yet; "
                         f"{loaded.card.architecture} comes from {kind!r}{pruned}",
                         "load it as timm:NAME -w CKPT, torchvision:NAME -w CKPT, a Hugging Face folder "
                         "or builtin:digits-vit")
    if tome and kind != "timm":
        raise InputError(f"--tome (token merging) supports timm ViTs; {loaded.card.architecture} comes "
                         f"from {kind!r}", "drop --tome, or load the model with timm")
    teacher = loaded.torch_module("pruning").eval()
    if structured:  # refuse what this family cannot do before any work
        check_prunable(teacher, ratios)
    size = loaded.card.preprocessing.input_size
    macs_before = count_macs(teacher, size)
    train = holdout = labels = None
    features = loaded.card.num_classes is None  # no classifier head: outputs compared as vectors
    if data is not None:
        train, holdout, labels = _split(loaded, data, samples)
        labels = None if features else labels
    student = copy.deepcopy(teacher)
    metrics: dict[str, Any] = {"macs_before": macs_before, "params_before": _params(teacher)}
    if structured:
        if target_macs is not None:
            ratios = _search_ratios(teacher, target_macs, macs_before, size, round_to, say,
                                    heads=kind != "torchvision")
        say(f"pruning heads {ratios.heads:.0%}, MLP {ratios.mlp:.0%}, embedding {ratios.embed:.0%} "
            f"({importance} importance)")
        batches = [torch.from_numpy(train[i:i + 16]) for i in range(0, min(len(train), 128), 16)] \
            if train is not None else []
        shapes = prune_model(student, ratios, importance=importance, batches=batches, teacher=teacher,
                             round_to=round_to, allocation=allocation)
        metrics.update({"ratios": {"heads": ratios.heads, "mlp": ratios.mlp, "embed": ratios.embed},
                        "importance": importance, "round_to": round_to, "allocation": allocation,
                        "structure": shapes})
        if holdout is not None:
            metrics["before_distill"] = _measure(teacher, student, holdout, labels, features)
        if distill_steps:
            from vitedge.prune.distill import DistillConfig, distill
            from vitedge.prune.structured import final_norm

            say(f"distilling {distill_steps} steps on {len(train)} images "
                f"({len(holdout)} held out for early stopping)")
            history = distill(student, teacher, train, holdout,
                              DistillConfig(steps=distill_steps, batch_size=batch_size, lr=lr, vectors=features,
                                            features=distill_features),
                              feature_norms=(final_norm(student), final_norm(teacher)) if distill_features else None,
                              checkpoint=checkpoint, tick=tick,
                              identity={"structure": shapes["after"], "data": str(data),
                                        "parent": artifact_hash(loaded.card) if loaded.card.files else source})
            metrics["distill"] = history
            metrics["after_distill"] = _measure(teacher, student, holdout, labels, features)
    plain_state = {k: v.contiguous() for k, v in student.state_dict().items()}
    if tome:
        from vitedge.prune.tome import apply_tome

        metrics["tome"] = apply_tome(student, tome, tome_from)
        if holdout is not None:
            metrics["final"] = _measure(teacher, student, holdout, labels, features)
    metrics["macs_after"] = count_macs(student, size)
    metrics["params_after"] = _params(student)
    metrics["mac_share"] = metrics["macs_after"] / macs_before if macs_before else None
    card = _card(loaded, student, metrics, structured, tome)
    from safetensors.torch import save_file

    with writing(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs) as staging:
        save_file(plain_state, str(staging / "model.safetensors"))
        write_card(staging, card)
    if distill_steps:
        checkpoint.unlink(missing_ok=True)  # finished: no resume needed
    return metrics


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _split(loaded: LoadedModel, data: str | Path, samples: int | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Training images and a held-out slice (20%, at most 200) for agreement and early stopping."""
    from vitedge.data import model_labels, open_data

    dataset = open_data(data, loaded.card.preprocessing, samples=samples, role="prune --data")
    arrays = np.concatenate(list(dataset.batches(64)))
    labels = model_labels(loaded.card, dataset)
    order = np.random.default_rng(0).permutation(len(arrays))
    held = min(200, max(10, len(arrays) // 5))
    return (arrays[order[held:]], arrays[order[:held]],
            labels[order[:held]] if labels is not None else None)


def _measure(teacher: Any, student: Any, images: np.ndarray, labels: np.ndarray | None,
             features: bool = False) -> dict[str, Any]:
    """Agreement (and top-1) with the original; for feature outputs, cosine and relative error."""
    import torch

    from vitedge.drift import compare, topk_accuracy

    student.eval()
    with torch.inference_mode():
        tensor = torch.from_numpy(images)
        reference = torch.cat([teacher(tensor[i:i + 64]) for i in range(0, len(tensor), 64)]).numpy()
        pruned = torch.cat([student(tensor[i:i + 64]) for i in range(0, len(tensor), 64)]).numpy()
    drift = compare(reference, pruned, features=features)
    result = {"samples": len(images), "top1_agreement": drift.top1_agreement, "kl": drift.kl,
              "cosine": drift.cosine, "rel_error": drift.rel_error, "features": features}
    if labels is not None:
        result["top1_original"] = topk_accuracy(reference, labels)
        result["top1_pruned"] = topk_accuracy(pruned, labels)
    return result


def _search_ratios(teacher: Any, target: float, macs_before: int, size: tuple[int, int],
                   round_to: int, say: Callable[[str], None], *, heads: bool = True) -> PruneRatios:
    """The smallest equal heads/MLP ratio whose pruned model keeps at most `target` of the MACs.

    Without `heads` (torchvision, whose heads cannot be removed) only the MLP ratio is searched.
    """
    from vitedge.models.structure import count_macs
    from vitedge.prune.structured import prune_model

    what = "heads and MLP" if heads else "MLP"
    low, high, best = 0.0, 0.95, None
    for _ in range(8):
        middle = (low + high) / 2
        trial = copy.deepcopy(teacher)
        prune_model(trial, PruneRatios(heads=middle if heads else 0.0, mlp=middle), importance="l2",
                    round_to=round_to, strict=False)
        share = count_macs(trial, size) / macs_before
        if share <= target:
            best, high = middle, middle
        else:
            low = middle
    if best is None:
        raise InputError(f"--target-macs {target} cannot be reached by pruning {what} units",
                         "raise --target-macs, or add --embed" + (" / --tome" if heads else ""))
    say(f"--target-macs {target}: {what} ratio {best:.2f}")
    return PruneRatios(heads=best if heads else 0.0, mlp=best)


def _card(loaded: LoadedModel, student: Any, metrics: dict[str, Any], structured: bool, tome: int) -> ModelCard:
    card = ModelCard.from_dict(loaded.card.to_dict())
    card.format = "torch"
    card.files = {}
    card.macs = metrics["macs_after"]
    card.params = metrics["params_after"]
    card.metrics = {"prune": metrics}
    source = {k: v for k, v in loaded.card.source.items() if k not in ("onnx", "quantization", "bundle")}
    source["weights"] = "model.safetensors"
    if structured:
        shapes = metrics["structure"]["after"]
        source["pruned"] = shapes
        card.structure = type(card.structure).from_dict({
            **card.structure.to_dict(), "embed_dim": shapes["embed_dim"],
            "num_heads": max(shapes["num_heads"]), "mlp_hidden": max(shapes["mlp_hidden"])})
        if source.get("kind") == "huggingface":  # rebuilt from the card, without the original folder
            from vitedge.models.hf import pruned_source

            source.update(pruned_source(student))
    if tome:
        source["tome"] = {"r": tome, "start": metrics["tome"]["start"]}
    card.source = source
    family_tools = {"torchvision": ("torchvision",), "huggingface": ("transformers",)}.get(
        str(source.get("kind")), ())
    card.lineage = [*loaded.card.lineage, {
        "step": "prune",
        "parent": {"artifact_hash": artifact_hash(loaded.card)} if loaded.card.files else loaded.card.source,
        "params": {k: metrics[k] for k in ("ratios", "importance", "round_to", "allocation") if k in metrics}
        | ({"tome": tome} if tome else {}),
        "metrics": {k: v for k, v in metrics.items() if k not in ("structure",)},
        "tools": tool_versions("torch", "timm", "torch-pruning", *family_tools),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }]
    return card
