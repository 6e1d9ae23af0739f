"""The live loop: frames → preprocess → deployed model → overlay → sinks, with a shadow reference.

The deployed model runs on every frame. Every N-th frame is also handed to a worker running the
full-precision reference; the hand-off queue holds two frames per stream, so when the reference
falls behind, shadow frames are skipped and counted instead of piling up, and the live path never
waits for it. Drift metrics come from `vitedge.drift` (the same code `eval` uses).

One model, several sources (`vitedge run --source A --source B`): each round takes the next frame
of every stream (a live stream that has none within ROUND_WAIT_S is passed over this round, and one
that has sent nothing for STALLED_S — a camera reconnecting — is not waited for at all) and
runs the round's frames through the deployed model together, in batches up to the bundle's batch
profile — DeepStream's stream-muxer idea, so N cameras cost fewer model calls than N processes.
Every stream keeps its own drift window, alerts, logs, reconnects and Prometheus series; the
window, recording and live page show the streams tiled.

RUN_DIR gets `frames.jsonl` (one line per frame, flushed about once a second), `events.jsonl`
(alerts, disconnects), `disagreements/` (a few frames where the models disagreed) and, at the
end — also after Ctrl-C / SIGTERM — `summary.json`. With several sources each stream's files are
in RUN_DIR/streamK/ (K: its position in --source) and RUN_DIR/summary.json holds the run's
totals and batching; `vitedge report RUN_DIR` writes the fleet report of its streams. What each
stream keeps (its logs, drift window, alerts, summary) is in vitedge/live/stream.py.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.documents import write_document
from vitedge.drift import DriftThresholds
from vitedge.errors import InputError
from vitedge.live.camera import Frame, FrameSource
from vitedge.live.options import RunOptions, check_run_output
from vitedge.live.shadow import Shadow, check_reference
from vitedge.live.stream import Item, Stream, file_hashes, host_name, target_name, write_running
from vitedge.locks import atomic_write_bytes, releasing
from vitedge.outputs import OutputKind, input_paths, writing
from vitedge.preprocess import preprocess
from vitedge.runtime.base import Session

if TYPE_CHECKING:
    from vitedge.live.metrics import RunMetrics
    from vitedge.schemas.results import MultiRunSummary, RunSummary

ROUND_WAIT_S = 0.05  # several sources: how long a round waits for live streams that have no frame yet
STALLED_S = 1.0  # ... unless the stream has had none this long (reconnecting): then it is not waited for
NO_SPACE = "did not finish: no space left on the device"
RESERVE = ".space-reserve"  # removed when the run ends; see _reserve
RESERVE_BYTES = 1 << 20
MOSAIC_WIDTH = 1280  # several sources: the tiled view (window, recording, live page) is this wide



def overlay(image: np.ndarray, lines: list[str], status: str) -> np.ndarray:
    import cv2

    out = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    out = out.copy()
    scale = max(out.shape[0] / 720, 0.45)
    height = int(26 * scale) + 4
    cv2.rectangle(out, (0, 0), (int(out.shape[1] * 0.62), height * len(lines) + 8), (0, 0, 0), -1)
    colour = {"drift": (80, 80, 255), "pass": (120, 220, 120)}.get(status, (230, 230, 230))
    for row, text in enumerate(lines):
        cv2.putText(out, text, (8, height * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale,
                    colour if row == len(lines) - 1 else (255, 255, 255), 1, cv2.LINE_AA)
    return out


class _Stopper:
    """Ctrl-C / SIGTERM / SIGHUP set a flag the loop checks, so the summary is always written."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the SSH session closed
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@releasing
def run_loop(deployed: Session, source: FrameSource | Sequence[FrameSource], out_dir: str | Path, *,
             reference: Session | None = None, options: RunOptions | None = None,
             on_frame: Callable[[dict[str, Any]], None] | None = None) -> RunSummary | MultiRunSummary:
    """Run the live loop on sessions already loaded and sources already open, until every source
    ends, a limit is hit or a signal arrives (`vitedge.live.run` loads and opens them for you).

    One source gives a RunSummary; several give a MultiRunSummary (each stream's RunSummary is in
    its streamK/summary.json). The run directory is written as the run goes (frames.jsonl is
    readable during the run and survives a crash); summary.json says "running" until the end,
    then holds the figures and the hashes of every file the run wrote.
    """
    sources = [source] if isinstance(source, FrameSource) else list(source)
    if not sources:
        raise InputError("no source to run on", "pass --source (once per camera or file)")
    options = options or RunOptions()
    options.check()
    thresholds = options.thresholds(deployed.card)  # refused before anything is written
    if reference is not None:
        check_reference(deployed, reference)
    reads = (deployed.origin, reference.origin if reference is not None else (), *(s.uri for s in sources))
    out, record = check_run_output(out_dir, overwrite=options.overwrite, reads=reads, record=options.record)
    from vitedge.live.metrics import RunMetrics
    from vitedge.live.serve import LiveServer

    metrics = RunMetrics(bundle=str(deployed.origin[0]) if deployed.origin else deployed.card.architecture,
                         target=target_name(deployed))
    title = f"{deployed.card.architecture} — " + (sources[0].uri if len(sources) == 1 else
                                                   f"{len(sources)} streams")
    servers = []
    try:  # a port in use is refused before the run directory is written
        if options.serve:
            servers.append(LiveServer(options.serve, title, metrics=metrics))
        if options.metrics:
            servers.append(LiveServer(options.metrics, title, metrics=metrics, with_page=False,
                                      option="--metrics"))
    except BaseException:
        for opened in servers:
            opened.close()
        raise
    server = servers[0] if options.serve else None
    try:
        with writing(out, OutputKind.RUN, overwrite=options.overwrite, inputs=input_paths(*reads),
                     live=True) as folder:
            if record is not None and record[1] is not None:  # inside the run: where it is written now
                record = (folder / record[1], record[1])
            state = _Loop(deployed, sources, folder, reference, options, thresholds, server, on_frame, record,
                          metrics)
            try:
                with _Stopper() as stopper:
                    state.loop(stopper)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                state.out_of_space()  # the summary is still written, in the space kept for it
            finally:
                summary = state.finish()
            if state.stop_reason == NO_SPACE:
                raise InputError(f"no space left on the device: the run stopped after {summary.frames.logged} "
                                 "frames", "free some space; vitedge report reads what it logged")
    finally:
        for opened in servers:
            opened.close()
    return summary


