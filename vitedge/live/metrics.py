"""Prometheus metrics of a live run (prometheus_client), for fleets that watch devices.

`vitedge run --serve HOST:PORT` serves them at /metrics beside the page; `--metrics HOST:PORT`
serves only /metrics (headless devices). At the end of the run the same registry is written to
RUN_DIR/metrics.prom, the format node_exporter's textfile collector reads, so the last figures of
a run that has stopped can still be collected; they equal summary.json's.

Every series is labelled by bundle, source, stream (its position in `--source`) and target, so one
Prometheus sees a fleet, and the cameras of one device, apart.
"""

from __future__ import annotations

from typing import Any

# Latency buckets in seconds: 0.5 ms (tiny models on a desktop CPU) to 2 s (a ViT-B on a Jetson's CPU)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
METRICS_FILE = "metrics.prom"


class RunMetrics:
    """The live loop's counters, histograms and gauges in their own registry, one set of series
    per stream (`stream(number, source)`): a run with several sources is one target to scrape."""

    def __init__(self, *, bundle: str, target: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.bundle, self.target = bundle, target
        names = ("bundle", "source", "stream", "target")

        def counter(name: str, text: str) -> Any:
            return Counter(name, text, names, registry=self.registry)

        def gauge(name: str, text: str) -> Any:
            return Gauge(name, text, names, registry=self.registry)

        def histogram(name: str, text: str) -> Any:
            return Histogram(name, text, names, registry=self.registry, buckets=LATENCY_BUCKETS)

        self.counters = {
            "read": counter("vitedge_frames_read", "Frames read from the source"),
            "logged": counter("vitedge_frames_logged", "Frames run through the deployed model and logged"),
            "dropped": counter("vitedge_frames_dropped", "Frames a live source dropped (the loop was behind)"),
            "corrupt": counter("vitedge_frames_corrupt", "Frames that could not be decoded"),
            "shadowed": counter("vitedge_frames_shadowed", "Frames also run by the full-precision reference"),
            "skipped": counter("vitedge_shadow_skipped", "Shadow frames skipped because the reference was behind"),
        }
        self.inference = histogram("vitedge_inference_seconds",
                                   "Deployed model call a frame was in, host to host (a batch across streams)")
        self.loop_overhead = histogram("vitedge_loop_overhead_seconds",
                                       "Per-frame work besides inference (preprocessing, overlay, sinks, logging)")
        self.gauges = {
            "fps": gauge("vitedge_fps", "Frames per second since the run started"),
            "agreement": gauge("vitedge_rolling_agreement", "Top-1 agreement with the reference, rolling window"),
            "kl": gauge("vitedge_rolling_kl", "KL(reference || deployed), rolling window"),
            "cosine": gauge("vitedge_rolling_cosine", "Cosine with the reference (feature models), rolling window"),
            "alert": gauge("vitedge_drift_alert", "1 while the rolling window is past a drift threshold"),
        }

    def stream(self, number: int, source: str) -> StreamMetrics:
        return StreamMetrics(self, (self.bundle, source, str(number), self.target))

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class StreamMetrics:
    """One stream's series of a RunMetrics registry."""

    def __init__(self, run: RunMetrics, labels: tuple[str, ...]) -> None:
        self.counters = {key: family.labels(*labels) for key, family in run.counters.items()}
        self.gauges = {key: family.labels(*labels) for key, family in run.gauges.items()}
        self.inference = run.inference.labels(*labels)
        self.loop_overhead = run.loop_overhead.labels(*labels)
        self._totals = dict.fromkeys(self.counters, 0)

    def frame(self, inference_ms: float, loop_ms: float) -> None:
        self.inference.observe(inference_ms / 1000)
        self.loop_overhead.observe(max(loop_ms, 0.0) / 1000)

    def update(self, totals: dict[str, int], gauges: dict[str, float | None]) -> None:
        """Counters to the loop's running totals (they only grow), gauges to the current values
        (None: nothing measured yet, the gauge is left out of the scrape as NaN)."""
        for key, total in totals.items():
            if total > self._totals[key]:
                self.counters[key].inc(total - self._totals[key])
                self._totals[key] = total
        for key, value in gauges.items():
            self.gauges[key].set(float("nan") if value is None else float(value))
