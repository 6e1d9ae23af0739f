"""The report of a `vitedge run` directory: drift over time, flips, latency, disagreeing frames."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.documents import confined, read_document, validate
from vitedge.errors import InputError
from vitedge.formatting import number, percent
from vitedge.report.page import (
    SHOWN_ROWS,
    Sections,
    Thumb,
    figure,
    flips,
    folded,
    image_uri,
    jsonl_lines,
    png,
    verified,
)

if TYPE_CHECKING:
    from vitedge.schemas.results import MultiRunSummary, RunSummary


def read_run(directory: Path) -> RunSummary | MultiRunSummary:
    """A finished run's summary.json, read through its schema and its files' hashes checked (a run
    of several sources: the run's own summary; `stream_runs` reads its streams')."""
    from vitedge.schemas.results import MultiRunSummary, RunSummary, RunSummaryDoc

    path = directory / "summary.json"
    summary = read_document(path, RunSummaryDoc, hint="re-run to get a new run directory")
    if summary["state"] != "finished":
        from vitedge.locks import busy

        raise InputError(f"{directory} is a run that " + (
            f"is still going (pid {summary.get('pid')})" if busy(directory) else
            "did not finish (its process stopped before writing the summary)"),
            "its frames.jsonl is readable as it is; a report needs a finished run")
    schema = MultiRunSummary if "streams" in summary else RunSummary
    finished = validate(schema, summary, what=str(path), hint="re-run to get a new run directory")
    verified(directory, finished.files, str(path))
    return finished


def stream_runs(directory: Path, summary: MultiRunSummary) -> list[tuple[Path, RunSummary]]:
    """The streams of a run of several sources, each read as a run (inside `directory` only)."""
    from vitedge.schemas.results import RunSummary

    runs = []
    for entry in summary.streams:
        folder = confined(directory, entry.dir, what=str(directory / "summary.json"))
        stream = read_run(folder)
        if not isinstance(stream, RunSummary):
            raise InputError(f"{folder} is itself a run of several sources", "re-run to get a new run directory")
        runs.append((folder, stream))
    return runs


def run_lines(directory: Path, summary: RunSummary) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A finished run's frame and event lines, each validated (files its summary hashed only)."""
    from vitedge.schemas.results import EventLine, FrameLine

    def lines(name: str, schema: Any) -> list[dict[str, Any]]:
        return jsonl_lines(confined(directory, name, what=str(directory)), schema) if name in summary.files else []

    return lines("frames.jsonl", FrameLine), lines("events.jsonl", EventLine)


def run_sections(directory: Path) -> Sections:
    summary = read_run(directory)
    plt = figure()
    frames, events = run_lines(directory, summary)
    drift = summary.drift
    features = drift.features  # a feature extractor: compared by cosine, no classes
    shadowed = sorted((f for f in frames if f.get("shadow")
                       and (f["shadow"].get("rel_error") is not None) == features), key=lambda f: f["index"])
    counts, latency = summary.frames, summary.deployed.latency_ms
    headline = [("source", summary.source), ("stopped", summary.stop_reason),
                ("frames", f"{counts.logged} logged, {counts.dropped} dropped, "
                           f"{counts.corrupt} corrupt, {counts.reconnects} reconnects"),
                ("speed", f"{summary.fps or 0:.1f} FPS; inference p50 {number(latency.p50_ms, 2)} ms, "
                          f"p95 {number(latency.p95_ms, 2)} ms; loop overhead p50 "
                          f"{number(summary.loop_overhead_ms.p50, 2)} ms"),
                ("deployed", f"{summary.deployed.backend} ({summary.deployed.precision})"),
                ("drift verdict", f"{drift.verdict} on {drift.samples} shadowed frames: " + (
                    f"feature cosine {number(drift.cosine)} (worst {number(drift.min_cosine)}), "
                    f"relative error {number(drift.rel_error)}" if features else
                    f"agreement {percent(drift.top1_agreement)}, KL {number(drift.kl)}, JS "
                    f"{number(drift.js)}, cosine {number(drift.cosine)}"))]
    if summary.shadow:
        headline.append(("shadow", f"every {summary.shadow.every} frames via {summary.shadow.reference}"
                                   + (f" ({summary.shadow.reference_model})" if summary.shadow.reference_model else "")
                                   + "; "
                                   f"{summary.shadow.skipped_reference_behind} skipped (reference behind)"))
    tables = [("Events", ["frame", "event", "details"],
               [[str(e.get("frame", "")), e["event"],
                 ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("frame", "event", "time"))]
                for e in events])] if events else []
    if features:
        return _feature_run_sections(directory, summary, frames, shadowed, events, headline, tables, plt)
    flips_seen = [(f["shadow"]["reference_top1"], f["top"][0][1]) for f in shadowed]
    per_class: dict[str, list[float]] = {}
    for f in shadowed:
        per_class.setdefault(f["shadow"]["reference_top1"], []).append(f["shadow"]["agree"])
    by_class = sorted(per_class.items(), key=lambda kv: (np.mean(kv[1]), -len(kv[1])))
    tables.append(("Agreement by reference class, worst first", ["class", "shadowed frames", "agreement"],
                   folded(by_class, SHOWN_ROWS, lambda kv: [kv[0], str(len(kv[1])), percent(float(np.mean(kv[1])))],
                          lambda rest: [f"… {len(rest)} more classes", str(sum(len(v) for _, v in rest)),
                                        percent(float(np.mean([a for _, v in rest for a in v])))])))
    kept = {f["index"]: uri for f in shadowed
            if f.get("saved") in summary.files and (uri := image_uri(directory / f["saved"]))}
    examples: dict[tuple[str, str], Thumb] = {}
    for f in shadowed:
        if f["index"] in kept:
            examples.setdefault((f["shadow"]["reference_top1"], f["top"][0][1]), Thumb(kept[f["index"]], f"frame {f['index']}"))
    flip_tables, flip_plots = flips(plt, flips_seen, ("reference", "deployed"), "Class flips (shadowed frames)",
                                    examples)
    tables += flip_tables
    plots: list[tuple[str, str | None]] = []
    if shadowed:
        plots.append(("Agreement over time", _over_time(plt, shadowed, summary.rolling_window,
                                                        ("agree", "agreement", "top-1 agreement"),
                                                        ("kl", "KL"), (-0.02, 1.02))))
        deployed_conf = np.array([f["top"][0][2] for f in shadowed])
        reference_conf = deployed_conf - np.array([f["shadow"]["confidence_shift"] for f in shadowed])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bins = np.linspace(0, 1, 26)
        ax.hist(reference_conf, bins=bins, alpha=0.6, label="reference")
        ax.hist(deployed_conf, bins=bins, alpha=0.6, label="deployed")
        ax.set_xlabel("top-1 confidence")
        ax.legend()
        plots.append(("Confidence, reference vs deployed", png(fig)))
        plots += flip_plots
    plots += _latency_plot(plt, frames)
    gallery = [(kept[f["index"]], f"frame {f['index']}: reference {f['shadow']['reference_top1']}, "
                                  f"deployed {f['top'][0][1]} (KL {f['shadow']['kl']:.3f})")
               for f in shadowed if f["index"] in kept]
    data = {"kind": "run", "summary": summary.to_dict(), "events": events,
            "per_class_agreement": {c: float(np.mean(v)) for c, v in per_class.items()},
            "flips": [list(p) for p in flips_seen if p[0] != p[1]]}
    return Sections(f"vitedge run — {summary.source}", headline, tables, plots, gallery, data)


