"""Hugging Face `transformers` ViT-family folders written by `save_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.card import (
    CropRounding,
    Interpolation,
    ModelCard,
    Preprocessing,
    ResizeMode,
)
from vitedge.errors import InputError, MissingDependencyError, ModelLoadError
from vitedge.models.structure import hf_structure

if TYPE_CHECKING:
    import torch

    from vitedge.models.loaded import LoadedModel

SUPPORTED_TYPES = ("vit", "deit", "vit_mae", "vit_msn", "dinov2", "swin", "mobilevit")
# Families whose encoder ends in a feature map or stages: their features are the pooled output.
POOLED_TYPES = ("swin", "mobilevit")
# PIL resample codes as written in preprocessor_config.json.
_RESAMPLE = {0: Interpolation.NEAREST, 1: Interpolation.LANCZOS, 2: Interpolation.BILINEAR,
             3: Interpolation.BICUBIC}


def _wrap(model: Any, *, encoder_only: bool) -> torch.nn.Module:
    import torch

    class HFClassifier(torch.nn.Module):
        """pixel_values -> logits, so the module exports and runs like any classifier."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    class HFEncoder(torch.nn.Module):
        """pixel_values -> class-token features (after the final LayerNorm)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            kwargs: dict[str, Any] = {}
            if self.inner.config.model_type == "vit_mae":
                # ViT-MAE shuffles tokens with random noise; fixed noise keeps the forward
                # deterministic (and exportable) and, with mask_ratio=0, keeps every token.
                tokens = (pixel_values.shape[-1] // self.inner.config.patch_size) ** 2
                kwargs["noise"] = torch.arange(tokens, dtype=pixel_values.dtype).expand(
                    pixel_values.shape[0], tokens)
            outputs = self.inner(pixel_values=pixel_values, **kwargs)
            if self.inner.config.model_type in POOLED_TYPES:
                return outputs.pooler_output.flatten(1)
            return outputs.last_hidden_state[:, 0]

    return HFEncoder(model) if encoder_only else HFClassifier(model)


def pruned_source(module: torch.nn.Module) -> dict[str, Any]:
    """What a pruned artifact's card records so that loading it needs no original folder.

    The config is the pruned model's own (hf structured pruning updates hidden_size, head counts,
    head_dim and intermediate_size), so it builds the pruned shapes directly when every layer
    keeps the same widths; `structured.rebuild` shrinks whatever still differs.
    """
    inner = module.inner  # type: ignore[union-attr]
    return {"class": type(inner).__name__,
            "config": json.loads(inner.config.to_json_string(use_diff=False))}


def build_from_source(source: dict[str, Any]) -> torch.nn.Module:
    """An untrained wrapped model of the class and config a card records (see `pruned_source`)."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"transformers is needed to rebuild {source.get('class')} ({exc})",
                                     "pip install 'vitedge[hf]'") from None
    name, data = str(source.get("class")), dict(source.get("config") or {})
    model_class = getattr(transformers, name, None)
    model_type = data.get("model_type")
    if model_class is None or model_type not in transformers.CONFIG_MAPPING:
        raise ModelLoadError(f"the card records Hugging Face class {name!r} / model type {model_type!r}, "
                             f"which transformers {transformers.__version__} does not have",
                             "install the transformers version the artifact was made with")
    config = transformers.CONFIG_MAPPING[model_type].from_dict(data)
    classifier = "ImageClassification" in name
    inner = model_class(config) if classifier or model_type in POOLED_TYPES else \
        model_class(config, add_pooling_layer=False)
    return _wrap(inner.eval(), encoder_only=not classifier)


