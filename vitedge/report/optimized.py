"""The report of a `vitedge optimize` folder: every candidate, why it was kept or dropped, the
Pareto front of latency against agreement, and the chosen bundle."""

from __future__ import annotations

from pathlib import Path

from vitedge.documents import read_model
from vitedge.formatting import count, percent
from vitedge.report.page import Sections, figure, png
from vitedge.schemas.optimize import CandidateDoc, OptimizeDoc


def optimize_sections(directory: Path) -> Sections:
    document = read_model(directory / "optimize.json", OptimizeDoc,
                          hint="run vitedge optimize again to re-create it")
    measured = [c for c in document.candidates if c.status == "measured"]
    chosen = next((c for c in measured if c.name == document.chosen), None)
    speed = "p50 ms (measured here)" if document.measured_here else "estimated cost (MAC-weighted)"
    base = next((c for c in measured if c.name == "r0-fp32-onnxruntime"), None)
    budget = f"top-1 drop ≤ {document.max_drop:g} points" if document.labeled else \
        f"agreement drop ≤ {document.max_drop:g} points"
    if document.min_agreement is not None:
        budget += f" and agreement ≥ {percent(document.min_agreement)}"
    headline = [("source", document.source), ("target", document.target),
                ("machine", f"{document.machine.get('cpu')} ({document.machine.get('arch')}; "
                            f"{', '.join(document.machine.get('cpu_features') or [])})"),
                ("held-out data", f"{document.eval_samples} samples of {document.data}"),
                ("calibration", f"{document.calibration_samples} samples of {document.calibration}"),
                ("budget", budget),
                ("latency", f"batch {document.batch}, " + (
                    "every candidate timed here in the same alternating rounds" if document.measured_here
                    else "not measured: this machine is not the target's ISA; estimates only"))]
    if chosen is not None:
        headline.append(("chosen", f"{chosen.name} → best/ ({_figures(chosen, base, document)})"))
    else:
        headline.append(("chosen", "none: no candidate met the budget"))
    if document.not_tried:
        headline.append(("not tried (--time-budget)", ", ".join(document.not_tried)))
    rows = [[c.name, f"{c.prune:.0%}" if c.prune else "-", str(c.tome), count(c.macs), c.precision_run or c.precision,
             c.runtime,
             percent(c.agreement) if c.agreement is not None else "-",
             percent(c.top1) if c.top1 is not None else "-",
             f"{c.drop:.2f}" if c.drop is not None else "-", _speed(c),
             f"{_ratio(base, c):.2f}×" if _ratio(base, c) else "-",
             percent(c.int8_share) if c.int8_share is not None else "-", _verdict(c, chosen, document)]
            for c in document.candidates]
    tables = [("Candidates", ["candidate", "pruned (heads, MLP)", "ToMe r", "MACs", "precision run", "runtime", "agreement", "top-1",
                              "drop", speed, "speed-up vs r0 FP32 ONNX Runtime", "Linear MACs INT8",
                              "verdict"], rows)]
    return Sections(title=f"vitedge optimize: {document.source} for {document.target}",
                    headline=headline, tables=tables, plots=[("Latency against agreement", _plot(measured, document))],
                    gallery=[], data={"kind": "optimize", "optimize": document.to_dict()})


def _cost(c: CandidateDoc) -> float | None:
    return c.p50_ms if c.p50_ms is not None else c.estimated_cost


def _speed(c: CandidateDoc) -> str:
    if c.p50_ms is not None:
        return f"{c.p50_ms:.2f}"
    return f"{c.estimated_cost:.3f} (estimate)" if c.estimated_cost is not None else "-"


def _ratio(base: CandidateDoc | None, c: CandidateDoc) -> float | None:
    if base is None or _cost(base) is None or not _cost(c):
        return None
    return _cost(base) / _cost(c)  # type: ignore[operator]


def _figures(c: CandidateDoc, base: CandidateDoc | None, document: OptimizeDoc) -> str:
    parts = [f"agreement {percent(c.agreement)}"]
    if c.top1 is not None and document.fp32_top1 is not None:
        parts.append(f"top-1 {percent(c.top1)} vs FP32 {percent(document.fp32_top1)}")
    ratio = _ratio(base, c)
    parts.append(f"{_speed(c)}" + (" ms" if c.p50_ms is not None else "") +
                 (f", {ratio:.2f}× r0 FP32 ONNX Runtime" if ratio else ""))
    return "; ".join(parts)


def _verdict(c: CandidateDoc, chosen: CandidateDoc | None, document: OptimizeDoc) -> str:
    if c.status != "measured":
        return f"{c.status}: {c.reason}"
    tag = " (Pareto)" if c.name in document.pareto else ""
    if c.drop is not None and c.drop > document.max_drop:
        return f"dropped: drop {c.drop:.2f} > {document.max_drop:g}{tag}"
    if document.min_agreement is not None and (c.agreement or 0) < document.min_agreement:
        return f"dropped: agreement {percent(c.agreement)} < {percent(document.min_agreement)}{tag}"
    if chosen is not None and c.name == chosen.name:
        return f"chosen: the fastest within the budget{tag}"
    return f"within the budget, slower than {chosen.name if chosen else '-'}{tag}"


def _plot(measured: list[CandidateDoc], document: OptimizeDoc) -> str | None:
    points = [(c, _cost(c)) for c in measured if _cost(c) is not None and c.agreement is not None]
    if not points:
        return None
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for c, cost in points:
        colour = "tab:green" if c.name == document.chosen else ("tab:blue" if c.name in document.pareto else "tab:gray")
        ax.scatter([cost], [100 * c.agreement], color=colour, s=40 if c.name == document.chosen else 22)
        ax.annotate(c.name, (cost, 100 * c.agreement), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p50 ms at batch %d (measured here)" % document.batch if document.measured_here
                  else "estimated relative cost (MAC-weighted)")
    ax.set_ylabel("top-1 agreement with FP32 (%)")
    ax.set_title("green: chosen; blue: Pareto front; grey: dominated")
    fig.tight_layout()
    return png(fig)

