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
totals and batching; `vitedge report RUN_DIR` writes the fleet report of its streams.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.artifact import sha256_file
from vitedge.documents import write_document
from vitedge.drift import DriftThresholds, compare, per_sample, softmax
from vitedge.errors import InputError
from vitedge.live.camera import Frame, FrameSource, LiveSource
from vitedge.live.options import RunOptions, check_run_output
from vitedge.live.shadow import SHADOW_KEYS, Shadow, check_reference
from vitedge.locks import atomic_write_bytes, releasing
from vitedge.outputs import OutputKind, input_paths, writing
from vitedge.preprocess import preprocess
from vitedge.runtime.base import Session, Timing

if TYPE_CHECKING:
    from vitedge.live.metrics import RunMetrics, StreamMetrics
    from vitedge.schemas.results import MultiRunSummary, RunSummary

ROUND_WAIT_S = 0.05  # several sources: how long a round waits for live streams that have no frame yet
ROLLED = ("agree", "kl", "cosine", "rel_error")  # the shadow figures the rolling window averages
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
                         target=_target(deployed))
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


def _target(deployed: Session) -> str:
    return str((deployed.card.source.get("bundle") or {}).get("target", "none"))


def _running(path: Path, source: str) -> None:
    write_document(path / "summary.json", {"kind": "run", "state": "running", "source": source,
                                           "pid": os.getpid(), "started": time.time()})


def _hashes(folder: Path) -> dict[str, str]:
    """Every file a run wrote in `folder` (its streams' included), but its own summary.json."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != "summary.json" and not p.name.startswith(".")}


@dataclass
class _Item:
    """A frame of the current round on its way through the model."""

    stream: _Stream
    frame: Frame
    line: dict[str, Any]
    input: np.ndarray  # the frame as the deployed graph takes it, without the batch axis
    work_ms: float = 0.0  # time spent on this frame besides inference
    infer_ms: float = 0.0  # the model call it was in
    status: str = ""


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
            _running(out, f"{len(sources)} streams")
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.loop_ended: float | None = None  # set when the loop stops (finish)
        try:
            self.streams = [_Stream(number, source, out / f"stream{number}" if self.multi else out, self,
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

    def prepare(self, stream: _Stream, frame: Frame) -> _Item | None:
        began = time.perf_counter()
        line = stream.take(frame)
        if line is None:  # corrupt: logged as such
            return None
        pre, pixels = self.card.preprocessing, self.deployed.pixels
        if pixels is None:
            item = _Item(stream, frame, line, preprocess(frame.image, pre, frame_channel_order="BGR"))
        else:  # the graph preprocesses: the frame goes in as it is (at the capture size)
            item = _Item(stream, frame, line, pixels.from_image(frame.image, pre, frame_channel_order="BGR"))
        item.work_ms = (time.perf_counter() - began) * 1000
        return item

    def step(self, items: list[_Item]) -> None:
        """Infer the round's frames in batches up to the batch profile, then sinks and logs."""
        groups: dict[tuple[int, ...], list[_Item]] = {}
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

    def infer(self, chunk: list[_Item]) -> None:
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

    def sinks(self, items: list[_Item]) -> None:
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

    def page_metrics(self, items: list[_Item]) -> dict[str, Any]:
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
            "started": self.started_wall, "seconds": round(elapsed, 3), "host": _host(),
            "target": _target(self.deployed), "frames": counts,
            "fps": counts["logged"] / elapsed if elapsed > 0 else None,
            "deployed": {"backend": self.deployed.description, "precision": self.deployed.precision,
                         "latency_ms": self.deployed.timing.summary()},
            "batching": {"calls": calls, "frames": batched, "mean_batch": batched / calls if calls else None,
                         "max_batch": self.deployed.max_batch,
                         "sizes": {str(size): n for size, n in sorted(self.batches.items())}},
            "alerts": any(s.alerts for s in summaries),
            "record": self.record[1] if self.record else None,
            "files": _hashes(self.out),
        }
        from vitedge.schemas.results import MultiRunSummary

        return MultiRunSummary.from_dict(write_document(self.out / "summary.json", summary))


