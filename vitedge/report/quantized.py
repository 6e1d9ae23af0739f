"""The report of a `vitedge quantize` artifact: the budget and how it measures against FP32, each
layer by the model's own module name (in INT8 or kept float, its error, its MACs), what the
search tried, and the TensorRT-rules lint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.artifact import CARD_NAME, is_artifact, read_card, verify_files
from vitedge.card import ModelCard
from vitedge.documents import read_model
from vitedge.formatting import number, percent
from vitedge.quantize.report import REPORT_JSON, sqnr_order, sqnr_text
from vitedge.report.page import SHOWN_ROWS, Sections, figure, folded, png
from vitedge.schemas.results import QuantReport


def quantized_card(directory: Path) -> ModelCard | None:
    """The card of a `vitedge quantize` artifact, or None when the directory is not one."""
    if not is_artifact(directory) or not (directory / REPORT_JSON).is_file():
        return None
    card = read_card(directory)
    return card if "quantization" in card.metrics else None


def quantize_sections(directory: Path, card: ModelCard) -> Sections:
    verify_files(directory, card)  # quant_report.json is one of the files the card sealed
    report = read_model(directory / REPORT_JSON, QuantReport,
                        hint="quantize again to re-create the artifact").to_dict()
    settings, budget, drift = report["settings"], report["budget"], report["drift"]
    floats = report["float_nodes"]
    named = {**(floats.get("modules") or {}),
             **{row["node"]: row["module"] for row in report["layers"] if row.get("module")}}

    def name(node: str) -> str:
        return named.get(node, node)

    measured = (f"cosine to FP32 {budget['cosine']:.4f} (≥ {budget['min_cosine']:g} wanted)" if budget["features"]
                else f"drop {budget['drop']:.2f} {budget['metric']} (≤ {budget['max_drop']:g} wanted)"
                + (f", agreement {percent(budget['agreement'], 1)} (≥ {percent(budget['min_agreement'], 1)} wanted)"
                   if budget.get("min_agreement") is not None else ""))
    latency, size = report["latency_ms"], report["size_bytes"]
    headline = [
        ("model", card.architecture),
        ("recipe", f"{settings['recipe']}, {settings['scheme']} activations, {settings['calibration']} "
                   f"calibration on {settings['calibration_samples']} samples"
                   + (f", for {settings['target']}" if settings.get("target") else "")),
        ("budget", ("met: " if budget["met"] else "MISSED: ") + measured),
        ("chosen", report["chosen"]),
        ("Linear/Conv MACs in INT8", percent(report["int8_linear_mac_share"], 0)),
        ("against FP32", f"cosine {number(drift['cosine'], 5)} on {drift['samples']} samples" if drift["features"]
         else f"top-1 agreement {percent(drift['top1_agreement'], 1)}, KL {number(drift['kl'])} on "
              f"{drift['samples']} samples"),
        ("ONNX Runtime CPU p50", f"{latency['fp32']['p50']:.2f} ms FP32 → {latency['int8']['p50']:.2f} ms INT8 "
                                 f"at batch {latency['batch']}"),
        ("size", f"{size['fp32'] / 2**20:.2f} MiB → {size['int8'] / 2**20:.2f} MiB"),
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        headline.insert(3, ("top-1", f"{percent(accuracy['fp32_top1'], 1)} FP32 → {percent(accuracy['int8_top1'], 1)} "
                                     "INT8"))
    if floats.get("run_as"):
        headline.append(("float layers run as", floats["run_as"]))
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    layers = sorted(report["layers"], key=sqnr_order)
    tables.append(("INT8 layers, worst first (SQNR of the layer's output against FP32; lower is worse)",
                   ["layer", "op", "kind", "MMACs", "SQNR dB"],
                   folded(layers, SHOWN_ROWS, lambda r: [name(r["node"]), r["op_type"], r["kind"],
                                                         _mmacs(r.get("macs")), sqnr_text(r["sqnr_db"])],
                          lambda rest: [f"… {len(rest)} more INT8 layers", "", "", "",
                                        f"{sqnr_text(rest[0]['sqnr_db'])} or more"])))
    kept = [(n, "linear") for n in floats["linear"]] + [(n, "attention") for n in floats["attention"]]
    tables.append(("Kept in float", ["layer", "kind"],
                   folded(kept, SHOWN_ROWS, lambda k: [name(k[0]), k[1]],
                          lambda rest: [f"… {len(rest)} more", ""]) or [["(none)", ""]]))
    if report["sensitivity"]:
        error = "relative error" if budget["features"] else "KL"
        tables.append((f"Sensitivity: {error} to FP32 when the layer alone is float, most helpful first",
                       ["layer", f"{error} if float", "gain"],
                       folded(report["sensitivity"], SHOWN_ROWS,
                              lambda r: [name(r["node"]), f"{r['error_if_float']:.5f}", f"{r['error_gain']:.5f}"],
                              lambda rest: [f"… {len(rest)} more", "", ""])))
    tables.append(("What the search tried", ["candidate", "drop", "INT8 Linear/Conv MACs", "agreement", "cosine"],
                   [[a["label"], f"{a['drop']:.2f}", percent(a["int8_linear_mac_share"], 0),
                     percent(a.get("top1_agreement"), 1, "n/a"), number(a.get("cosine"), 5)]
                    for a in report["attempts"]]))
    lint = report["lint"]
    findings = lint.get("findings") or []
    tables.append((f"TensorRT-rules lint: {'passed' if lint['passed'] else 'FAILED'} "
                   f"({lint['quantize_nodes']} QuantizeLinear, {lint['dequantize_nodes']} DequantizeLinear)",
                   ["severity", "rule", "node", "finding"],
                   folded(findings, SHOWN_ROWS, lambda f: [f["severity"], f["rule"], name(f["node"]), f["message"]],
                          lambda rest: [f"… {len(rest)} more", "", "", ""]) or [["(none)", "", "", ""]]))
    for warning in report["warnings"]:
        headline.append(("warning", warning))
    plots = [("SQNR of each INT8 layer, in graph order", _sqnr_plot(report["layers"], name))]
    return Sections(title=f"vitedge quantize: {card.architecture} — {directory.name}", headline=headline,
                    tables=tables, plots=plots, gallery=[],
                    data={"kind": "quantize", "card": str(directory / CARD_NAME), **report})


def _mmacs(macs: Any) -> str:
    return f"{macs / 1e6:.2f}" if macs else "?"


def _sqnr_plot(layers: list[dict[str, Any]], name: Any) -> str | None:
    if not layers:
        return None
    plt = figure()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    values = np.array([80.0 if r["sqnr_db"] is None else min(r["sqnr_db"], 80.0) for r in layers])
    colours = ["#2a6" if r["kind"] == "linear" else "#c84" for r in layers]
    ax.bar(np.arange(len(layers)), values, color=colours)
    worst = np.argsort(values)[:5]
    for index in worst:
        ax.annotate(name(layers[index]["node"]), (index, values[index]), fontsize=6, rotation=60,
                    xytext=(0, 4), textcoords="offset points")
    ax.set_xlabel("INT8 layer (graph order; green: Linear, orange: attention MatMul)")
    ax.set_ylabel("SQNR dB (capped at 80)")
    fig.tight_layout()
    return png(fig)
