"""The report of a `vitedge optimize` folder: every candidate, why it was kept or dropped, the
Pareto front of latency against agreement, and the chosen bundle."""

from __future__ import annotations

from pathlib import Path

from vitedge.documents import read_model
from vitedge.formatting import count, percent, precision_label
from vitedge.report.page import Sections, figure, png
from vitedge.schemas.optimize import CandidateDoc, OptimizeDoc


def optimize_sections(directory: Path) -> Sections:
    document = read_model(directory / "optimize.json", OptimizeDoc,
                          hint="run vitedge optimize again to re-create it")
    measured = [c for c in document.candidates if c.status == "measured"]
    chosen = next((c for c in measured if c.name == document.chosen), None)
    speed = "p50 ms (measured here)" if document.measured_here else "estimated cost (MAC-weighted)"
    tensorrt = any(c.runtime == "tensorrt" for c in document.candidates)
    base = next((c for c in measured if c.name in ("r0-fp32-onnxruntime", "r0-fp16-tensorrt", "r0-fp32-tensorrt")),
                None)
    base_name = base.name if base is not None else "r0 FP32 ONNX Runtime"
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
                    else "not measured: TensorRT engines are built and timed on the device (vitedge build, "
                         "vitedge bench there); MAC-weighted estimates only, INT8 no cheaper than FP16 until "
                         "measured (INT8 ViTs are often no faster at batch 1)" if tensorrt
                    else "not measured: this machine is not the target's ISA; estimates only"))]
    if tensorrt and not all(c.native for c in measured):
        headline.append(("accuracy", "ONNX Runtime CPU running each bundle's own ONNX (the Q/DQ graph TensorRT "
                                     "builds from); FP16 candidates run FP32 there, so their FP16 error is not in "
                                     "these figures"))
    if chosen is not None:
        headline.append(("chosen", f"{chosen.name} → best/ ({_figures(chosen, base, base_name, document)})"))
    else:
        headline.append(("chosen", "none: no candidate met the budget"))
    if document.not_tried:
        headline.append(("not tried (--time-budget)", ", ".join(document.not_tried)))
    # ToMe r, pruning and runtime are in each name (p15-r8-int8-openvino): ten columns fit a laptop
    rows = [[("★ " if chosen is not None and c.name == chosen.name else "") + c.name,
             count(c.macs) + (f", {c.prune:.0%} pruned" + (" (budget)" if c.pruning == "budget" else "")
                              if c.prune else ""),
             precision_label(c.precision_run or c.precision, c.int8_share),
             percent(c.agreement) if c.agreement is not None else "-",
             percent(c.top1) if c.top1 is not None else "-",
             f"{c.drop:.2f}" if c.drop is not None else "-", _speed(c),
             f"{_ratio(base, c):.2f}×" if _ratio(base, c) else "-",
             percent(c.int8_share) if c.int8_share is not None else "-", _verdict(c, chosen, document)]
            for c in document.candidates]
    tables = [("Candidates (★ chosen)", ["candidate", "MACs", "precision run", "agreement", "top-1", "drop", speed,
                                        f"speed-up vs {base_name}", "Linear/Conv MACs INT8", "verdict"], rows)]
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


def _figures(c: CandidateDoc, base: CandidateDoc | None, base_name: str, document: OptimizeDoc) -> str:
    parts = [f"agreement {percent(c.agreement)}"]
    if c.top1 is not None and document.fp32_top1 is not None:
        parts.append(f"top-1 {percent(c.top1)} vs FP32 {percent(document.fp32_top1)}")
    ratio = _ratio(base, c)
    parts.append(f"{_speed(c)}" + (" ms" if c.p50_ms is not None else "") +
                 (f", {ratio:.2f}× {base_name}" if ratio else ""))
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
        return ("chosen: the fastest within the budget" if document.measured_here else
                "chosen: the lowest estimated cost within the budget") + tag
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
        if c.name == document.chosen or c.name in document.pareto:  # the rest unlabeled: no smear
            ax.annotate(c.name, (cost, 100 * c.agreement), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p50 ms at batch %d (measured here)" % document.batch if document.measured_here
                  else "estimated relative cost (MAC-weighted)")
    ax.set_ylabel("top-1 agreement with FP32 (%)")
    ax.set_title("green: chosen; blue: Pareto front (named); grey: dominated (see the table)")
    fig.tight_layout()
    return png(fig)

