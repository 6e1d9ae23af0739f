"""`vitedge prune`: make a ViT do less work. This step: training-free token merging (ToMe).

The result is a torch artifact (model.safetensors + card) whose card records the merge schedule,
so loading it rebuilds the same model: export, quantize, compile and run take it like any other.
Structured pruning (heads, MLP width, embedding width) with distillation is not built yet.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.artifact import artifact_hash, check_output, write_card, writing_artifact
from vitedge.card import ModelCard
from vitedge.errors import InputError
from vitedge.models import LoadedModel
from vitedge.versions import tool_versions


def prune(loaded: LoadedModel, out: str | Path, *, tome: int, data: str | Path | None = None,
          samples: int = 200, overwrite: bool = False,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a token-merging artifact at `out`; with `data`, measure agreement with the original."""
    from safetensors.torch import save_file

    from vitedge.structure import count_macs
    from vitedge.tome import apply_tome

    say = progress or (lambda _message: None)
    check_output(Path(out), overwrite)
    original = loaded.torch_module("pruning")
    source = loaded.card.source
    if source.get("kind") != "timm":
        raise InputError(f"token merging needs a timm model; {loaded.card.architecture} comes from "
                         f"{source.get('kind')!r}", "load it as timm:NAME --weights CHECKPOINT")
    if source.get("tome"):
        raise InputError("this model already merges tokens", "prune its parent instead")
    merged = copy.deepcopy(original).eval()
    info = apply_tome(merged, tome)
    size = loaded.card.preprocessing.input_size
    macs_before, macs_after = loaded.card.macs or count_macs(original, size), count_macs(merged, size)
    metrics: dict[str, Any] = {"macs_before": macs_before, "macs_after": macs_after,
                               "mac_share": macs_after / macs_before if macs_before and macs_after else None,
                               "tome": info}
    if data is not None:
        metrics["agreement"] = _agreement(original, merged, loaded, data, samples, say)
    card = ModelCard.from_dict(loaded.card.to_dict())
    card.format = "torch"
    card.files = {}
    card.macs = macs_after
    card.metrics = {"prune": metrics}
    card.source = {**{k: v for k, v in source.items() if k not in ("onnx", "quantization", "bundle")},
                   "weights": "model.safetensors", "tome": {"r": tome}}
    card.lineage = [*loaded.card.lineage, {
        "step": "prune",
        "parent": {"artifact_hash": artifact_hash(loaded.card)} if loaded.card.files else source,
        "params": {"tome": tome}, "metrics": metrics,
        "tools": tool_versions("torch", "timm"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }]
    with writing_artifact(Path(out), overwrite=overwrite) as staging:
        # the weights are untouched by merging: save the plain model's, the card says how to merge
        save_file({k: v.contiguous() for k, v in original.state_dict().items()},
                  str(staging / "model.safetensors"))
        write_card(staging, card)
    return metrics


def _agreement(original: Any, merged: Any, loaded: LoadedModel, data: str | Path, samples: int,
               say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from vitedge.calibration import model_labels, open_data
    from vitedge.drift import compare, topk_accuracy

    dataset = open_data(data, loaded.card.preprocessing, samples=samples, role="prune --data")
    say(f"measuring agreement on {len(dataset)} samples")
    outputs: dict[str, list[np.ndarray]] = {"original": [], "merged": []}
    with torch.inference_mode():
        for batch in dataset.batches(16):
            tensor = torch.from_numpy(batch)
            outputs["original"].append(original(tensor).float().numpy())
            outputs["merged"].append(merged(tensor).float().numpy())
    before, after = (np.concatenate(v) for v in outputs.values())
    drift = compare(before, after)
    result = {"samples": len(before), "top1_agreement": drift.top1_agreement, "kl": drift.kl}
    labels = model_labels(loaded.card, dataset)
    if labels is not None:
        result["top1_before"] = topk_accuracy(before, labels)
        result["top1_after"] = topk_accuracy(after, labels)
    return result
