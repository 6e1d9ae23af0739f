"""One source's side of the live loop (vitedge/live/loop.py runs the rounds): its log lines,
drift window, alerts, Prometheus series and summary.

A stream's files are frames.jsonl (one line per frame, flushed about once a second),
events.jsonl (alerts, disconnects), disagreements/ (a few frames where the models disagreed)
and, at the end, summary.json.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vitedge.artifact import sha256_file
from vitedge.documents import write_document
from vitedge.drift import DriftThresholds, compare, per_sample, softmax
from vitedge.live.camera import Frame, FrameSource, LiveSource
from vitedge.live.options import RunOptions
from vitedge.live.shadow import SHADOW_KEYS, Shadow
from vitedge.locks import atomic_write_bytes
from vitedge.preprocess import preprocess
from vitedge.runtime.base import Session, Timing

if TYPE_CHECKING:
    from vitedge.card import ModelCard
    from vitedge.live.metrics import RunMetrics, StreamMetrics
    from vitedge.schemas.results import RunSummary

ROLLED = ("agree", "kl", "cosine", "rel_error")  # the shadow figures the rolling window averages


class Run(Protocol):
    """What a stream reads of the run it is part of (vitedge.live.loop's rounds)."""

    deployed: Session
    card: ModelCard
    options: RunOptions
    thresholds: DriftThresholds
    features: bool
    labels: list[str]
    multi: bool
    shadow: Shadow | None
    metrics: RunMetrics
    on_frame: Callable[[dict[str, Any]], None] | None
    record: tuple[Path, str | None] | None
    started: float
    started_wall: float
    loop_ended: float | None
    stop_reason: str

    def label(self, index: int) -> str: ...


def target_name(deployed: Session) -> str:
    return str((deployed.card.source.get("bundle") or {}).get("target", "none"))


def write_running(path: Path, source: str) -> None:
    write_document(path / "summary.json", {"kind": "run", "state": "running", "source": source,
                                           "pid": os.getpid(), "started": time.time()})


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file a run wrote in `folder` (its streams' included), but its own summary.json."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != "summary.json" and not p.name.startswith(".")}


def host_name() -> str:
    import socket

    return socket.gethostname()


@dataclass
class Item:
    """A frame of the current round on its way through the model."""

    stream: Stream
    frame: Frame
    line: dict[str, Any]
    input: np.ndarray  # the frame as the deployed graph takes it, without the batch axis
    work_ms: float = 0.0  # time spent on this frame besides inference
    infer_ms: float = 0.0  # the model call it was in
    status: str = ""


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


class Stream:
    """One source's side of the loop: its log lines, drift window, alerts and metrics."""

    def __init__(self, number: int, source: FrameSource, out: Path, run: Run, metrics: StreamMetrics):
        self.number, self.source, self.out, self.run, self.metrics = number, source, out, run, metrics
        self.options, self.thresholds, self.features = run.options, run.thresholds, run.features
        out.mkdir(exist_ok=True)
        (out / "disagreements").mkdir()
        write_running(out, source.uri)
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

    def result(self, item: Item, logits: np.ndarray, infer_ms: float, batch: int) -> None:
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

    def annotate(self, item: Item) -> None:
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

    def done(self, item: Item) -> None:
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
            "started": run.started_wall, "seconds": round(elapsed, 3), "host": host_name(), "target": target_name(run.deployed),
            "frames": {"read": stats.read, "logged": self.frames, "dropped": stats.dropped,
                       "corrupt": stats.corrupt, "size_changes": self.size_changes,
                       "reconnects": stats.reconnects, "loops": stats.loops},
            "fps": self.frames / elapsed if elapsed > 0 else None,
            "deployed": {"backend": run.deployed.description, "precision": run.deployed.precision_label,
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
            "files": file_hashes(self.out),
        }
        if run.multi:
            summary["stream"] = self.number
        from vitedge.schemas.results import RunSummary

        return RunSummary.from_dict(write_document(self.out / "summary.json", summary))
