"""How a live run goes (`RunOptions`, the same defaults as `vitedge run`) and where it may write."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.drift import DriftThresholds
from vitedge.errors import InputError
from vitedge.outputs import OutputKind, check_output, input_paths

MAX_WINDOW = 100_000


@dataclass(frozen=True)
class RunOptions:
    """How a live run goes (the same defaults as `vitedge run`)."""

    shadow_every: int = 5  # 0: no shadow reference
    top_k: int = 5
    frames: int | None = None  # stop after this many frames
    duration: float | None = None  # stop after this many seconds
    show: bool = False  # an OpenCV window with the annotated stream
    serve: str | None = None  # HOST:PORT of the live page (and its /metrics)
    metrics: str | None = None  # HOST:PORT serving only Prometheus /metrics
    record: Path | None = None  # the annotated stream as a video file
    window: int = 50  # shadowed frames in the rolling metrics
    min_agreement: float | None = None  # classifiers: alert below (default 0.95)
    max_kl: float | None = None  # classifiers: alert above (default: no KL alert)
    min_cosine: float | None = None  # feature extractors: alert below (default 0.99)
    keep_disagreements: int = 24
    overwrite: bool = False

    def thresholds(self, card: Any) -> DriftThresholds:
        """The alert thresholds for this model's outputs; ones that cannot apply are refused."""
        features = card.num_classes is None
        if features and (self.min_agreement is not None or self.max_kl is not None):
            raise InputError("this model outputs features (no classifier head): --min-agreement and "
                             "--max-kl watch class predictions", "alert on --min-cosine instead, e.g. 0.98")
        if not features and self.min_cosine is not None:
            raise InputError("--min-cosine watches feature extractors; this model classifies",
                             "use --min-agreement / --max-kl")
        return DriftThresholds(min_agreement=0.95 if self.min_agreement is None else self.min_agreement,
                               max_kl=self.max_kl, min_cosine=0.99 if self.min_cosine is None else self.min_cosine,
                               min_samples=min(20, self.window))

    def check(self) -> None:
        """Refuse option values no run can use (before anything is opened or written)."""
        if self.shadow_every < 0 or self.top_k < 1 or not 1 <= self.window <= MAX_WINDOW:
            raise InputError(f"--shadow-every must be >= 0, --top-k >= 1 and --window 1..{MAX_WINDOW}")


def check_run_output(out: str | Path, *, overwrite: bool, reads: tuple[object, ...] = (),
                     record: Path | None = None) -> tuple[Path, tuple[Path, str | None] | None]:
    """Refuse a run directory (or --record file) that may not be written, before any model loads.

    Returns the run directory and where the recording goes (with its name inside the run, if so).
    """
    path = check_output(out, OutputKind.RUN, overwrite=overwrite, inputs=input_paths(*reads))
    return path, _record_path(record, path)


def _record_path(record: Path | None, out: Path) -> tuple[Path, str | None] | None:
    """Where --record writes, and its name inside the run directory (None when outside it)."""
    if record is None:
        return None
    from vitedge.locks import absolute_path

    target = absolute_path(Path(record))
    if target.suffix.lower() not in (".mp4", ".avi", ".mkv", ".mov"):
        raise InputError(f"--record {record} is not a video file name", "e.g. --record run.mp4")
    if out == target or out in target.parents:
        if target.parent != out:
            raise InputError(f"--record {record} is in a sub-folder of the run directory",
                             f"record straight into it, e.g. --record {out.name}/{target.name}")
        return target, target.name
    if os.path.lexists(target):
        raise InputError(f"--record {record} already exists",
                         "choose a new file, or record inside the run directory (-o), which "
                         "--overwrite replaces as a whole")
    return target, None