class _Loop:
    """The rounds: read every stream, batch, infer, hand each result back to its stream, sinks."""

    def __init__(self, deployed: Session, sources: list[FrameSource], out: Path, reference: Session | None,
                 options: RunOptions, thresholds: DriftThresholds, server: Any,
                 on_frame: Callable[[dict[str, Any]], None] | None,
                 record: tuple[Path, str | None] | None, metrics: RunMetrics):
        self.deployed, self.out, self.options = deployed, out, options
        self.record = record
        self.server, self.on_frame, self.metrics = server, on_frame, metrics
        self.card = deployed.card
        self.thresholds = thresholds
        self.features = self.card.num_classes is None  # no classifier head: compare vectors
        self.labels = self.card.labels or [str(i) for i in range(self.card.num_classes or 0)]
        self.multi = len(sources) > 1
        self.reserve = _reserve(out)
        if self.multi:
            write_running(out, f"{len(sources)} streams")
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.loop_ended: float | None = None  # set when the loop stops (finish)
        try:
            self.streams = [Stream(number, source, out / f"stream{number}" if self.multi else out, self,
                                    metrics.stream(number, source.uri)) for number, source in enumerate(sources)]
        except BaseException:
            self.reserve.unlink(missing_ok=True)
            raise
        self.shadow = Shadow(reference, streams=len(sources)) if reference is not None and options.shadow_every \
            else None
        self.batches: dict[int, int] = {}  # frames per model call -> calls
        self.writer: Any = None
        self.show = options.show  # turned off when this OpenCV has no window support
        self.tile: tuple[int, int] | None = None  # (width, height) of a stream in the tiled view
        self.stop_reason = "end of source"

    # ---------------------------------------------------------------------------- the loop
    def loop(self, stopper: _Stopper) -> None:
        options = self.options
        while active := [s for s in self.streams if s.stop_reason is None]:
            reason = stopper.reason or (f"--duration {options.duration:g} s reached" if options.duration is not None
                                        and time.monotonic() - self.started >= options.duration else None)
            if reason:
                self.stop_reason = reason
                for stream in active:
                    stream.stop_reason = reason
                break
            now = time.monotonic()
            deadline = now + ROUND_WAIT_S
            items = []
            for stream in active:
                if options.frames is not None and stream.frames >= options.frames:
                    stream.stop_reason = f"--frames {options.frames} reached"
                    continue
                wait = None if len(active) == 1 else 0.0 if now - stream.last_frame > STALLED_S else \
                    max(deadline - time.monotonic(), 0.0)
                frame = stream.next_frame(wait)
                if frame is not None and (item := self.prepare(stream, frame)) is not None:
                    items.append(item)
            if items:
                self.step(items)
            elif len(active) > 1:  # every live stream is reconnecting: poll, do not spin
                time.sleep(ROUND_WAIT_S / 5)
            self.collect()
        else:
            reasons = {s.stop_reason for s in self.streams}
            self.stop_reason = reasons.pop() if len(reasons) == 1 else "every source ended"

    def prepare(self, stream: Stream, frame: Frame) -> Item | None:
        began = time.perf_counter()
        line = stream.take(frame)
        if line is None:  # corrupt: logged as such
            return None
        pre, pixels = self.card.preprocessing, self.deployed.pixels
        if pixels is None:
            item = Item(stream, frame, line, preprocess(frame.image, pre, frame_channel_order="BGR"))
        else:  # the graph preprocesses: the frame goes in as it is (at the capture size)
            item = Item(stream, frame, line, pixels.from_image(frame.image, pre, frame_channel_order="BGR"))
        item.work_ms = (time.perf_counter() - began) * 1000
        return item

    def step(self, items: list[Item]) -> None:
        """Infer the round's frames in batches up to the batch profile, then sinks and logs."""
        groups: dict[tuple[int, ...], list[Item]] = {}
        for item in items:
            groups.setdefault(item.input.shape, []).append(item)
        size = self.deployed.max_batch or len(items)
        for group in groups.values():
            for start in range(0, len(group), size):
                self.infer(group[start:start + size])
        if self.record or self.show or self.server is not None:
            began = time.perf_counter()
            self.sinks(items)
            share = (time.perf_counter() - began) * 1000 / len(items)
            for item in items:
                item.work_ms += share
        for item in items:
            item.stream.done(item)

    def infer(self, chunk: list[Item]) -> None:
        batch = np.stack([item.input for item in chunk])
        if len(chunk) < self.deployed.min_batch:  # a fixed-batch bundle: pad with the last frame
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.deployed.min_batch - len(chunk), 0)])
        logits = self.deployed.infer_native(batch)
        infer_ms = self.deployed.timing.calls_ms[-1]
        self.batches[len(chunk)] = self.batches.get(len(chunk), 0) + 1
        for row, item in enumerate(chunk):
            began = time.perf_counter()
            item.stream.result(item, logits[row:row + 1], infer_ms, len(chunk))
            item.work_ms += (time.perf_counter() - began) * 1000

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    def sinks(self, items: list[Item]) -> None:
        import cv2

        for item in items:
            item.stream.annotate(item)
        view = overlay(*items[0].stream.annotated) if not self.multi else self.mosaic()
        if self.record:
            if self.writer is None:
                height, width = view.shape[:2]
                self.record[0].parent.mkdir(parents=True, exist_ok=True)
                fps = self.streams[0].source.fps if not self.multi else None
                self.writer = cv2.VideoWriter(str(self.record[0]), cv2.VideoWriter_fourcc(*"mp4v"),
                                              fps or 30.0, (width, height))
            self.writer.write(view)
        if self.show:
            try:
                cv2.imshow("vitedge run", view)
                cv2.waitKey(1)
            except cv2.error:
                self.show = False
                for stream in self.streams:
                    stream.event("no GUI", {"message": "this OpenCV has no window support; --show is off"})
        if self.server is not None:
            ok, jpeg = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, 80])
            self.server.publish(jpeg.tobytes() if ok else None, self.page_metrics(items))

    def mosaic(self) -> np.ndarray:
        """The streams' latest frames tiled, each annotated at the tile's size (a stream with no
        frame yet: black); the tiles take the aspect of the first stream's frames."""
        import cv2

        columns = int(np.ceil(np.sqrt(len(self.streams))))
        rows = int(np.ceil(len(self.streams) / columns))
        if self.tile is None:
            first = next(s.annotated[0] for s in self.streams if s.annotated is not None)
            width = MOSAIC_WIDTH // columns
            self.tile = (width, max(2, int(round(width * first.shape[0] / first.shape[1] / 2)) * 2))
        width, height = self.tile
        view = np.zeros((rows * height, columns * width, 3), np.uint8)
        for number, stream in enumerate(self.streams):
            if stream.annotated is not None:
                image, lines, status = stream.annotated
                row, column = divmod(number, columns)
                view[row * height:(row + 1) * height, column * width:(column + 1) * width] = overlay(
                    cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), lines, status)
        return view

    def page_metrics(self, items: list[Item]) -> dict[str, Any]:
        """What the live page shows: one stream's figures, or the streams' totals and worst status."""
        timing = self.deployed.timing
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rolling = [s.rolling_metrics() for s in self.streams]
        measured = [r for r in rolling if r["samples"]]

        def mean(key: str) -> float | None:
            values = [r[key] for r in measured if r[key] is not None]
            return float(np.mean(values)) if values else None

        statuses = [s.status() for s in self.streams]
        status = next((state for state in ("drift", "insufficient data", "pass") if state in statuses), statuses[0])
        return {"frames": sum(s.frames for s in self.streams), "fps": sum(s.frames for s in self.streams) / elapsed,
                "latency_p50_ms": timing.percentile(50), "latency_p95_ms": timing.percentile(95),
                "shadowed": sum(len(s.reference_logits) for s in self.streams),
                "rolling_agreement": mean("agreement"), "rolling_kl": mean("kl"), "rolling_cosine": mean("cosine"),
                "status": status, "top1": items[0].stream.annotated[1][0] if not self.multi else
                f"{len(self.streams)} streams, {statuses.count('drift')} drifting"}

    # --------------------------------------------------------------------------- shadow side
    def collect(self) -> None:
        if self.shadow is None:
            return
        while True:
            try:
                (number, index), ref, dep, frame, ref_ms = self.shadow.results.get_nowait()
            except queue.Empty:
                return
            self.streams[number].compared(index, ref, dep, frame, ref_ms)

    def out_of_space(self) -> None:
        """The disk filled up: stop every stream; `finish` writes the summaries in the reserve."""
        self.stop_reason = NO_SPACE
        for stream in self.streams:
            stream.stop_reason = NO_SPACE

    def finish(self) -> RunSummary | MultiRunSummary:
        """Drain the shadow worker, close sinks, and write every summary.json (always)."""
        self.loop_ended = time.monotonic()
        self.reserve.unlink(missing_ok=True)  # its space is for the logs' last lines and the summaries
        if self.shadow is not None:
            self.shadow.close()  # the worker finishes what it was handed, then stops
            self.collect()
        for stream in self.streams:
            stream.close()
        if self.writer is not None:
            self.writer.release()
        from vitedge.live.metrics import METRICS_FILE

        summaries = [stream.finish(metrics_file=not self.multi) for stream in self.streams]
        if not self.multi:
            return summaries[0]
        atomic_write_bytes(self.out / METRICS_FILE, self.metrics.text())
        elapsed = self.loop_ended - self.started
        counts = {key: sum(getattr(s.frames, key) for s in summaries) for key in summaries[0].frames.to_dict()}
        calls = sum(self.batches.values())
        batched = sum(size * n for size, n in self.batches.items())
        summary = {
            "kind": "run", "state": "finished", "pid": os.getpid(), "source": f"{len(self.streams)} streams",
            "streams": [{"dir": f"stream{n}", "source": s.source.uri, "verdict": summaries[n].drift.verdict,
                         "alerts": summaries[n].alerts} for n, s in enumerate(self.streams)],
            "live": any(s.source.live for s in self.streams), "stop_reason": self.stop_reason,
            "started": self.started_wall, "seconds": round(elapsed, 3), "host": host_name(),
            "target": target_name(self.deployed), "frames": counts,
            "fps": counts["logged"] / elapsed if elapsed > 0 else None,
            "deployed": {"backend": self.deployed.description, "precision": self.deployed.precision_label,
                         "latency_ms": self.deployed.timing.summary()},
            "batching": {"calls": calls, "frames": batched, "mean_batch": batched / calls if calls else None,
                         "max_batch": self.deployed.max_batch,
                         "sizes": {str(size): n for size, n in sorted(self.batches.items())}},
            "alerts": any(s.alerts for s in summaries),
            "record": self.record[1] if self.record else None,
            "files": file_hashes(self.out),
        }
        from vitedge.schemas.results import MultiRunSummary

        return MultiRunSummary.from_dict(write_document(self.out / "summary.json", summary))


def _reserve(folder: Path) -> Path:
    """Space set aside in the run's folder for its summaries: on a disk that fills up during the
    run, the run still ends with a readable summary saying why it stopped."""
    path = folder / RESERVE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.write(fd, bytes(RESERVE_BYTES))  # a file system without fallocate
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path
