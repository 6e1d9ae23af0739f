"""The shadow reference: the full-precision model run on sampled frames in a worker thread, never
in the way of the live path (a two-frame hand-off queue; frames it cannot take are counted)."""

from __future__ import annotations

import queue
import threading

import numpy as np

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
    if (a.labels and b.labels and a.labels != b.labels) or (
            a.num_classes and b.num_classes and a.num_classes != b.num_classes):
        raise InputError(f"the reference's labels ({b.num_classes} classes) differ from the "
                         f"bundle's ({a.num_classes})", "pass the FP32 artifact the bundle was made from")


class Shadow:
    """Runs the reference on sampled frames in a worker thread; results come back by index."""

    def __init__(self, reference: Session) -> None:
        self.reference = reference
        self.inbox: queue.Queue[tuple[int, np.ndarray, np.ndarray, Frame] | None] = queue.Queue(maxsize=2)
        self.results: queue.Queue[tuple[int, np.ndarray, np.ndarray, Frame, float]] = queue.Queue()
        self.skipped = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="vitedge-shadow", daemon=True)
        self.thread.start()

    def offer(self, index: int, batch: np.ndarray, logits: np.ndarray, frame: Frame) -> bool:
        try:
            self.inbox.put_nowait((index, batch, logits, frame))
            return True
        except queue.Full:
            self.skipped += 1
            return False

    def _work(self) -> None:
        while (item := self.inbox.get()) is not None:
            index, batch, logits, frame = item
            try:
                reference = self.reference.infer(batch)
                self.results.put((index, reference, logits, frame, self.reference.timing.calls_ms[-1]))
            except BaseException as exc:  # reported in the summary; the live path goes on
                self.error = exc
                self.results.put((index, np.full_like(logits, np.nan), logits, frame, 0.0))

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()
