"""How figures are written for people (reports, tables, the console): one definition each."""

from __future__ import annotations

MISSING = "—"


def percent(value: float | None, digits: int = 2, missing: str = MISSING) -> str:
    """A share (0.5) as a percentage ("50.00%"); `missing` when unknown."""
    return missing if value is None else f"{100 * value:.{digits}f}%"


def precision_label(precision: str, int8_share: float | None) -> str:
    """What a model runs in, honestly: "int8" when (almost) all its weight-layer MACs (Linear,
    Conv, MatMul) are INT8, else how many are — "int8 (52% of MACs)" — for a model whose budget
    was met by keeping layers float. Float precisions are returned as they are."""
    quantized = "int8" in precision or precision == "best"
    if not quantized or int8_share is None or int8_share >= 0.995:
        return precision
    return f"{precision} ({100 * int8_share:.0f}% of MACs)"


def number(value: float | None, digits: int = 4, missing: str = MISSING) -> str:
    return missing if value is None else f"{value:.{digits}f}"


def count(value: int | None, unit: str = "") -> str:
    """12_345_678 -> "12.35 M" (+ unit); "unknown" when not known."""
    if value is None:
        return "unknown"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value} {unit}".strip()
