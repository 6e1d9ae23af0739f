"""Quantization recipes and budgets: which nodes stay float, and what INT8 must keep.

Light on purpose (no NumPy, ONNX or NNCF at import): the command line takes these enums.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from vitedge.errors import InputError
from vitedge.targets import Scheme, Target

if TYPE_CHECKING:
    from vitedge.quantize.qdq import ComputeNode


class Recipe(StrEnum):
    VIT_SAFE = "vit-safe"
    LINEAR_ONLY = "linear-only"
    FULL = "full"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    MEAN_MINMAX = "mean-minmax"
    PERCENTILE = "percentile"


# Everything but the Linear layers stays float in linear-only / vit-safe graphs.
FLOAT_OP_TYPES = ("Add", "Sub", "Mul", "Div", "Softmax", "LayerNormalization", "Erf", "Gelu",
                  "Sigmoid", "Tanh", "Pow", "Sqrt", "ReduceMean", "Reshape", "Transpose", "Concat",
                  "Slice", "Gather", "Squeeze", "Unsqueeze", "Expand", "Split", "Flatten",
                  "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Where")


class Scored(Protocol):
    """What a budget judges (a search candidate): figures against FP32 on the evaluation data."""

    drop: float
    agreement: float
    cosine: float


@dataclass(frozen=True)
class Budget:
    """What INT8 must keep: top-1 or agreement for classifiers, cosine for feature extractors."""

    features: bool = False
    max_drop: float = 0.5  # classifiers: points of top-1 (labeled) or of FP32 agreement
    min_agreement: float | None = None
    min_cosine: float = 0.99  # feature extractors: mean cosine to FP32

    @classmethod
    def of(cls, features: bool, max_drop: float | None, min_agreement: float | None,
           min_cosine: float | None) -> Budget:
        """The budget the options ask for, refusing the ones that do not apply to the outputs."""
        if features and (max_drop is not None or min_agreement is not None):
            raise InputError("this model outputs features (no classifier head): --max-drop and "
                             "--min-agreement are top-1 budgets", "budget on --min-cosine, e.g. 0.995")
        if not features and min_cosine is not None:
            raise InputError("--min-cosine budgets feature extractors; this model classifies",
                             "use --max-drop (points of top-1) and --min-agreement")
        for flag, value, low in (("--max-drop", max_drop, 0.0), ("--min-agreement", min_agreement, 0.0),
                                 ("--min-cosine", min_cosine, -1.0)):
            if value is not None and not low <= value <= (100.0 if flag == "--max-drop" else 1.0):
                raise InputError(f"{flag} {value} is out of range",
                                 "--max-drop 0-100 points, --min-agreement 0-1, --min-cosine -1-1")
        return cls(features, 0.5 if max_drop is None else max_drop, min_agreement,
                   0.99 if min_cosine is None else min_cosine)

    def meets(self, candidate: Scored) -> bool:
        if self.features:
            return candidate.cosine >= self.min_cosine
        return candidate.drop <= self.max_drop and (
            self.min_agreement is None or candidate.agreement >= self.min_agreement)

    def describe(self) -> str:
        if self.features:
            return f"--min-cosine {self.min_cosine:g}"
        return f"--max-drop {self.max_drop:g}" + (
            f" with --min-agreement {self.min_agreement:g}" if self.min_agreement is not None else "")


def ignored_scope(recipe: Recipe, nodes: list[ComputeNode], exclude: list[str],
                   op_types: set[str], with_attention: bool, keep_float: tuple[str, ...] = ()) -> Any:
    from vitedge.quantize.nncf_import import import_nncf

    nncf = import_nncf()

    names: list[str] = list(keep_float)  # compute nodes the rules need float (quantize.search)
    types: list[str] = []
    patterns: list[str] = []
    if recipe is not Recipe.FULL:
        types = [t for t in FLOAT_OP_TYPES if t in op_types]
        if not with_attention:
            names += [n.name for n in nodes if n.kind == "attention"]
    for pattern in exclude:
        if pattern in op_types:
            types.append(pattern)
        else:
            patterns.append(pattern)
    return nncf.IgnoredScope(names=names, types=types, patterns=patterns, validate=False)


@dataclass(frozen=True)
class QuantSettings:
    """What was asked for: recorded in the report's settings and the card's lineage."""

    recipe: Recipe = Recipe.VIT_SAFE
    calibration: CalibrationMethod = CalibrationMethod.MEAN_MINMAX
    scheme: Scheme = Scheme.SYMMETRIC
    target: Target | None = None
    smooth_quant: bool = False
    bias_correction: bool = True
    exclude: tuple[str, ...] = ()
    shift: bool = False  # centre skewed Linear inputs (OS+ shift, folded into the bias)
    tune_ranges: bool = False  # end-to-end search of the activation scales (quantize.ranges)
