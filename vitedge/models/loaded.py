"""What loading a model source gives: its card, and the torch module or ONNX graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitedge.card import ModelCard
from vitedge.errors import ModelLoadError

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedModel:
    card: ModelCard
    module: torch.nn.Module | None = None  # None when the source is an ONNX graph
    onnx_path: Path | None = None
    weights_path: Path | None = None  # the checkpoint the module was built from, if any
    origin: tuple[Path, ...] = ()  # the files and folders it was read from (a step never writes there)

    def torch_module(self, step: str) -> torch.nn.Module:
        if self.module is None:
            raise ModelLoadError(
                f"{step} needs a PyTorch model, but {self.card.architecture} was given as ONNX",
                "pass the torch source it was exported from (timm:NAME --weights ..., a .pt2, "
                "a Hugging Face folder, ...)")
        return self.module
