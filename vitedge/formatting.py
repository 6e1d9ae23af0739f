"""How figures are written for people (reports, tables, the console): one definition each."""

from __future__ import annotations

MISSING = "—"


def percent(value: float | None, digits: int = 2, missing: str = MISSING) -> str:
    """A share (0.5) as a percentage ("50.00%"); `missing` when unknown."""
    return missing if value is None else f"{100 * value:.{digits}f}%"


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