class LineLog:
    """A JSON-lines log that only ever holds whole lines: what the disk did not take (a full disk
    takes part of a write) stays here and goes out on the next flush, so a log cut by a full disk
    is still whole lines once the run frees its reserve and closes it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
        self.pending = bytearray()

    def write(self, text: str) -> None:
        self.pending += text.encode()

    def flush(self) -> None:
        while self.pending:
            written = os.write(self.fd, self.pending)  # raises on a full disk; what was taken is gone from pending
            del self.pending[:written]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self.fd)


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


def _host() -> str:
    import socket

    return socket.gethostname()


class _Stream:
    """One source's side of the loop: its log lines, drift window, alerts and metrics."""

    def __init__(self, number: int, source: FrameSource, out: Path, run: _Loop, metrics: StreamMetrics):
        self.number, self.source, self.out, self.run, self.metrics = number, source, out, run, metrics
        self.options, self.thresholds, self.features = run.options, run.thresholds, run.features
        out.mkdir(exist_ok=True)
        (out / "disagreements").mkdir()
        _running(out, source.uri)
        self.frames_log = LineLog(out / "frames.jsonl")
        self.events_log = LineLog(out / "events.jsonl")
        self.pending: dict[int, dict[str, Any]] = {}  # frame lines waiting for their shadow result
        self.rolling: deque[dict[str, float]] = deque(maxlen=self.options.window)
        self.rolling_sums: dict[str, float] = dict.fromkeys(ROLLED, 0.0)  # of what `rolling` holds
        self.rolled = 0  # shadow results added to the window
        self.reference_logits: list[np.ndarray] = []
        self.deployed_logits: list[np.ndarray] = []
        self.loop_ms: list[float] = []
        self.timing = Timing()  # the model call each of this stream's frames was in
        self.frames = self.size_changes = self.kept_disagreements = self.skipped = 0
        self.last_size: tuple[int, ...] | None = None
        self.alerting = False
        self.window_ok = True
        self.stop_reason: str | None = None
        self.ended: float | None = None
        self.last_flush = self.last_frame = time.monotonic()
        self.annotated: tuple[np.ndarray, list[str], str] | None = None  # the latest frame, its overlay text

    def next_frame(self, wait: float | None) -> Frame | None:
        """The next frame (a live stream: None when none came within `wait`); stop_reason is set
        when the source has ended."""
        if isinstance(self.source, LiveSource):
            frame = self.source.read(timeout=wait)
            if frame is None and self.source.ended:
                self.stop_reason = "source disconnected"
        else:
            frame = self.source.read()
            if frame is None:
                self.stop_reason = "source disconnected" if self.source.live else "end of source"
        if self.stop_reason is not None:
            self.ended = time.monotonic()
        if frame is not None:
            self.last_frame = time.monotonic()
        return frame

    def take(self, frame: Frame) -> dict[str, Any] | None:
        """The frame's log line, begun; None for a frame that could not be decoded (logged)."""
        line: dict[str, Any] = {"index": frame.index, "time": round(time.time(), 4),
                                "t": round(time.monotonic() - self.run.started, 4), "name": frame.name}
        if self.run.multi:
            line["stream"] = self.number
        self.frames += 1
        if frame.image is None:
            line["corrupt"] = True
            self._write(line)
            return None
        size = tuple(frame.image.shape)
        if self.last_size is not None and size != self.last_size:
            self.size_changes += 1
            self.event("frame size changed", {"from": list(self.last_size), "to": list(size)})
        self.last_size = size
        return line

    def result(self, item: _Item, logits: np.ndarray, infer_ms: float, batch: int) -> None:
        """The deployed model's output for one frame: ranked, and offered to the shadow."""
        line, frame = item.line, item.frame
        item.infer_ms = infer_ms
        self.timing.calls_ms.append(infer_ms)
        self.timing.images += 1
        if self.features:  # a feature vector has no classes to rank
            line["norm"] = round(float(np.linalg.norm(logits[0])), 5)
        else:
            probabilities = softmax(logits)[0]
            order = np.argsort(-probabilities)[:self.options.top_k]
            line["top"] = [[int(i), self.run.label(i), round(float(probabilities[i]), 5)] for i in order]
        line["latency_ms"] = round(infer_ms, 3)
        if self.run.multi:
            line["batch"] = batch
        shadow = self.run.shadow
        if shadow is not None and frame.index % self.options.shadow_every == 0:
            reference_input = (item.input if self.run.deployed.pixels is None else preprocess(
                frame.image, self.run.card.preprocessing, frame_channel_order="BGR"))[None]
            if shadow.offer((self.number, frame.index), reference_input, logits, frame):
                self.pending[frame.index] = line
            else:
                self.skipped += 1
        item.status = self.status()

    def annotate(self, item: _Item) -> None:
        fps = self.frames / max(time.monotonic() - self.run.started, 1e-6)
        rolling = self.rolling_metrics()
        line = item.line
        lines = [f"features, norm {line['norm']:.2f}"] if self.features else [
            f"{label} {100 * p:.1f}%" for _i, label, p in line["top"][:3]]
        if self.run.multi:
            lines.insert(0, f"[{self.number}] {self.source.uri[-40:]}")
        lines.append(f"{fps:.1f} FPS  {line['latency_ms']:.1f} ms")
        closeness = (f"  cosine {rolling['cosine']:.3f}" if self.features else
                     f"  agree {100 * rolling['agreement']:.0f}%") if rolling["samples"] else ""
        lines.append(f"shadow: {item.status}{closeness}")
        self.annotated = (item.frame.image, lines, item.status)

    def done(self, item: _Item) -> None:
        """Log the frame (or keep it for its shadow result), metrics, the progress callback."""
        line = item.line
        line["loop_ms"] = round(item.work_ms, 3)
        line["frame_ms"] = round((time.monotonic() - item.frame.time) * 1000, 3)
        self.loop_ms.append(line["loop_ms"])
        self.metrics.frame(item.infer_ms, item.work_ms)
        self.publish_metrics()
        if item.frame.index not in self.pending:
            self._write(line)
        if self.run.on_frame is not None:
            self.run.on_frame(line)

    def publish_metrics(self) -> None:
        """The Prometheus counters and gauges to the stream's figures (summary.json's, at the end)."""
        stats, rolling = self.source.stats, self.rolling_metrics()
        elapsed = self.elapsed()
        self.metrics.update(
            {"read": stats.read, "logged": self.frames, "dropped": stats.dropped, "corrupt": stats.corrupt,
             "shadowed": len(self.reference_logits), "skipped": self.skipped},
            {"fps": self.frames / elapsed if elapsed > 0 else None, "agreement": rolling["agreement"],
             "kl": rolling["kl"], "cosine": rolling["cosine"], "alert": float(self.alerting)})

    def elapsed(self) -> float:
        """Seconds from the run's start to this stream's end (or the run's, or now)."""
        return (self.ended or self.run.loop_ended or time.monotonic()) - self.run.started

    # --------------------------------------------------------------------------- shadow side
    def compared(self, index: int, ref: np.ndarray, dep: np.ndarray, frame: Frame, ref_ms: float) -> None:
        line = self.pending.pop(index, {"index": index})
        if np.all(np.isfinite(ref)):
            metrics = per_sample(ref, dep, features=self.features)
            keys = ("cosine", "rel_error") if self.features else SHADOW_KEYS
            shadow: dict[str, Any] = {k: round(float(metrics[k][0]), 6) for k in keys}
            if not self.features:
                shadow["reference_top1"] = self.run.label(int(metrics["ref_top1"][0]))
            shadow["reference_ms"] = round(ref_ms, 3)
            line["shadow"] = shadow
            self.reference_logits.append(ref[0])
            self.deployed_logits.append(dep[0])
            self._roll(shadow)
            off = shadow["cosine"] < self.thresholds.min_cosine if self.features else not shadow["agree"]
            if off and self.kept_disagreements < self.options.keep_disagreements:
                self.keep_disagreement(frame, line)
            self.check_alert()
        self._write(line)

    def keep_disagreement(self, frame: Frame, line: dict[str, Any]) -> None:
        import cv2

        name = f"frame{frame.index:07d}.jpg"
        cv2.imwrite(str(self.out / "disagreements" / name), frame.image)
        line["saved"] = f"disagreements/{name}"
        self.kept_disagreements += 1

    def _roll(self, shadow: dict[str, Any]) -> None:
        """Add a shadow result to the window, keeping its sums: the rolling figures are read on
        every frame (overlay, page, Prometheus), so they must not cost O(--window) each time."""
        window = self.rolling
        if len(window) == window.maxlen:
            for key in ROLLED:
                self.rolling_sums[key] -= window[0].get(key) or 0.0
        window.append(shadow)
        self.rolled += 1
        if self.rolled % (window.maxlen or 1) == 0:  # start again from exact sums once per window
            self.rolling_sums = {key: float(sum(r.get(key) or 0.0 for r in window)) for key in ROLLED}
        else:
            for key in ROLLED:
                self.rolling_sums[key] += shadow.get(key) or 0.0

    def rolling_metrics(self) -> dict[str, float | None]:
        if not self.rolling:
            return {"agreement": None, "kl": None, "cosine": None, "rel_error": None, "samples": 0}
        count = len(self.rolling)

        def mean(key: str) -> float | None:
            return None if self.features and key in ("agree", "kl") or not self.features and key == "rel_error" \
                else self.rolling_sums[key] / count

        return {"agreement": mean("agree"), "kl": mean("kl"), "cosine": mean("cosine"),
                "rel_error": mean("rel_error"), "samples": count}

    def status(self) -> str:
        if self.run.shadow is None:
            return "no shadow"
        if len(self.rolling) < self.thresholds.min_samples:
            return "insufficient data"
        return "drift" if self.alerting else "pass"

    def check_alert(self) -> None:
        rolling = self.rolling_metrics()
        t = self.thresholds
        if rolling["samples"] < t.min_samples:
            return
        if self.features:
            bad = rolling["cosine"] < t.min_cosine or (
                t.max_rel_error is not None and rolling["rel_error"] > t.max_rel_error)
        else:
            bad = rolling["agreement"] < t.min_agreement or (t.max_kl is not None and rolling["kl"] > t.max_kl)
        if bad and not self.alerting:
            self.alerting = True
            self.window_ok = False
            self.event("drift alert", self._evidence(rolling))
        elif not bad and self.alerting:
            self.alerting = False
            self.event("drift cleared", self._evidence(rolling))

    def _evidence(self, rolling: dict[str, Any]) -> dict[str, Any]:
        keys = ("cosine", "rel_error", "samples") if self.features else ("agreement", "kl", "samples")
        return {k: rolling[k] for k in keys}

    # ----------------------------------------------------------------------------- logging
    def event(self, kind: str, details: dict[str, Any]) -> None:
        self.events_log.write(json.dumps({"time": round(time.time(), 4), "frame": self.frames,
                                          "event": kind, **details}) + "\n")
        self.events_log.flush()

    def _write(self, line: dict[str, Any]) -> None:
        self.frames_log.write(json.dumps(line) + "\n")
        now = time.monotonic()
        if now - self.last_flush >= 1.0:
            self.frames_log.flush()
            self.last_flush = now

    def close(self) -> None:
        """Log what still waits for a shadow result, close the source and the logs."""
        for line in sorted(self.pending.values(), key=lambda item: item["index"]):
            self._write(line)  # shadow result lost (worker error): the frame is still logged
        self.pending.clear()
        self.source.close()
        for event in self.source.stats.events:
            self.event(event["event"], {k: v for k, v in event.items() if k not in ("event", "time")})
        self.frames_log.close()
        self.events_log.close()

    def finish(self, *, metrics_file: bool) -> RunSummary:
        """Write the stream's summary.json (and, for a run of one source, metrics.prom)."""
        run = self.run
        elapsed = self.elapsed()
        drift = compare(np.array(self.reference_logits).reshape(len(self.reference_logits), -1),
                        np.array(self.deployed_logits).reshape(len(self.deployed_logits), -1),
                        self.thresholds, features=self.features) if self.reference_logits else \
            compare(np.zeros((0, 1)), np.zeros((0, 1)), self.thresholds, features=self.features)
        stats = self.source.stats
        self.publish_metrics()  # the last figures, also for a collector after the run
        if metrics_file:
            from vitedge.live.metrics import METRICS_FILE

            atomic_write_bytes(self.out / METRICS_FILE, run.metrics.text())
        shadow = run.shadow
        summary = {
            "kind": "run", "state": "finished", "pid": os.getpid(),
            "source": self.source.uri, "live": self.source.live, "stop_reason": self.stop_reason or run.stop_reason,
            "started": run.started_wall, "seconds": round(elapsed, 3), "host": _host(), "target": _target(run.deployed),
            "frames": {"read": stats.read, "logged": self.frames, "dropped": stats.dropped,
                       "corrupt": stats.corrupt, "size_changes": self.size_changes,
                       "reconnects": stats.reconnects, "loops": stats.loops},
            "fps": self.frames / elapsed if elapsed > 0 else None,
            "deployed": {"backend": run.deployed.description, "precision": run.deployed.precision,
                         "latency_ms": self.timing.summary()},
            "loop_overhead_ms": {"p50": float(np.percentile(self.loop_ms, 50)) if self.loop_ms else None,
                                 "p95": float(np.percentile(self.loop_ms, 95)) if self.loop_ms else None,
                                 "covers": "preprocessing, overlay, sinks and logging; not inference "
                                           "and not waiting for frames"},
            "shadow": None if shadow is None else {
                "every": self.options.shadow_every, "compared": len(self.reference_logits),
                "skipped_reference_behind": self.skipped,
                "reference": shadow.reference.description,
                "reference_model": None if shadow.reference.card is None or shadow.reference.card.folder is None
                else str(shadow.reference.card.folder),
                "reference_latency_ms": shadow.reference.timing.summary(),
                "error": repr(shadow.error) if shadow.error else None},
            "drift": drift.to_dict(),
            "rolling_window": self.options.window,
            "alerts": not self.window_ok,
            "labels": run.labels,
            "disagreements_saved": self.kept_disagreements,
            "record": run.record[1] if run.record and not run.multi else None,
            "files": _hashes(self.out),
        }
        if run.multi:
            summary["stream"] = self.number
        from vitedge.schemas.results import RunSummary

        return RunSummary.from_dict(write_document(self.out / "summary.json", summary))
