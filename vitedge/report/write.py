"""`write_report`: which kind of folder it is, its sections, and the three files written together."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitedge.documents import sealed_json
from vitedge.errors import InputError
from vitedge.locks import json_object
from vitedge.outputs import (
    REPORT_GENERATOR,
    OutputKind,
    is_report_document,
    recognize,
    write_files,
)
from vitedge.report.evals import eval_sections
from vitedge.report.fleet import fleet_sections
from vitedge.report.optimized import optimize_sections
from vitedge.report.page import html_page, markdown_page
from vitedge.report.pruned import prune_sections, pruned_card
from vitedge.report.quantized import quantize_sections, quantized_card
from vitedge.report.runs import run_sections


def write_report(directory: str | Path | Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write `out` (.html) and its .md / .json siblings; return the JSON content.

    Several run directories (or a glob of them), or one run of several sources, give the fleet
    report. The three files replace only an earlier report set (one whose .json says vitedge
    report wrote it); anything else at those paths is refused.
    """
    out = Path(out)
    if out.suffix.lower() != ".html":
        raise InputError(f"-o {out} is not an .html file name", f"e.g. -o {out.with_suffix('.html')}")
    given = [directory] if isinstance(directory, (str, Path)) else list(directory)
    if len(given) != 1 or not Path(given[0]).exists():
        sections = fleet_sections(given)
    else:
        sections = _sections(Path(given[0]))
    md, index = out.with_suffix(".md"), out.with_suffix(".json")
    data = {"generator": REPORT_GENERATOR, "html": out.name, "md": md.name, **sections.data}

    def owned(path: Path) -> bool:  # the set's .json says vitedge report wrote the set
        report = json_object(index)
        if path.name == index.name:
            return is_report_document(report)
        return is_report_document(report) and path.name in (report.get("html"), report.get("md"))

    write_files({out: html_page(sections).encode(), md: markdown_page(sections).encode(),
                 index: sealed_json(data).encode()},
                owned=owned, what="report")
    return data


def _sections(directory: Path) -> Any:
    """The report of one folder, by what it is."""
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory", "pass a run or eval directory, or a pruned or quantized artifact")
    if (directory / "summary.json").is_file():
        several = "streams" in (json_object(directory / "summary.json") or {})
        return fleet_sections([directory], title=f"vitedge run — {directory.name}") if several else \
            run_sections(directory)
    if (directory / "eval.json").is_file():
        return eval_sections(directory)
    if recognize(directory) is OutputKind.OPTIMIZE:
        return optimize_sections(directory)
    if (card := pruned_card(directory)) is not None:
        return prune_sections(directory, card)
    if (card := quantized_card(directory)) is not None:
        return quantize_sections(directory, card)
    raise InputError(f"{directory} is neither a run directory (summary.json), an eval directory "
                     "(eval.json), an optimize folder (optimize.json), a pruned artifact (card.json "
                     "from vitedge prune) nor a quantized one (quant_report.json)",
                     "pass what vitedge run --out, eval -o, optimize -o, prune -o or quantize -o wrote")
