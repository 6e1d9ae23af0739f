"""`vitedge.live.run`: the whole of `vitedge run` for library users, with the command's defaults.

Loads the deployed model (a bundle, verified against this machine) and its full-precision
reference (found through the card's lineage when not given), opens the frame source, runs the
live loop into a run directory and writes its report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import InputError
from vitedge.live.loop import run_loop
from vitedge.live.options import RunOptions, check_run_output
from vitedge.locks import releasing
from vitedge.models.options import SourceOptions

if TYPE_CHECKING:
    from vitedge.live.camera import FrameSource
    from vitedge.schemas.results import MultiRunSummary, RunSummary


@dataclass(frozen=True)
class CameraOptions:
    """How the frame source is opened (requested from a camera; not guaranteed)."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False  # repeat a video file or folder
    reconnect_s: float = 10.0  # keep reopening a lost live stream this long


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


@releasing
def run(model: str | Path, source: str | int | Sequence[str | int], out: str | Path | None = None, *,
        reference: str | Path | None = None, options: RunOptions | None = None,
        camera: CameraOptions | None = None, rebuild: bool = False,
        source_options: SourceOptions | None = None, report: bool = True,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[str], None] | None = None) -> RunSummary | MultiRunSummary:
    """Run `model` on `source` with a full-precision shadow; return the run's summary.

    Several sources (a list) run on the one model, their frames batched together; each stream
    gets its own drift, logs and metrics in RUN_DIR/streamK/, and the report is the fleet report.

    `out` defaults to runs/<time>; `reference` to the FP32 ancestor found through the card's
    lineage (`sessions.find_reference`: its recorded folder, then beside the bundle, then in the
    working directory). With `report`, report.html (and
    .md, .json) is written into the run directory at the end.
    """
    from vitedge.sessions import find_reference, load

    say = progress or (lambda _message: None)
    options = options or RunOptions()
    camera = camera or CameraOptions()
    loading = source_options or SourceOptions()
    run_dir = Path(out) if out is not None else default_run_dir()
    options.check()
    uris = [source] if isinstance(source, (str, int)) else list(source)
    if not uris:
        raise InputError("no source to run on", "pass --source (once per camera or file)")
    check_run_output(run_dir, overwrite=options.overwrite, reads=(model, reference, *uris),
                     record=options.record)  # before any model loads
    deployed = load(model, loading.for_source(model), rebuild=rebuild)
    options.thresholds(deployed.card)  # an alert that cannot apply is refused before the reference loads
    shadow = None
    if options.shadow_every:
        if reference is None and Path(str(model)).is_dir():
            reference = find_reference(model, search=(Path.cwd(),))
        if reference is None:
            raise InputError(f"no full-precision reference found for {model}",
                             "pass --reference ARTIFACT (the FP32 model), or --shadow-every 0")
        shadow = load(reference, loading.for_source(reference))
        say(f"shadow reference: {reference} ({shadow.description})")
    frames = open_sources(uris, camera)
    if options.serve:
        say(f"serving on http://{options.serve}/ (Ctrl-C stops and writes the summary)")
    summary = run_loop(deployed, frames, run_dir, reference=shadow, options=options, on_frame=on_frame)
    if report:
        from vitedge.report.write import write_report

        write_report(run_dir, run_dir / "report.html")
    return summary


def open_sources(uris: Sequence[str | int], camera: CameraOptions) -> list[FrameSource]:
    """Open every source (the ones opened are closed again when one cannot be)."""
    from vitedge.live.camera import FrameSource

    opened: list[FrameSource] = []
    try:
        for uri in uris:
            opened.append(FrameSource.open(uri, width=camera.width, height=camera.height, fps=camera.fps,
                                           loop=camera.loop, reconnect_s=camera.reconnect_s))
    except BaseException:
        for source in opened:
            source.close()
        raise
    return opened
