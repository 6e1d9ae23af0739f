"""How to read a model source: one `SourceOptions` for every step (and command) that takes one.

The command line's shared source options (--weights, --model-kwargs, --trust-pickle, the
preprocessing overrides and --labels) are parsed here, once, from their text; library users build
`SourceOptions(...)` directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitedge.card import read_labels_file
from vitedge.errors import InputError

ARCHITECTURE_PREFIXES = ("timm:", "torchvision:")


def names_architecture(source: str | Path) -> bool:
    """timm:NAME and torchvision:NAME are built from code: weights and kwargs apply to them."""
    return str(source).startswith(ARCHITECTURE_PREFIXES)


def check_model_kwargs(kwargs: Mapping[str, Any]) -> None:
    from vitedge.schemas.base import FORBIDDEN_KWARGS

    bad = sorted(set(kwargs) & FORBIDDEN_KWARGS)
    if bad:
        raise InputError(f"model kwarg(s) {', '.join(bad)} would make the builder read a file or "
                         "the network", "give the checkpoint with --weights; vitedge never downloads")


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """`key=value` strings -> kwargs; values are JSON when they parse (32, 0.1, true, [1,2])."""
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"model kwarg {item!r} is not key=value",
                             "write e.g. --model-kwargs img_size=32")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    check_model_kwargs(kwargs)
    return kwargs


def _numbers(text: str | None, what: str, count: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"--{what} {text!r} is not {count} comma-separated numbers",
                         f"write e.g. --{what} " + ",".join(["0.5"] * count))
    return values


@dataclass(frozen=True)
class SourceOptions:
    """What `vitedge.models.load` needs besides the source itself."""

    weights: Path | None = None  # checkpoint for timm:/torchvision: sources
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # architecture overrides
    trust_pickle: bool = False  # allow what PyTorch loads with pickle (can run code)
    preprocessing: Mapping[str, Any] | None = None  # card fields to override (mean, std, ...)
    labels: tuple[str, ...] | None = None  # class names, in output order

    @classmethod
    def parse(cls, *, weights: Path | None = None, model_kwargs: list[str] | None = None,
              trust_pickle: bool = False, mean: str | None = None, std: str | None = None,
              crop_pct: float | None = None, interpolation: str | None = None,
              input_size: str | None = None, labels: Path | None = None) -> SourceOptions:
        """From the command line's text: --mean 0.5,0.5,0.5, --input-size 224 or 224,224,
        -k img_size=32, --labels FILE."""
        overrides: dict[str, Any] = {"mean": _numbers(mean, "mean", 3), "std": _numbers(std, "std", 3),
                                     "crop_pct": crop_pct,
                                     "interpolation": str(interpolation) if interpolation else None}
        if input_size is not None:
            size = _numbers(input_size, "input-size", 2 if "," in input_size else 1) or ()
            overrides["input_size"] = [int(v) for v in (size * 2 if len(size) == 1 else size)]
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls(weights=weights, model_kwargs=parse_model_kwargs(model_kwargs),
                   trust_pickle=trust_pickle, preprocessing=overrides or None,
                   labels=tuple(read_labels_file(labels)) if labels is not None else None)

    def for_source(self, source: str | Path) -> SourceOptions:
        """For steps that take several models: the weights and kwargs apply to the ones named
        by architecture (timm:NAME, torchvision:NAME); the others take the remaining options."""
        return self if names_architecture(source) else replace(self, weights=None, model_kwargs={})

    def model_specific(self) -> list[str]:
        """The options a bundle (which holds its model and card) cannot take."""
        return [name for name in ("weights", "model_kwargs", "preprocessing", "labels")
                if getattr(self, name)]

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of `vitedge.models.load.load`."""
        return {"weights": self.weights, "model_kwargs": dict(self.model_kwargs),
                "trust_pickle": self.trust_pickle,
                "preprocessing": dict(self.preprocessing) if self.preprocessing else None,
                "labels": list(self.labels) if self.labels is not None else None}
