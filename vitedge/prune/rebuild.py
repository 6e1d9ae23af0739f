"""Loading what `vitedge prune` wrote: the one place model loading reaches into pruning.

A pruned artifact records per-block shapes no constructor makes, and a merged one records its
token-merging schedule; `vitedge.models.load` builds the family's model and hands it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitedge.prune.layouts import FAMILIES

if TYPE_CHECKING:
    import torch
    from torch import nn


def is_pruned(source: dict[str, Any]) -> bool:
    """The card's source names per-block shapes of a family vitedge prunes."""
    return bool(source.get("pruned")) and source.get("kind") in FAMILIES


def restore(module: nn.Module, source: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None
            ) -> nn.Module:
    """`module` as the card's source records it: shrunk to the pruned shapes and loaded with
    `state_dict` (pruned artifacts), then merging tokens as recorded (token-merging artifacts)."""
    if is_pruned(source):
        from vitedge.prune.structured import rebuild

        assert state_dict is not None, "a pruned artifact is restored with its weights"
        module = rebuild(module, state_dict, source["pruned"])
    if source.get("tome"):
        from vitedge.prune.tome import apply_tome

        apply_tome(module, int(source["tome"]["r"]), int(source["tome"].get("start", 0)))
    return module
