"""The report of a `vitedge eval` directory: models side by side, flips, per-class deltas, worst images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.documents import read_model
from vitedge.errors import InputError
from vitedge.formatting import number, percent, precision_label
from vitedge.report.page import Sections, Thumb, figure, flips, image_uri, png, verified


def eval_sections(directory: Path) -> Sections:
    report, arrays = read_eval(directory)
    plt = figure()
    models = report["models"]
    labeled = report["labeled"]
    headline = [("data", f"{report['data']} ({report['samples']} images"
                         + (f", {len(report['skipped'])} unreadable skipped" if report["skipped"] else "") + ")"),
                ("reference", models[0]["model"])]
    if report.get("features"):
        return _feature_eval_sections(directory, report, arrays, headline, plt)
    header = ["model", "backend", "precision"] + (["top-1", "top-5"] if labeled else []) + [
        "agreement with first", "KL", "cosine", "verdict", "p50 ms"]
    rows = []
    for row in models:
        vs = row.get("vs_first") or {}
        rows.append([row["model"], row["backend"], precision_label(row["precision"], row.get("int8_mac_share"))]
                    + ([percent(row["top1"]), percent(row["top5"])] if labeled else [])
                    + [percent(vs.get("top1_agreement", 1.0 if row is models[0] else None)),
                       number(vs.get("kl")), number(vs.get("cosine")), vs.get("verdict", "reference"),
                       number(row["latency_ms"]["p50_ms"], 2)])
    tables = [("Models", header, rows)]
    plots: list[tuple[str, str | None]] = []
    gallery = []
    class_names = report["class_names"]
    for i, row in enumerate(models[1:], start=1):
        first, this = arrays["model0"], arrays[f"model{i}"]
        pairs = [(class_names[a], class_names[b]) for a, b in zip(first.argmax(1), this.argmax(1))]
        kept = [(w, uri) for w in row.get("worst", [])
                if w.get("image") in report["files"] and (uri := image_uri(directory / w["image"]))]
        examples: dict[tuple[str, str], Thumb] = {}
        for worst, uri in kept:
            examples.setdefault((worst["first"], worst["this"]), Thumb(uri, Path(worst["path"]).name))
        flip_tables, flip_plots = flips(plt, pairs, ("first", Path(row["model"]).name), f"Class flips: {row['model']}",
                                        examples)
        tables += flip_tables
        plots += flip_plots
        if labeled and row.get("per_class_delta"):
            deltas = row["per_class_delta"]
            tables.append((f"Per-class top-1, {row['model']} vs first", ["class", "images", "first", "this", "delta"],
                           [[d["class"], str(d["samples"]), percent(d["first"]), percent(d["this"]),
                             f"{100 * d['delta']:+.2f}"] for d in deltas[:20]]))
            fig, ax = plt.subplots(figsize=(9, 3))
            shown = deltas[:15] + [d for d in deltas[-15:] if d not in deltas[:15]]
            ax.bar([d["class"][:14] for d in shown], [100 * d["delta"] for d in shown])
            ax.set_ylabel("top-1 delta (points)")
            ax.tick_params(axis="x", rotation=90, labelsize=7)
            plots.append((f"Per-class accuracy deltas: {row['model']}", png(fig)))
        for worst, uri in kept:
            gallery.append((uri, f"{Path(worst['path']).name}: first {worst['first']}, "
                                 f"{Path(row['model']).name} {worst['this']} (KL {worst['kl']:.3f})"))
    confidence = arrays["confidence"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, row in enumerate(models):
        ax.hist(confidence[i], bins=np.linspace(0, 1, 26), alpha=0.5, label=Path(row["model"]).name)
    ax.set_xlabel("top-1 confidence")
    ax.legend(fontsize=7)
    plots.insert(0, ("Confidence", png(fig)))
    return Sections(f"vitedge eval — {report['data']}", headline, tables, plots, gallery, {**report, "kind": "eval"})


def _feature_eval_sections(directory: Path, report: dict[str, Any], arrays: dict[str, np.ndarray],
                           headline: list[tuple[str, str]], plt: Any) -> Sections:
    """Feature extractors: cosine and relative error to the first model, per model and per image."""
    from vitedge.drift import feature_metrics

    models = report["models"]
    rows = []
    for row in models:
        vs = row.get("vs_first") or {}
        rows.append([row["model"], row["backend"], precision_label(row["precision"], row.get("int8_mac_share")),
                     number(vs.get("cosine", 1.0 if row is models[0] else None)), number(vs.get("min_cosine")),
                     number(vs.get("rel_error")), vs.get("verdict", "reference"),
                     number(row["latency_ms"]["p50_ms"], 2)])
    tables = [("Models (feature outputs: compared as vectors)",
               ["model", "backend", "precision", "cosine to first", "worst cosine", "relative error",
                "verdict", "p50 ms"], rows)]
    plots: list[tuple[str, str | None]] = []
    gallery = []
    if len(models) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for i, row in enumerate(models[1:], start=1):
            errors = feature_metrics(arrays["model0"], arrays[f"model{i}"])["rel_error"]
            ax.hist(errors, bins=30, alpha=0.5, label=Path(row["model"]).name)
        ax.set_xlabel("relative error to the first model, per image")
        ax.legend(fontsize=7)
        plots.append(("Relative error", png(fig)))
    for row in models[1:]:
        for worst in row.get("worst", []):
            if worst.get("image") in report["files"] and (uri := image_uri(directory / worst["image"])):
                gallery.append((uri, f"{Path(worst['path']).name}: relative error {worst['rel_error']:.4f}, "
                                     f"cosine {worst['cosine']:.4f}"))
    return Sections(f"vitedge eval — {report['data']}", headline, tables, plots, gallery, {**report, "kind": "eval"})


def read_eval(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from vitedge.schemas.results import EvalResult

    path = directory / "eval.json"
    hint = "re-run vitedge eval"
    # the validated document: optional keys a writer left out read as their defaults
    report = read_model(path, EvalResult, hint=hint).to_dict()
    verified(directory, report["files"], str(path))
    if "logits.npz" not in report["files"]:
        raise InputError(f"{path} does not list logits.npz", hint)
    try:
        with np.load(directory / "logits.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}/logits.npz is unreadable ({exc})", hint) from None
    count = report["samples"]
    width = arrays["model0"].shape[1] if report.get("features") and "model0" in arrays \
        and arrays["model0"].ndim == 2 else len(report["class_names"])
    expected = {f"model{i}": (count, width) for i in range(len(report["models"]))}
    if not report.get("features"):
        expected["confidence"] = (len(report["models"]), count)
    for key, shape in expected.items():
        if key not in arrays or arrays[key].shape != shape or arrays[key].dtype.kind != "f":
            raise InputError(f"{directory}/logits.npz: {key} is not a float array of shape {shape}", hint)
    return report, arrays
