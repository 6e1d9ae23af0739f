"""The model card: everything later steps need about a model, and nobody should re-derive.

A card travels with every artifact as `card.json`. It holds the preprocessing contract (the
one place resize, crop, interpolation, mean/std and channel order are decided), the ViT
structure, the labels, and the lineage of steps that made the artifact.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from vitedge.errors import InputError
from vitedge.schemas.base import Count, Positive

# The constraints card.json is validated against (vitedge/schemas/card.py reads these classes
# themselves); __post_init__ says the same in users' words when code or options build one.
StdDev = Annotated[float, Field(gt=0)]

CARD_VERSION = 2  # 2: sealed (see vitedge.documents)


class Interpolation(StrEnum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


class ResizeMode(StrEnum):
    """How an image reaches the model's input size.

    `shorter-crop` is timm/torchvision eval (and Hugging Face `shortest_edge` processors): resize
    the shorter side to `resize_size` (default size / crop_pct), keeping the aspect, then
    centre-crop. `squash` is Hugging Face ViT: resize straight to the input size, aspect ignored.
    `squash-crop` is Hugging Face DeiT: resize to `resize_size` (height, width), aspect ignored,
    then centre-crop to the input size.
    """

    SHORTER_CROP = "shorter-crop"
    SQUASH = "squash"
    SQUASH_CROP = "squash-crop"


class CropRounding(StrEnum):
    """Where an odd centre crop puts its extra pixel: torchvision rounds, Hugging Face floors."""

    ROUND = "round"
    FLOOR = "floor"


class Layout(StrEnum):
    """How a graph with the preprocessing inside takes its frames (vitedge.preprocess.PixelInput)."""

    NHWC = "NHWC"  # what cameras, OpenCV and most clients hold
    NCHW = "NCHW"


class PixelType(StrEnum):
    UINT8 = "uint8"
    FLOAT32 = "float32"  # still raw 0..255 values (DeepStream's nvinfer feeds float tensors)


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[Positive, Positive]  # (height, width) the model takes
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[StdDev, StdDev, StdDev] = (0.229, 0.224, 0.225)
    interpolation: Interpolation = Interpolation.BICUBIC
    crop_pct: Annotated[float, Field(gt=0.0, le=1.0)] = 0.875
    resize_mode: ResizeMode = ResizeMode.SHORTER_CROP
    channel_order: Literal["RGB", "BGR"] = "RGB"  # order of the model's input channels
    scale: Annotated[float, Field(gt=0.0)] = 1.0 / 255.0  # pixel value -> [0, 1] before mean/std
    resize_size: tuple[Positive, Positive] | None = None  # before the crop: (shorter side, same) or (h, w)
    crop_rounding: CropRounding = CropRounding.ROUND

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise InputError(f"input size {self.input_size} is not (height, width) > 0",
                             "give the size as two positive integers, e.g. 224,224")
        if not 0.0 < self.crop_pct <= 1.0:
            raise InputError(f"crop_pct {self.crop_pct} is outside (0, 1]",
                             "timm uses 0.875-1.0; 1.0 means no crop")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError(f"mean {self.mean} / std {self.std} must be three values, std > 0",
                             "give per-channel values in [0, 1] units, e.g. 0.5,0.5,0.5")
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel order {self.channel_order!r} is not RGB or BGR")
        if self.resize_size is not None and (len(self.resize_size) != 2 or min(self.resize_size) <= 0):
            raise InputError(f"resize size {self.resize_size} is not two sizes > 0")
        if not self.scale > 0:
            raise InputError(f"pixel scale {self.scale} is not > 0", "e.g. 1/255 for 0..255 pixels")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_size"] = list(self.input_size)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        out["interpolation"] = str(self.interpolation)
        out["resize_mode"] = str(self.resize_mode)
        out["resize_size"] = list(self.resize_size) if self.resize_size else None
        out["crop_rounding"] = str(self.crop_rounding)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=tuple(int(v) for v in data["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in data.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data.get("std", cls.std)),  # type: ignore[arg-type]
            interpolation=Interpolation(data.get("interpolation", "bicubic")),
            crop_pct=float(data.get("crop_pct", 0.875)),
            resize_mode=ResizeMode(data.get("resize_mode", "shorter-crop")),
            channel_order=data.get("channel_order", "RGB"),
            scale=float(data.get("scale", 1.0 / 255.0)),
            resize_size=tuple(int(v) for v in data["resize_size"]) if data.get("resize_size") else None,  # type: ignore[arg-type]
            crop_rounding=CropRounding(data.get("crop_rounding", "round")),
        )


@dataclass(frozen=True)
class VitStructure:
    """The transformer shape that pruning, quantization and reports reason about.

    Fields are None where the source does not reveal them (e.g. head count in an ONNX file).
    """

    is_vit: bool
    patch_size: Positive | None = None
    embed_dim: Positive | None = None
    depth: Positive | None = None
    num_heads: Positive | None = None
    mlp_hidden: Positive | None = None
    num_prefix_tokens: Count | None = None  # class + distillation + register tokens
    class_token: bool | None = None
    distillation_token: bool = False
    global_pool: str | None = None  # "token", "avg", "map" (attention pool), ...
    hybrid_stem: bool = False  # CNN backbone before the transformer (e.g. vit_*_r50_*)
    register_tokens: Count = 0  # extra learned tokens (DINOv2 with registers), part of the prefix
    family: str | None = None  # "vit", "eva", "beit", "swin" (hierarchical), ...
    hierarchical: bool = False  # stages of shrinking resolution (Swin): widths are the first stage's
    # How tokens are laid out: "flat" (one sequence), "pyramid" (stages of shrinking resolution),
    # "class-attention" (a class token attends to frozen patch tokens: CaiT, XCiT), "cross-scale"
    # (two token sequences that attend to each other: CrossViT), "none" (no attention: a CNN)
    token_layout: str | None = None
    attention_layers: Count | None = None  # attention modules in the whole model
    stage_widths: list[Positive] | None = None  # channels of each stage (timm's feature_info)
    stage_depths: list[Count] | None = None  # blocks in each stage
    stage_attention: list[Count] | None = None  # attention modules in each stage (0: convolutions only)
    stage_heads: list[Positive | None] | None = None  # heads of each stage's first attention module

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VitStructure:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ModelCard:
    """What an artifact is, how to feed it, and where it came from."""

    architecture: str
    source: dict[str, Any]  # how to rebuild the torch module: {"kind": "timm", "name": ..., ...}
    preprocessing: Preprocessing
    structure: VitStructure
    num_classes: int | None = None
    labels: list[str] | None = None
    class_ids: list[str] | None = None  # e.g. ImageNet synsets, as ImageFolders often name classes
    params: int | None = None
    macs: int | None = None  # multiply-accumulates for one image at input_size
    format: str = "torch"  # "torch" | "onnx" | ...
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    lineage: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # where the card was read from (set by artifact.read_card, never written): what a derived
    # card records as its parent's path, so a bundle finds its reference in another folder
    folder: Path | None = field(default=None, compare=False, repr=False)

    @property
    def int8_mac_share(self) -> float | None:
        """Share of the Linear/Conv MACs quantize left in INT8 (None: the model was not quantized)."""
        share = (self.metrics.get("quantization") or {}).get("int8_linear_mac_share")
        return float(share) if share is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_version": CARD_VERSION,
            "architecture": self.architecture,
            "format": self.format,
            "source": self.source,
            "num_classes": self.num_classes,
            "params": self.params,
            "macs": self.macs,
            "preprocessing": self.preprocessing.to_dict(),
            "structure": self.structure.to_dict(),
            "labels": self.labels,
            "class_ids": self.class_ids,
            "files": self.files,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                architecture=data["architecture"],
                source=dict(data.get("source") or {}),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                structure=VitStructure.from_dict(data.get("structure") or {"is_vit": False}),
                num_classes=data.get("num_classes"),
                labels=data.get("labels"),
                class_ids=data.get("class_ids"),
                params=data.get("params"),
                macs=data.get("macs"),
                format=data.get("format", "torch"),
                files=dict(data.get("files") or {}),
                lineage=list(data.get("lineage") or []),
                metrics=dict(data.get("metrics") or {}),
                warnings=list(data.get("warnings") or []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"card.json is malformed: {exc!r}",
                             "re-create the artifact with `vitedge export`") from None

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


def read_labels_file(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list / index -> name object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels file {path} is not readable UTF-8 text ({type(exc).__name__})",
                         "give one class name per line, or a JSON list") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            if isinstance(data, dict):
                data = [data[k] for k in sorted(data, key=int)]
        except (json.JSONDecodeError, ValueError) as exc:
            raise InputError(f"labels file {path} is not a JSON list or index -> name object ({exc})",
                             'e.g. ["cat", "dog"] or {"0": "cat", "1": "dog"}') from None
        if not isinstance(data, list) or not all(isinstance(v, (str, int, float)) for v in data):
            raise InputError(f"labels file {path} is not a JSON list of names", 'e.g. ["cat", "dog"]')
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]
