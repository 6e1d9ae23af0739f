"""The live loop: frames → preprocess → deployed model → overlay → sinks, with a shadow reference.

The deployed model runs on every frame. Every N-th frame is also handed to a worker running the
full-precision reference; the hand-off queue holds two frames, so when the reference falls
behind, shadow frames are skipped and counted instead of piling up, and the live path never
waits for it. Drift metrics come from `vitedge.drift` (the same code `eval` uses).

RUN_DIR gets `frames.jsonl` (one line per frame, flushed about once a second), `events.jsonl`
(alerts, disconnects), `disagreements/` (a few frames where the models disagreed) and, at the
end — also after Ctrl-C / SIGTERM — `summary.json`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.artifact import sha256_file
from vitedge.documents import write_document
from vitedge.drift import DriftThresholds, compare, per_sample, softmax
from vitedge.live.camera import Frame, FrameSource
from vitedge.live.options import RunOptions, check_run_output
from vitedge.live.shadow import SHADOW_KEYS, Shadow, check_reference
from vitedge.locks import atomic_write_bytes, releasing
from vitedge.outputs import OutputKind, input_paths, writing
from vitedge.preprocess import preprocess
from vitedge.runtime.base import Session

if TYPE_CHECKING:
    from vitedge.schemas.results import RunSummary

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
    """Ctrl-C / SIGTERM set a flag the loop checks, so the summary is always written."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@releasing
