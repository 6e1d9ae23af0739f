"""The shadow reference: the full-precision model run on sampled frames in a worker thread, never
in the way of the live path (a hand-off queue of two frames per stream; a frame it cannot take is
refused, and the stream counts it)."""

from __future__ import annotations

import queue
import threading

import numpy as np

from vitedge.card import ModelCard
from vitedge.errors import InputError
from vitedge.live.camera import Frame
from vitedge.runtime.base import Session

SHADOW_KEYS = ("agree", "topk_overlap", "kl", "js", "cosine", "confidence_shift")


def check_reference(deployed: Session, reference: Session) -> None:
    """Refuse a reference that cannot be compared with the deployed model."""
    a, b = deployed.card, reference.card
    if a.preprocessing.input_size != b.preprocessing.input_size:
        raise InputError(f"the reference takes {b.preprocessing.input_size} images, the bundle "
                         f"{a.preprocessing.input_size}", "pass the FP32 artifact the bundle was made from")
    ours, theirs = a.num_classes or len(a.labels or []), b.num_classes or len(b.labels or [])
    if ours and theirs and ours != theirs:
        raise InputError(f"the reference has {theirs} classes, the bundle {ours}",
                         "pass the FP32 artifact the bundle was made from")
    if a.labels and b.labels and a.labels != b.labels and not descends(a, b):
        index, (ours, theirs) = next((i, pair) for i, pair in enumerate(zip(a.labels, b.labels))
                                     if pair[0] != pair[1])
        raise InputError(f"the reference names class {index} {theirs!r}, the bundle {ours!r}, and the "
                         "bundle does not descend from it", "pass the FP32 artifact the bundle was made from")


def descends(card: ModelCard, ancestor: ModelCard) -> bool:
    """Whether `ancestor` is in `card`'s lineage (by artifact hash): its outputs are the same
    classes in the same order, whatever names a relabel or `export --labels` gave them since."""
    from vitedge.artifact import artifact_hash, lineage_parents

    return bool(ancestor.files) and any(parent["artifact_hash"] == artifact_hash(ancestor)
                                        for parent in lineage_parents(card))


Key = tuple[int, int]  # (stream, frame index)


class Shadow:
    """Runs the reference on sampled frames in a worker thread; results come back by key."""

    def __init__(self, reference: Session, *, streams: int = 1) -> None:
        self.reference = reference
        self.inbox: queue.Queue[tuple[Key, np.ndarray, np.ndarray, Frame] | None] = queue.Queue(maxsize=2 * streams)
        self.results: queue.Queue[tuple[Key, np.ndarray, np.ndarray, Frame, float]] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="vitedge-shadow", daemon=True)
        self.thread.start()

    def offer(self, key: Key, batch: np.ndarray, logits: np.ndarray, frame: Frame) -> bool:
        """Hand a frame to the worker; False (not queued) when the reference is behind."""
        try:
            self.inbox.put_nowait((key, batch, logits, frame))
            return True
        except queue.Full:
            return False

    def _work(self) -> None:
        while (item := self.inbox.get()) is not None:
            key, batch, logits, frame = item
            try:
                reference = self.reference.infer(batch)
                self.results.put((key, reference, logits, frame, self.reference.timing.calls_ms[-1]))
            except BaseException as exc:  # reported in the summary; the live path goes on
                self.error = exc
                self.results.put((key, np.full_like(logits, np.nan), logits, frame, 0.0))

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()
