"""The fleet report: many runs (devices, cameras) side by side, the worst streams first.

Takes run directories from several devices (copied to one place, or a glob over them) and runs of
several sources (each stream counts as one): per stream its device, agreement or cosine, KL,
FPS and alerts; the class flips summed over the fleet; the runs that could not be read, with why
(a run still going, or one whose files do not match its summary, is left out and named, not
silently dropped).
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import InputError
from vitedge.formatting import number, percent
from vitedge.report.page import Sections, figure, png
from vitedge.report.runs import read_run, run_lines, stream_runs

if TYPE_CHECKING:
    from vitedge.schemas.results import MultiRunSummary, RunSummary

# worst first: drifting streams, then those with too few shadowed frames to tell, then passing ones
VERDICT_ORDER = {"drift": 0, "insufficient data": 1, "pass": 2}
FLIPS_SHOWN = 30


@dataclass(frozen=True)
class StreamRow:
    """One stream of the fleet, as the report's table and JSON show it."""

    run: str  # the run directory as given (a stream of a run of several sources: RUN/streamK)
    device: str  # host name the run recorded ("?" for runs from before it was recorded)
    target: str
    source: str
    frames: int
    dropped: int
    corrupt: int
    reconnects: int
    fps: float | None
    inference_p95_ms: float | None
    samples: int
    verdict: str
    features: bool
    agreement: float | None
    kl: float | None
    cosine: float | None
    alerts: int  # "drift alert" events during the run
    flips: int  # shadowed frames whose top-1 class differed from the reference's

    def worst_first(self) -> tuple[Any, ...]:
        closeness = self.cosine if self.features else self.agreement
        return (VERDICT_ORDER.get(self.verdict, 1), -self.alerts,
                closeness if closeness is not None else float("inf"), -(self.kl or 0.0), self.run)


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from the arguments: a quoted glob is expanded here (the shell did not), each
    folder counted once."""
    found: list[Path] = []
    for given in paths:
        text = str(given)
        if not Path(text).exists() and globlib.has_magic(text):
            matches = sorted(Path(m) for m in globlib.glob(text) if Path(m).is_dir())
            if not matches:
                raise InputError(f"{text} matches no folder", "pass run directories, or a glob that names some")
            found += matches
        elif Path(text).is_dir():
            found.append(Path(text))
        else:
            raise InputError(f"{text} is not a directory", "pass run directories (vitedge run -o ...)")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def fleet_sections(paths: Sequence[str | Path], *, title: str | None = None) -> Sections:
    from vitedge.schemas.results import MultiRunSummary

    rows: list[StreamRow] = []
    flips: dict[tuple[str, str], list[int]] = {}  # (reference, deployed) -> [frames, streams]
    left_out: list[tuple[str, str]] = []
    runs: list[tuple[Path, MultiRunSummary]] = []
    for directory in expand_runs(paths):
        try:
            summary = read_run(directory)
            streams = stream_runs(directory, summary) if isinstance(summary, MultiRunSummary) else \
                [(directory, summary)]
        except InputError as exc:
            left_out.append((str(directory), exc.message))
            continue
        if isinstance(summary, MultiRunSummary):
            runs.append((directory, summary))
        for folder, stream in streams:
            row, pairs = _stream_row(folder, stream)
            rows.append(row)
            for pair, count in pairs.items():
                entry = flips.setdefault(pair, [0, 0])
                entry[0] += count
                entry[1] += 1
    if not rows:
        raise InputError("none of the folders is a finished run: " + "; ".join(
            f"{path}: {why}" for path, why in left_out[:3]), "pass what vitedge run -o wrote, once it has finished")
    rows.sort(key=StreamRow.worst_first)
    return _sections(rows, flips, left_out, runs, title)


def _stream_row(folder: Path, summary: RunSummary) -> tuple[StreamRow, dict[tuple[str, str], int]]:
    frames, events = run_lines(folder, summary)
    drift = summary.drift
    pairs: dict[tuple[str, str], int] = {}
    if not drift.features:
        for line in frames:
            shadow = line.get("shadow")
            if shadow and line.get("top") and shadow.get("reference_top1") != line["top"][0][1]:
                pair = (shadow["reference_top1"], line["top"][0][1])
                pairs[pair] = pairs.get(pair, 0) + 1
    counts = summary.frames
    row = StreamRow(run=str(folder), device=summary.host or "?", target=summary.target or "?",
                    source=summary.source, frames=counts.logged, dropped=counts.dropped, corrupt=counts.corrupt,
                    reconnects=counts.reconnects, fps=summary.fps, inference_p95_ms=summary.deployed.latency_ms.p95_ms,
                    samples=drift.samples, verdict=drift.verdict, features=drift.features,
                    agreement=drift.top1_agreement, kl=drift.kl, cosine=drift.cosine,
                    alerts=sum(e["event"] == "drift alert" for e in events), flips=sum(pairs.values()))
    return row, pairs


def _sections(rows: list[StreamRow], flips: dict[tuple[str, str], list[int]], left_out: list[tuple[str, str]],
              runs: list[tuple[Path, MultiRunSummary]], title: str | None) -> Sections:
    samples = sum(r.samples for r in rows if not r.features)
    agreeing = sum(r.agreement * r.samples for r in rows if not r.features and r.agreement is not None)
    devices = sorted({r.device for r in rows})
    verdicts = [r.verdict for r in rows]
    headline = [
        ("fleet", f"{len(rows)} streams on {len(devices)} device{'s' * (len(devices) != 1)} "
                  f"({', '.join(devices[:8])}{', …' if len(devices) > 8 else ''})"),
        ("verdicts", f"{verdicts.count('drift')} drifting, {verdicts.count('insufficient data')} with too few "
                     f"shadowed frames, {verdicts.count('pass')} passing"),
        ("frames", f"{sum(r.frames for r in rows)} logged, {sum(r.dropped for r in rows)} dropped, "
                   f"{sum(r.corrupt for r in rows)} corrupt, {sum(r.reconnects for r in rows)} reconnects"),
        ("agreement", f"{percent(agreeing / samples) if samples else '—'} over {samples} shadowed frames of "
                      f"the fleet; {sum(r.flips for r in rows)} class flips"),
    ]
    for directory, run in runs:
        batching = run.batching
        headline.append((f"run {directory}", f"{len(run.streams)} streams on one model at {run.fps or 0:.1f} FPS "
                         f"together; {batching.calls} model calls, {number(batching.mean_batch, 2)} frames per call "
                         f"(batch profile up to {batching.max_batch or '?'})"))
    table = [[r.device, r.target, r.source, r.run, r.verdict,
              (f"cosine {number(r.cosine)}" if r.features else percent(r.agreement)), number(r.kl),
              str(r.samples), str(r.alerts), str(r.flips), f"{r.fps or 0:.1f}", number(r.inference_p95_ms, 2),
              f"{r.frames} / {r.dropped} / {r.corrupt} / {r.reconnects}"] for r in rows]
    tables = [("Streams, worst first", ["device", "target", "source", "run", "verdict", "agreement", "KL",
                                        "shadowed", "alerts", "flips", "FPS", "inference p95 (ms)",
                                        "frames / dropped / corrupt / reconnects"], table)]
    ranked = sorted(flips.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if ranked:
        tables.append((f"Class flips over the fleet (reference → deployed, top {FLIPS_SHOWN})",
                       ["reference", "deployed", "frames", "streams"],
                       [[a, b, str(n), str(s)] for (a, b), (n, s) in ranked[:FLIPS_SHOWN]]))
    if left_out:
        tables.append(("Runs left out", ["folder", "why"], [[path, why] for path, why in left_out]))
    data = {"kind": "fleet", "streams": [asdict(r) for r in rows],
            "flips": [{"reference": a, "deployed": b, "frames": n, "streams": s} for (a, b), (n, s) in ranked],
            "left_out": [{"folder": path, "why": why} for path, why in left_out],
            "runs": [{"folder": str(d), "summary": run.to_dict()} for d, run in runs]}
    return Sections(title or f"vitedge fleet — {len(rows)} streams", headline, tables, [_plot(rows)], [], data)


def _plot(rows: list[StreamRow]) -> tuple[str, str | None]:
    """Agreement (or cosine) and FPS per stream, worst at the top."""
    plt = figure()
    shown = rows[:40]
    names = [f"{r.device}: {r.source[-30:]}" for r in shown]
    colours = ["tab:red" if r.verdict == "drift" else "tab:gray" if r.verdict != "pass" else "tab:green"
               for r in shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.8 + 0.35 * len(shown)), sharey=True)
    positions = range(len(shown))[::-1]
    left.barh(list(positions), [(r.cosine if r.features else r.agreement) or 0.0 for r in shown], color=colours)
    left.set_xlim(0, 1.0)
    left.set_xlabel("agreement with the reference (cosine for feature models)")
    left.set_yticks(list(positions), names, fontsize=8)
    right.barh(list(positions), [r.fps or 0.0 for r in shown], color="tab:blue")
    right.set_xlabel("FPS")
    fig.tight_layout()
    return ("Per stream (red: drift, grey: too few shadowed frames)", png(fig))