def run_loop(deployed: Session, source: FrameSource, out_dir: str | Path, *,
             reference: Session | None = None, options: RunOptions | None = None,
             on_frame: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Run the live loop on sessions already loaded and a source already open, until the source
    ends, a limit is hit or a signal arrives (`vitedge.live.run` loads and opens them for you).

    The run directory is written as the run goes (frames.jsonl is readable during the run and
    survives a crash); summary.json says "running" until the end, then holds the figures and the
    hashes of every file the run wrote.
    """
    options = options or RunOptions()
    options.check()
    thresholds = options.thresholds(deployed.card)  # refused before anything is written
    if reference is not None:
        check_reference(deployed, reference)
    reads = (deployed.origin, reference.origin if reference is not None else (), source.uri)
    out, record = check_run_output(out_dir, overwrite=options.overwrite, reads=reads, record=options.record)
    from vitedge.live.metrics import RunMetrics
    from vitedge.live.serve import LiveServer

    metrics = RunMetrics(bundle=str(deployed.origin[0]) if deployed.origin else deployed.card.architecture,
                         source=source.uri,
                         target=str((deployed.card.source.get("bundle") or {}).get("target", "none")))
    title = f"{deployed.card.architecture} — {source.uri}"
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
            (folder / "disagreements").mkdir()
            write_document(folder / "summary.json", {"kind": "run", "state": "running",
                                                     "source": source.uri, "pid": os.getpid(),
                                                     "started": time.time()})
            state = _Loop(deployed, source, folder, reference, options, thresholds, server, on_frame, record,
                          metrics)
            try:
                with _Stopper() as stopper:
                    state.loop(stopper)
            finally:
                summary = state.finish()
    finally:
        for opened in servers:
            opened.close()
    return summary


class _Loop:
    def __init__(self, deployed: Session, source: FrameSource, out: Path, reference: Session | None,
                 options: RunOptions, thresholds: DriftThresholds, server: Any,
                 on_frame: Callable[[dict[str, Any]], None] | None,
                 record: tuple[Path, str | None] | None = None, metrics: Any = None):
        self.deployed, self.source, self.out, self.options = deployed, source, out, options
        self.record = record
        self.server, self.on_frame, self.metrics = server, on_frame, metrics
        self.card = deployed.card
        self.thresholds = thresholds
        self.features = self.card.num_classes is None  # no classifier head: compare vectors
        self.labels = self.card.labels or [str(i) for i in range(self.card.num_classes or 0)]
        self.shadow = Shadow(reference) if reference is not None and options.shadow_every else None
        self.frames_log = open(out / "frames.jsonl", "w")
        self.events_log = open(out / "events.jsonl", "w")
        self.pending: dict[int, dict[str, Any]] = {}  # frame lines waiting for their shadow result
        self.rolling: deque[dict[str, float]] = deque(maxlen=options.window)
        self.reference_logits: list[np.ndarray] = []
        self.deployed_logits: list[np.ndarray] = []
        self.loop_ms: list[float] = []
        self.frames = self.size_changes = self.kept_disagreements = 0
        self.last_size: tuple[int, ...] | None = None
        self.alerting = False
        self.stop_reason = "end of source"
        self.started = time.monotonic()
        self.loop_ended: float | None = None  # set when the loop stops (finish)
        self.started_wall = time.time()
        self.last_flush = self.started
        self.writer: Any = None
        self.window_ok = True

    # ---------------------------------------------------------------------------- the loop
    def loop(self, stopper: _Stopper) -> None:
        options = self.options
        while True:
            if stopper.reason:
                self.stop_reason = stopper.reason
                break
            if options.frames is not None and self.frames >= options.frames:
                self.stop_reason = f"--frames {options.frames} reached"
                break
            if options.duration is not None and time.monotonic() - self.started >= options.duration:
                self.stop_reason = f"--duration {options.duration:g} s reached"
                break
            frame = self.source.read()
            if frame is None:
                self.stop_reason = ("source disconnected" if self.source.live else "end of source")
                break
            self.step(frame)
            self.collect()

    def step(self, frame: Frame) -> None:
        began = time.perf_counter()
        line: dict[str, Any] = {"index": frame.index, "time": round(time.time(), 4),
                                "t": round(time.monotonic() - self.started, 4), "name": frame.name}
        self.frames += 1
        if frame.image is None:
            line["corrupt"] = True
            self._write(line)
            return
        size = tuple(frame.image.shape)
        if self.last_size is not None and size != self.last_size:
            self.size_changes += 1
            self.event("frame size changed", {"from": list(self.last_size), "to": list(size)})
        self.last_size = size
        pre, pixels = self.card.preprocessing, self.deployed.pixels
        if pixels is None:
            batch = preprocess(frame.image, pre, frame_channel_order="BGR")[None]
            logits = self.deployed.infer(batch)
        else:  # the graph preprocesses: the frame goes in as it is (at the capture size)
            logits = self.deployed.infer_pixels(pixels.from_image(frame.image, pre,
                                                                  frame_channel_order="BGR")[None])
        infer_ms = self.deployed.timing.calls_ms[-1]
        if self.features:  # a feature vector has no classes to rank
            line["norm"] = round(float(np.linalg.norm(logits[0])), 5)
        else:
            probabilities = softmax(logits)[0]
            order = np.argsort(-probabilities)[:self.options.top_k]
            line["top"] = [[int(i), self._label(i), round(float(probabilities[i]), 5)] for i in order]
        line["latency_ms"] = round(infer_ms, 3)
        if self.shadow is not None and frame.index % self.options.shadow_every == 0 and \
                self.shadow.offer(frame.index, batch if pixels is None else
                                  preprocess(frame.image, pre, frame_channel_order="BGR")[None], logits, frame):
            self.pending[frame.index] = line
        status = self.status()
        if self.record or self.options.show or self.server is not None:
            self.sinks(frame, line, status)
        line["loop_ms"] = round((time.perf_counter() - began) * 1000 - infer_ms, 3)
        self.loop_ms.append(line["loop_ms"])
        if self.metrics is not None:
            self.metrics.frame(infer_ms, line["loop_ms"])
            self.publish_metrics()
        if frame.index not in self.pending:
            self._write(line)
        if self.on_frame is not None:
            self.on_frame(line)

    def publish_metrics(self) -> None:
        """The Prometheus counters and gauges to the loop's figures (summary.json's, at the end)."""
        stats, rolling = self.source.stats, self.rolling_metrics()
        elapsed = (self.loop_ended or time.monotonic()) - self.started
        self.metrics.update(
            {"read": stats.read, "logged": self.frames, "dropped": stats.dropped, "corrupt": stats.corrupt,
             "shadowed": len(self.reference_logits), "skipped": self.shadow.skipped if self.shadow else 0},
            {"fps": self.frames / elapsed if elapsed > 0 else None, "agreement": rolling["agreement"],
             "kl": rolling["kl"], "cosine": rolling["cosine"], "alert": float(self.alerting)})

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    def sinks(self, frame: Frame, line: dict[str, Any], status: str) -> None:
        import cv2

        timing = self.deployed.timing
        fps = self.frames / max(time.monotonic() - self.started, 1e-6)
        rolling = self.rolling_metrics()
        lines = [f"features, norm {line['norm']:.2f}"] if self.features else [
            f"{label} {100 * p:.1f}%" for _i, label, p in line["top"][:3]]
        lines.append(f"{fps:.1f} FPS  {line['latency_ms']:.1f} ms")
        closeness = (f"  cosine {rolling['cosine']:.3f}" if self.features else
                     f"  agree {100 * rolling['agreement']:.0f}%") if rolling["samples"] else ""
        lines.append(f"shadow: {status}{closeness}")
        annotated = overlay(frame.image, lines, status)
        if self.record:
            if self.writer is None:
                height, width = annotated.shape[:2]
                self.record[0].parent.mkdir(parents=True, exist_ok=True)
                self.writer = cv2.VideoWriter(str(self.record[0]), cv2.VideoWriter_fourcc(*"mp4v"),
                                              self.source.fps or 30.0, (width, height))
            self.writer.write(annotated)
        if self.options.show:
            try:
                cv2.imshow("vitedge run", annotated)
                cv2.waitKey(1)
            except cv2.error:
                self.options.show = False
                self.event("no GUI", {"message": "this OpenCV has no window support; --show is off"})
        if self.server is not None:
            ok, jpeg = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, 80])
            self.server.publish(jpeg.tobytes() if ok else None, {
                "frames": self.frames, "fps": fps, "latency_p50_ms": timing.percentile(50),
                "latency_p95_ms": timing.percentile(95), "shadowed": len(self.reference_logits),
                "rolling_agreement": rolling["agreement"], "rolling_kl": rolling["kl"],
                "rolling_cosine": rolling["cosine"],
                "status": status, "top1": lines[0]})

    # --------------------------------------------------------------------------- shadow side
    def collect(self) -> None:
        if self.shadow is None:
            return
        while True:
            try:
                index, ref, dep, frame, ref_ms = self.shadow.results.get_nowait()
            except queue.Empty:
                return
            line = self.pending.pop(index, {"index": index})
            if np.all(np.isfinite(ref)):
                metrics = per_sample(ref, dep, features=self.features)
                keys = ("cosine", "rel_error") if self.features else SHADOW_KEYS
                shadow: dict[str, Any] = {k: round(float(metrics[k][0]), 6) for k in keys}
                if not self.features:
                    shadow["reference_top1"] = self._label(int(metrics["ref_top1"][0]))
                shadow["reference_ms"] = round(ref_ms, 3)
                line["shadow"] = shadow
                self.reference_logits.append(ref[0])
                self.deployed_logits.append(dep[0])
                self.rolling.append(shadow)
                off = shadow["cosine"] < self.thresholds.min_cosine if self.features else not shadow["agree"]
                if off and self.kept_disagreements < self.options.keep_disagreements:
                    self.keep_disagreement(frame, line, shadow)
                self.check_alert()
            self._write(line)

    def keep_disagreement(self, frame: Frame, line: dict[str, Any], shadow: dict[str, Any]) -> None:
        import cv2

        name = f"frame{frame.index:07d}.jpg"
        cv2.imwrite(str(self.out / "disagreements" / name), frame.image)
        line["saved"] = f"disagreements/{name}"
        self.kept_disagreements += 1

    def rolling_metrics(self) -> dict[str, float | None]:
        if not self.rolling:
            return {"agreement": None, "kl": None, "cosine": None, "rel_error": None, "samples": 0}

        def mean(key: str) -> float | None:
            return None if self.features and key in ("agree", "kl") or not self.features and key == "rel_error" \
                else float(np.mean([r[key] for r in self.rolling]))

        return {"agreement": mean("agree"), "kl": mean("kl"), "cosine": mean("cosine"),
                "rel_error": mean("rel_error"), "samples": len(self.rolling)}

    def status(self) -> str:
        rolling = self.rolling_metrics()
        if self.shadow is None:
            return "no shadow"
        if rolling["samples"] < self.thresholds.min_samples:
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

    def finish(self) -> RunSummary:
        """Drain the shadow worker, close sinks, and write summary.json (always)."""
        self.loop_ended = time.monotonic()
        if self.shadow is not None:
            self.shadow.close()  # the worker finishes what it was handed, then stops
            self.collect()
        for line in sorted(self.pending.values(), key=lambda item: item["index"]):
            self._write(line)  # shadow result lost (worker error): the frame is still logged
        self.pending.clear()
        self.source.close()
        for event in self.source.stats.events:
            self.event(event["event"], {k: v for k, v in event.items() if k not in ("event", "time")})
        if self.writer is not None:
            self.writer.release()
        self.frames_log.close()
        self.events_log.close()
        elapsed = self.loop_ended - self.started
        drift = compare(np.array(self.reference_logits).reshape(len(self.reference_logits), -1),
                        np.array(self.deployed_logits).reshape(len(self.deployed_logits), -1),
                        self.thresholds, features=self.features) if self.reference_logits else \
            compare(np.zeros((0, 1)), np.zeros((0, 1)), self.thresholds, features=self.features)
        timing = self.deployed.timing
        stats = self.source.stats
        if self.metrics is not None:  # the last figures, also for a collector after the run
            from vitedge.live.metrics import METRICS_FILE

            self.publish_metrics()
            atomic_write_bytes(self.out / METRICS_FILE, self.metrics.text())
        summary = {
            "kind": "run", "state": "finished", "pid": os.getpid(),
            "source": self.source.uri, "live": self.source.live, "stop_reason": self.stop_reason,
            "started": self.started_wall, "seconds": round(elapsed, 3),
            "frames": {"read": stats.read, "logged": self.frames, "dropped": stats.dropped,
                       "corrupt": stats.corrupt, "size_changes": self.size_changes,
                       "reconnects": stats.reconnects, "loops": stats.loops},
            "fps": self.frames / elapsed if elapsed > 0 else None,
            "deployed": {"backend": self.deployed.description, "precision": self.deployed.precision,
                         "latency_ms": timing.summary()},
            "loop_overhead_ms": {"p50": float(np.percentile(self.loop_ms, 50)) if self.loop_ms else None,
                                 "p95": float(np.percentile(self.loop_ms, 95)) if self.loop_ms else None,
                                 "covers": "preprocessing, overlay, sinks and logging; not inference "
                                           "and not waiting for frames"},
            "shadow": None if self.shadow is None else {
                "every": self.options.shadow_every, "compared": len(self.reference_logits),
                "skipped_reference_behind": self.shadow.skipped,
                "reference": self.shadow.reference.description,
                "reference_latency_ms": self.shadow.reference.timing.summary(),
                "error": repr(self.shadow.error) if self.shadow.error else None},
            "drift": drift.to_dict(),
            "rolling_window": self.options.window,
            "alerts": not self.window_ok,
            "labels": self.labels,
            "disagreements_saved": self.kept_disagreements,
            "record": self.record[1] if self.record else None,
        }
        summary["files"] = {p.relative_to(self.out).as_posix(): sha256_file(p)
                            for p in sorted(self.out.rglob("*"))
                            if p.is_file() and p.name != "summary.json" and not p.name.startswith(".")}
        from vitedge.schemas.results import RunSummary

        return RunSummary.from_dict(write_document(self.out / "summary.json", summary))