def load_hf(directory: Path) -> LoadedModel:
    from vitedge.models.loaded import LoadedModel

    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"transformers is needed to load {directory} ({exc})",
                                     "pip install 'vitedge[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # "Loading weights: 100%|..." on every load
    try:
        # trust_remote_code=False, said explicitly: otherwise transformers asks on the terminal
        # whether to run the folder's Python code, and a "y" would run it
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True,
                                                         trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory}/config.json is not a readable Hugging Face config "
                             f"({str(exc).splitlines()[0][:160]})") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_TYPES:
        raise InputError(f"Hugging Face model type {model_type!r} in {directory} is not a "
                         "supported ViT family", f"supported: {', '.join(SUPPORTED_TYPES)}")
    if not any((directory / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                                    "model.safetensors.index.json")):
        raise InputError(f"{directory} has a config.json but no weights",
                         "expected model.safetensors or pytorch_model.bin from save_pretrained")
    architectures = getattr(config, "architectures", None) or []
    classifier = any("ImageClassification" in a for a in architectures)
    distilled = any("WithTeacher" in a for a in architectures)
    if model_type == "vit_mae":
        config.mask_ratio = 0.0
    try:
        if classifier:
            inner = transformers.AutoModelForImageClassification.from_pretrained(
                directory, config=config, local_files_only=True, trust_remote_code=False)
        elif model_type == "vit_mae":
            inner = transformers.ViTMAEModel.from_pretrained(directory, config=config,
                                                             local_files_only=True, trust_remote_code=False)
        else:  # ViTModel/DeiTModel have a pooler vitedge does not use; Dinov2Model has none
            extra = {"add_pooling_layer": False} if model_type in ("vit", "deit") else {}
            inner = transformers.AutoModel.from_pretrained(directory, config=config, local_files_only=True,
                                                           trust_remote_code=False, **extra)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"weights in {directory} could not be loaded "
                             f"({str(exc).splitlines()[0][:200]})",
                             "check that config.json matches the weights") from None
    module = _wrap(inner.eval(), encoder_only=not classifier)
    pre, notes = _preprocessing(directory, config)
    id2label = getattr(config, "id2label", None) or {}
    num_classes = len(id2label) if classifier else None
    labels = [str(id2label[i]) for i in range(num_classes)] if classifier and num_classes else None
    card = ModelCard(
        architecture=f"{type(inner).__name__} (Hugging Face {model_type})",
        source={"kind": "huggingface", "path": str(directory.resolve())},
        preprocessing=pre, structure=hf_structure(config, distillation_token=distilled, module=inner),
        num_classes=num_classes, labels=labels,
    )
    card.warnings += notes
    if not classifier:
        card.warnings.append("encoder without a classifier head: outputs "
                             + ("pooled" if model_type in POOLED_TYPES else "class-token")
                             + " features, so accuracy and top-1 agreement do not apply")
    return LoadedModel(card, module)


def _preprocessing(directory: Path, config: Any) -> tuple[Preprocessing, list[str]]:
    """The folder's image processor, read exactly (resize mode and size, crop, rescale, mean/std,
    resample), from the processor transformers itself builds, so its class defaults apply too."""
    import transformers

    size = int(getattr(config, "image_size", 224))
    if not (directory / "preprocessor_config.json").is_file():
        return Preprocessing(input_size=(size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                             interpolation=Interpolation.BILINEAR, crop_pct=1.0,
                             resize_mode=ResizeMode.SQUASH, crop_rounding=CropRounding.FLOOR), [
            "no preprocessor_config.json: assuming ViTImageProcessor's defaults (resize to "
            f"{size}x{size}, bilinear, mean/std 0.5); override with --mean/--std/--interpolation"]
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(directory, local_files_only=True,
                                                                    trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{directory}/preprocessor_config.json is not a readable image processor "
                             f"({str(exc).splitlines()[0][:160]})") from None
    warnings: list[str] = []

    def pair(value: Any, what: str) -> tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value, value
        value = dict(value)
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value and "longest_edge" not in value:
            return None  # handled by the caller: shorter-side resize
        raise InputError(f"{directory}: {what} {value} is not a size vitedge can reproduce",
                         "expected {height, width} or {shortest_edge}")

    settings = processor.to_dict()  # resolved: the folder's values over the class defaults
    resize = settings.get("size") if isinstance(settings.get("size"), dict) else \
        {"height": settings.get("size") or size, "width": settings.get("size") or size}
    resize = {k: v for k, v in resize.items() if v is not None}
    crop = pair(settings.get("crop_size"), "crop_size") if settings.get("do_center_crop") else None
    if not settings.get("do_resize", True):
        warnings.append("the image processor does not resize: vitedge resizes to the model's size")
        mode, input_size, resize_size = ResizeMode.SQUASH, (size, size), None
    elif "shortest_edge" in resize:
        edge = int(resize["shortest_edge"])
        mode, resize_size = ResizeMode.SHORTER_CROP, (edge, edge)
        input_size = crop or (edge, edge)
    else:
        fixed = pair(resize, "size")
        assert fixed is not None
        mode = ResizeMode.SQUASH_CROP if crop else ResizeMode.SQUASH
        input_size, resize_size = (crop, fixed) if crop else (fixed, None)
    # a processor without the setting does not normalize (MobileViT: rescale only)
    normalize = settings.get("do_normalize", False)
    resample = settings.get("resample")
    return Preprocessing(
        input_size=input_size, resize_mode=mode, resize_size=resize_size,
        mean=tuple(float(v) for v in settings.get("image_mean") or (0.5,) * 3) if normalize else (0.0,) * 3,  # type: ignore[arg-type]
        std=tuple(float(v) for v in settings.get("image_std") or (0.5,) * 3) if normalize else (1.0,) * 3,  # type: ignore[arg-type]
        interpolation=_RESAMPLE.get(int(resample if resample is not None else 2), Interpolation.BILINEAR),
        crop_pct=1.0, crop_rounding=CropRounding.FLOOR,
        channel_order="BGR" if settings.get("do_flip_channel_order") else "RGB",  # MobileViT's checkpoints
        scale=float(settings.get("rescale_factor") or 1 / 255) if settings.get("do_rescale", True) else 1.0,
    ), warnings