def _over_time(plt: Any, shadowed: list[dict[str, Any]], window: int, rolled: tuple[str, str, str],
               per_frame: tuple[str, str], limits: tuple[float, float] | None = None) -> str:
    """The rolling mean of one shadow metric and another metric per frame, against the frame index."""
    key, name, axis = rolled
    values = np.array([f["shadow"][key] for f in shadowed])
    rolling = np.convolve(values, np.ones(window), "full")[:len(values)] / np.minimum(
        np.arange(1, len(values) + 1), window)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = [f["index"] for f in shadowed]
    ax.plot(x, rolling, label=f"rolling {name} ({window} shadowed frames)")
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("frame")
    ax.set_ylabel(axis)
    twin = ax.twinx()
    twin.plot(x, [f["shadow"][per_frame[0]] for f in shadowed], color="tab:orange", alpha=0.5, lw=0.8,
              label=f"{per_frame[1]} per frame")
    twin.set_ylabel(per_frame[1])
    fig.legend(loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.1), frameon=False)
    return png(fig)


def _latency_plot(plt: Any, frames: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    latencies = [f["latency_ms"] for f in frames if f.get("latency_ms") is not None]
    if not latencies:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(latencies, bins=40, alpha=0.7, label="deployed inference")
    loop = [f["loop_ms"] for f in frames if f.get("loop_ms") is not None]
    ax.hist(loop, bins=40, alpha=0.5, label="loop overhead")
    ax.set_xlabel("ms per frame")
    ax.legend()
    return [("Latency", png(fig))]


def _feature_run_sections(directory: Path, summary: RunSummary, frames: list[dict[str, Any]],
                          shadowed: list[dict[str, Any]], events: list[dict[str, Any]],
                          headline: list[tuple[str, str]], tables: list, plt: Any) -> Sections:
    """A feature extractor's run: cosine and relative error to the reference over time."""
    plots: list[tuple[str, str | None]] = []
    if shadowed:
        plots.append(("Feature cosine over time", _over_time(plt, shadowed, summary.rolling_window,
                                                             ("cosine", "cosine", "cosine to the reference"),
                                                             ("rel_error", "relative error"))))
    plots += _latency_plot(plt, frames)
    gallery = [(uri, f"frame {f['index']}: cosine {f['shadow']['cosine']:.4f}, relative error "
                     f"{f['shadow']['rel_error']:.4f}") for f in shadowed
               if f.get("saved") in summary.files and (uri := image_uri(directory / f["saved"]))]
    data = {"kind": "run", "summary": summary.to_dict(), "events": events}
    return Sections(f"vitedge run — {summary.source}", headline, tables, plots, gallery, data)
