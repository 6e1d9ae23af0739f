"""PyTorch: the full-precision reference every deployed format is compared with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitedge.runtime.base import Session, TensorInfo

if TYPE_CHECKING:
    from vitedge.models.loaded import LoadedModel


class TorchSession(Session):
    backend = "torch"

    def __init__(self, loaded: LoadedModel, *, device: str = "cpu") -> None:
        import torch

        self.module = loaded.torch_module("running with PyTorch").eval().to(device)
        self.device = device
        self._torch = torch
        height, width = loaded.card.preprocessing.input_size
        dtype = next((p.dtype for p in self.module.parameters()), torch.float32)
        super().__init__(inputs=[TensorInfo("input", (None, 3, height, width), "float")],
                         outputs=[TensorInfo("logits", (None, loaded.card.num_classes), "float")],
                         precision="fp16" if dtype == torch.float16 else "fp32",
                         description=f"PyTorch {torch.__version__} on {device}",
                         card=loaded.card, origin=loaded.origin)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            logits = self.module(self._torch.from_numpy(batch).to(self.device))
            if isinstance(logits, (tuple, list)):  # DeiT-distilled heads in train mode, HF outputs
                logits = logits[0]
            return logits.float().cpu().numpy()
