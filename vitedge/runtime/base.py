"""One Session base class: input validation and per-call timing. Backends only run the model.

Like Polygraphy's runners, each backend writes `_infer` (and its constructor); everything a user
can get wrong about a batch is checked here, once, with the same messages for every backend.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.errors import InputError

if TYPE_CHECKING:
    from vitedge.preprocess import PixelInput


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]  # None or a name for a dynamic dimension
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Timing:
    """Wall-clock milliseconds of every `infer` call (host to host, copies included)."""

    calls_ms: list[float] = field(default_factory=list)
    images: int = 0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.calls_ms, q)) if self.calls_ms else None

    def summary(self) -> dict[str, Any]:
        total_s = sum(self.calls_ms) / 1000
        return {"calls": len(self.calls_ms), "images": self.images,
                "p50_ms": self.percentile(50), "p95_ms": self.percentile(95),
                "images_per_s": self.images / total_s if total_s > 0 else None}


class Session(ABC):
    """A loaded model that maps an NCHW float32 batch to logits, and times every call."""

    backend: str = "?"
    model_path: Path | None = None  # the file the backend runs (ONNX graph or engine), if any

    def __init__(self, *, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 precision: str, max_batch: int | None = None, min_batch: int = 1,
                 description: str = "", card: Any = None, origin: tuple[Path, ...] = ()) -> None:
        self.card = card  # the model card (labels, preprocessing); None for a bare graph
        self.origin = origin  # the files it was loaded from (outputs never overwrite them)
        if len(inputs) != 1:
            raise InputError(f"the model has {len(inputs)} inputs; vitedge runs image classifiers "
                             "with exactly one image input")
        self.inputs = inputs
        self.outputs = outputs
        self.precision = precision
        self.min_batch = min_batch
        self.max_batch = max_batch
        self.description = description or self.backend
        self.timing = Timing()
        self.pixels: PixelInput | None = None  # set for bundles with the preprocessing in the graph

    @property
    def int8_share(self) -> float | None:
        """Share of the weight-layer MACs in INT8, as quantize recorded it on the card (None: float
        or unknown)."""
        if self.card is None or ("int8" not in self.precision and self.precision != "best"):
            return None
        return self.card.int8_mac_share

    @property
    def precision_label(self) -> str:
        from vitedge.formatting import precision_label

        return precision_label(self.precision, self.int8_share)

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    def check(self, batch: Any) -> np.ndarray:
        """The batch as C-contiguous float32 NCHW, or a clear error saying what was expected.

        A bundle with the preprocessing in its graph (`pixels`) takes the same normalized
        batch here, turned back into the pixels it was made from (exactly), so every caller that
        compares models on preprocessed images runs such bundles unchanged; `infer_pixels` sends
        raw frames."""
        if self.pixels is None:
            return self._checked(batch, self.input.shape, self._graph_dtype())
        height, width = self.card.preprocessing.input_size
        batch = self._checked(batch, (self.input.shape[0], 3, height, width), np.float32)
        return self.pixels.from_normalized(batch, self.card.preprocessing)

    def check_pixels(self, batch: Any) -> np.ndarray:
        """A batch of raw pixels as the graph takes them (`pixels`), or a clear error."""
        if self.pixels is None:
            raise InputError("this model takes preprocessed float32 images, not raw pixels",
                             "use infer(), or compile the bundle with --preprocess-in-graph")
        return self._checked(batch, self.input.shape, self._graph_dtype())

    def _graph_dtype(self) -> Any:
        return np.uint8 if self.input.dtype == "uint8" else np.float32

    def _checked(self, batch: Any, expected: tuple[int | str | None, ...], dtype: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise InputError(f"infer() got a {type(batch).__name__}, expected a NumPy array",
                             "pass preprocessed images as an NCHW float32 array")
        if batch.dtype != dtype:
            raise InputError(f"infer() got dtype {batch.dtype}, expected {np.dtype(dtype)}",
                             "preprocess with vitedge.preprocess (it returns float32)"
                             if self.pixels is None else f"send {self.pixels.describe()}")
        if batch.ndim != len(expected):
            raise InputError(f"infer() got a {batch.ndim}-d array of shape {batch.shape}, expected "
                             f"{len(expected)}-d {_shape_text(expected)}",
                             "stack images into one (batch, channels, height, width) array")
        for axis, (got, want) in enumerate(zip(batch.shape[1:], expected[1:]), start=1):
            if isinstance(want, int) and got != want:
                raise InputError(f"infer() got shape {tuple(batch.shape)}, expected "
                                 f"{_shape_text(expected)} (axis {axis} is {got}, not {want})",
                                 "preprocess with the model card's input size")
        size = batch.shape[0]
        if size < self.min_batch or (self.max_batch is not None and size > self.max_batch):
            raise InputError(f"batch of {size} is outside this model's batch range "
                             f"{self.min_batch}..{self.max_batch}",
                             "split the batch, or compile with a larger --batch profile")
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._timed(self.check(batch))

    def infer_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Logits for raw frames (a bundle compiled with --preprocess-in-graph)."""
        return self._timed(self.check_pixels(batch))

    def infer_native(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of what the graph itself takes (`random_batch`'s kind): preprocessed
        images, or raw pixels for a bundle with the preprocessing inside."""
        return self.infer(batch) if self.pixels is None else self.infer_pixels(batch)

    def _timed(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = self._infer(batch)
        self.timing.calls_ms.append((time.perf_counter() - start) * 1000)
        self.timing.images += len(batch)
        return logits

    def infer_all(self, data: Any, batch_size: int = 32) -> np.ndarray:
        """Logits for every sample of a DataSet (anything with `.batches(n)`) or an NCHW array, in
        batches the model takes."""
        step = min(batch_size, self.max_batch or batch_size)
        batches = (data[i:i + step] for i in range(0, len(data), step)) \
            if isinstance(data, np.ndarray) else data.batches(step)
        return np.concatenate([self.infer(batch) for batch in batches]).astype(np.float32, copy=False)

    def latency(self, batch: int, runs: int, warmup: int, seed: int = 0) -> dict[str, float | None]:
        """Median and p95 milliseconds of `runs` calls on one seeded random batch (after `warmup`)."""
        inputs = self.random_batch(batch, seed)
        for _ in range(warmup):
            self.infer_native(inputs)
        self.timing = Timing()
        for _ in range(runs):
            self.infer_native(inputs)
        summary = self.timing.summary()
        p50 = summary["p50_ms"]
        return {"p50_ms": p50, "p95_ms": summary["p95_ms"],
                "images_per_s": batch * 1000 / p50 if p50 else None}

    def random_batch(self, batch: int, seed: int = 0) -> np.ndarray:
        """A seeded batch of what the graph takes: normal noise, or whole pixel values (raw
        pixels, of either dtype)."""
        shape = [d if isinstance(d, int) else batch for d in self.input.shape]
        shape[0] = batch
        rng = np.random.default_rng(seed)
        if self.pixels is None and self._graph_dtype() is np.float32:
            return rng.standard_normal(shape, dtype=np.float32)
        return rng.integers(0, 256, shape).astype(self._graph_dtype())

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a checked batch; return float32 logits (batch, classes)."""

    def close(self) -> None:
        """Release what the backend holds (device memory, sessions)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision,
                "description": self.description,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "batch": [self.min_batch, self.max_batch]}


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "(" + ", ".join("N" if not isinstance(d, int) else str(d) for d in shape) + ")"



def interleaved_latency(sessions: dict[str, Session], batch: int, *, rounds: int = 6, runs: int = 10,
                        warmup: int = 3, pause: float = 0.05,
                        on_round: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """p50 ms per session at one batch size, measured in alternating rounds (median of the rounds).

    On a shared or thermally throttled machine, timing A fully and then B measures the machine's
    mood as much as the models; alternating short rounds exposes both to the same conditions.
    Before each switch the machine idles `pause` seconds and `warmup` calls go untimed: the
    previous runtime's worker threads keep spinning on the same cores for a while (two ONNX
    Runtime sessions alternated back to back measured 16 ms instead of 9.8 ms each on a 2-core
    EPYC; with a 50 ms pause, 9.8 ms).
    """
    measured: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(rounds):
        for name, session in sessions.items():
            time.sleep(pause)
            p50 = session.latency(batch, runs, warmup)["p50_ms"]
            assert p50 is not None  # runs >= 1
            measured[name].append(p50)
        if on_round is not None:  # (rounds done - 1, rounds): a progress bar's tick
            on_round(index, rounds)
    return {name: float(np.median(values)) for name, values in measured.items()}
