"""Load any supported model source into a torch module (or an ONNX graph) plus its model card.

Sources (see `load`):
  timm:NAME [--weights CKPT] [model kwargs]     timm architectures, any pretrained tag
  torchvision:NAME [--weights CKPT]             torchvision VisionTransformer builders
  DIR with config.json                          Hugging Face ViT / DeiT / ViT-MAE (save_pretrained)
  FILE.pt2                                      torch.export programs (with trust_pickle=True)
  FILE.pt / .pth / .ts (TorchScript archive)    torch.jit.save output (with trust_pickle=True)
  FILE.pt with a whole pickled nn.Module        only with trust_pickle=True
  FILE.onnx                                     inspect / export-time checks; torch steps refuse
  DIR with card.json                            a vitedge artifact
  builtin:digits-vit (or digits-vit)            the shipped default model
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge import ASSETS
from vitedge.artifact import is_artifact, onnx_file, read_card, verify_files
from vitedge.card import (
    Interpolation,
    ModelCard,
    Preprocessing,
    ResizeMode,
    VitStructure,
)
from vitedge.errors import InputError, MissingDependencyError, ModelLoadError, exception_line
from vitedge.models.checkpoints import (
    is_torchscript_archive,
    load_into,
    load_object,
    mismatch_report,
    read_state_dict,
)
from vitedge.models.loaded import LoadedModel
from vitedge.models.options import SourceOptions, check_model_kwargs, names_architecture
from vitedge.models.structure import (
    count_macs,
    count_params,
    out_features,
    timm_structure,
    torchvision_structure,
    transformer_structure,
)

if TYPE_CHECKING:
    import torch

BUILTIN_MODELS = {"digits-vit": ASSETS / "digits-vit"}
DEFAULT_MODEL = "builtin:digits-vit"
NOT_VIT_WARNING = ("{arch} has no attention layers (not a transformer): inspect, export, INT8 quantization, "
                   "compile and run work; head/MLP pruning and token merging need a transformer")


def load(source: str | Path, *, weights: str | Path | None = None,
         model_kwargs: dict[str, Any] | None = None, trust_pickle: bool = False,
         preprocessing: dict[str, Any] | None = None, labels: list[str] | None = None,
         compute_macs: bool = True) -> LoadedModel:
    """Load `source` (see module docstring) into a LoadedModel with a complete card.

    `preprocessing` overrides card fields (mean, std, crop_pct, interpolation, ...), for sources
    that do not record them (ONNX, TorchScript, torch.export) or record them wrongly.
    """
    text = str(source)
    kwargs = dict(model_kwargs or {})
    weights_path = Path(weights) if weights else None
    if kwargs and not names_architecture(text):
        raise InputError(f"model kwargs {sorted(kwargs)} only apply to timm: and torchvision: "
                         "sources", "drop --model-kwargs, or name the architecture")
    check_model_kwargs(kwargs)
    builtin = text.removeprefix("builtin:")
    if text.startswith("builtin:") and builtin not in BUILTIN_MODELS:
        raise InputError(f"unknown builtin model {text!r}",
                         f"builtin models: {', '.join('builtin:' + n for n in BUILTIN_MODELS)}")
    if builtin in BUILTIN_MODELS and (text.startswith("builtin:") or not Path(text).exists()):
        if weights_path is not None:
            raise InputError(f"--weights does not apply to {text}: it ships with its own weights",
                             "drop --weights, or name the architecture, e.g. timm:vit_tiny_patch16_224")
        loaded = _load_artifact(BUILTIN_MODELS[builtin])
    elif text.startswith("timm:"):
        loaded = _load_timm(text[5:], weights_path, kwargs, trust_pickle=trust_pickle)
    elif text.startswith("torchvision:"):
        loaded = _load_torchvision(text[12:], weights_path, kwargs, trust_pickle=trust_pickle)
    else:
        path = Path(text)
        if weights_path is not None:
            raise InputError(f"--weights only applies to timm: and torchvision: sources, not {path}",
                             "name the architecture, e.g. timm:deit_tiny_patch16_224")
        loaded = _load_path(path, trust_pickle=trust_pickle)
    card = loaded.card
    if preprocessing:
        card.preprocessing = _override_preprocessing(card.preprocessing, preprocessing)
    if labels is not None:
        if card.num_classes is not None and len(labels) != card.num_classes:
            raise InputError(f"{len(labels)} labels given for a model with {card.num_classes} "
                             "outputs", "give one label per output class, in output order")
        card.labels = list(labels)
        card.class_ids = None
    from vitedge.limits import check_input_size

    check_input_size(card.preprocessing.input_size, text)  # before a MAC count runs the model
    if loaded.module is not None:
        try:
            loaded.module.eval()
        except NotImplementedError:  # torch.export modules have no train/eval switch
            pass
        if card.params is None:
            card.params = count_params(loaded.module)
        if card.macs is None and compute_macs:
            card.macs = count_macs(loaded.module, card.preprocessing.input_size)
            if card.macs is None:
                card.warnings.append("MACs could not be counted (PyTorch's FLOP counter failed on "
                                     "this model); they show as unknown")
    if not card.structure.is_vit and not any(("not a transformer" in w or "not a Vision Transformer" in w)
                                             for w in card.warnings):  # (the latter: older cards)
        card.warnings.append(NOT_VIT_WARNING.format(arch=card.architecture))
    from vitedge.outputs import input_paths

    loaded.origin = tuple(input_paths(text, weights_path))
    return loaded


def as_loaded(model: LoadedModel | str | Path, options: SourceOptions | None = None) -> LoadedModel:
    """A step's model: an already loaded one as is, or a source loaded with `options`."""
    if isinstance(model, LoadedModel):
        return model
    return load(model, **(options or SourceOptions()).kwargs())


def _override_preprocessing(pre: Preprocessing, overrides: dict[str, Any]) -> Preprocessing:
    data = pre.to_dict()
    unknown = set(overrides) - set(data)
    if unknown:
        raise InputError(f"unknown preprocessing field(s) {sorted(unknown)}",
                         f"known fields: {', '.join(sorted(data))}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Preprocessing.from_dict(data)


# ---------------------------------------------------------------------------------- timm
def _load_timm(name: str, weights: Path | None, kwargs: dict[str, Any], *,
               trust_pickle: bool = False) -> LoadedModel:
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        raise InputError(f"unknown timm architecture {name!r}",
                         f"did you mean {', '.join(close)}?" if close else
                         "list them with: python -c 'import timm; print(timm.list_models(\"vit*\"))'")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise InputError(f"timm:{name} does not accept these model kwargs ({exc})",
                         "check the names against the timm model's constructor") from None
    except (ValueError, AssertionError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        # a value the constructor refuses (img_size=0, depths that do not match the stages, ...)
        raise InputError(f"timm:{name} cannot be built with these model kwargs "
                         f"({exception_line(exc)})",
                         "check the values against the timm model's constructor") from None
    state_dict = None
    if weights is not None:
        state_dict = read_state_dict(weights, trust_pickle=trust_pickle)
        if _mismatch(model, state_dict):
            state_dict = _timm_filter(model, state_dict)
        load_into(model, state_dict, what=f"timm:{name}{_kw_text(kwargs)}",
                  hint="pick the architecture the checkpoint was trained as, or pass "
                       "--model-kwargs (num_classes=..., img_size=...) to match it")
    structure = timm_structure(model) or transformer_structure(model, name)
    cfg = timm.data.resolve_data_config({}, model=model)
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if not img and kwargs.get("img_size"):  # families without a patch embedding (MobileViT, EfficientFormerV2)
        asked = kwargs["img_size"]
        img = (asked, asked) if isinstance(asked, int) else tuple(asked)[:2]
    input_size = tuple(int(v) for v in img) if img else tuple(cfg["input_size"][1:])
    pre = Preprocessing(
        input_size=input_size,  # type: ignore[arg-type]
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=Interpolation(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        resize_mode=ResizeMode.SQUASH if cfg.get("crop_mode") == "squash" else ResizeMode.SHORTER_CROP,
    )
    num_classes = int(getattr(model, "num_classes", 0) or 0) or None
    card = ModelCard(
        architecture=model.__class__.__name__ + f" ({name})",
        source={"kind": "timm", "name": name, "kwargs": kwargs,
                "weights": str(Path(weights).resolve()) if weights else None},
        preprocessing=pre, structure=structure, num_classes=num_classes,
        labels=_imagenet_labels() if num_classes == 1000 else None,
        class_ids=_imagenet_synsets() if num_classes == 1000 else None,
    )
    if weights is None:
        card.warnings.append("no --weights given: the model has random weights")
    if num_classes is None:
        card.warnings.append("the model has no classifier head (num_classes=0): it outputs "
                             "features, so accuracy and top-1 agreement do not apply")
    return LoadedModel(card, model, weights_path=weights)


def _mismatch(model: torch.nn.Module, state: dict[str, Any]) -> bool:
    return mismatch_report(model, state) is not None


def _timm_filter(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """timm's own per-family checkpoint converter (resizes pos_embed, maps original keys)."""
    import sys

    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - the strict check afterwards reports what does not fit
        return state


def _kw_text(kwargs: dict[str, Any]) -> str:
    return f" with {kwargs}" if kwargs else ""


def _imagenet_labels() -> list[str]:
    """Short ImageNet-1k names; the two that repeat (crane, maillot) get their synset appended."""
    from collections import Counter

    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    short = [d.split(",")[0].strip() for d in info.label_descriptions()]
    repeated = {name for name, count in Counter(short).items() if count > 1}
    return [f"{name} ({synset})" if name in repeated else name
            for name, synset in zip(short, info.label_names())]


def _imagenet_synsets() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


# --------------------------------------------------------------------------- torchvision
# Fixed by torchvision's builders; needed to build a VisionTransformer whose depth or width
# the user overrides (the builders refuse those keywords).
_TV_VIT = {
    "vit_b_16": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_b_32": dict(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_l_16": dict(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
    "vit_l_32": dict(patch_size=32, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
    "vit_h_14": dict(patch_size=14, num_layers=32, num_heads=16, hidden_dim=1280, mlp_dim=5120),
}


def _load_torchvision(name: str, weights: Path | None, kwargs: dict[str, Any], *,
                      trust_pickle: bool = False) -> LoadedModel:
    try:
        import torchvision
        from torchvision.models import VisionTransformer
    except ImportError as exc:
        raise MissingDependencyError(f"torchvision is needed for torchvision:{name} ({exc})",
                                     "pip install 'vitedge[torchvision]'") from None
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise InputError(f"unknown torchvision model {name!r}",
                         f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()")
    try:
        if name in _TV_VIT and set(kwargs) & set(_TV_VIT[name]):
            model = VisionTransformer(**{"image_size": 224, **_TV_VIT[name], **kwargs})
        else:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as exc:
        raise InputError(f"torchvision:{name} does not accept these model kwargs ({exc})") from None
    except (ValueError, AssertionError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        raise InputError(f"torchvision:{name} cannot be built with these model kwargs "
                         f"({exception_line(exc)})",
                         "check the values against the torchvision model's constructor") from None
    if weights is not None:
        load_into(model, read_state_dict(weights, trust_pickle=trust_pickle),
                  what=f"torchvision:{name}{_kw_text(kwargs)}",
                  hint="pick the architecture the checkpoint was trained as, or pass "
                       "--model-kwargs (num_classes=..., image_size=...) to match it")
    meta_weights = torchvision.models.get_model_weights(name).DEFAULT
    transform = meta_weights.transforms()
    size = int(getattr(model, "image_size", transform.crop_size[0]))
    pre = Preprocessing(
        input_size=(size, size), mean=tuple(transform.mean), std=tuple(transform.std),  # type: ignore[arg-type]
        interpolation=Interpolation(transform.interpolation.value),
        crop_pct=min(1.0, transform.crop_size[0] / transform.resize_size[0]),
    )
    structure = torchvision_structure(model) or VitStructure(is_vit=False)
    num_classes = out_features(model)
    categories = meta_weights.meta.get("categories")
    card = ModelCard(
        architecture=f"{type(model).__name__} (torchvision {name})",
        source={"kind": "torchvision", "name": name, "kwargs": kwargs,
                "weights": str(Path(weights).resolve()) if weights else None},
        preprocessing=pre, structure=structure, num_classes=num_classes,
        labels=list(categories) if categories and len(categories) == num_classes else None,
    )
    if weights is None:
        card.warnings.append("no --weights given: the model has random weights")
    return LoadedModel(card, model, weights_path=weights)


# ------------------------------------------------------------------------------- paths
def _load_path(path: Path, *, trust_pickle: bool) -> LoadedModel:
    if not path.exists():
        raise InputError(f"model source {path} does not exist",
                         "pass a file or folder, timm:NAME, torchvision:NAME or builtin:digits-vit")
    if path.is_dir():
        if is_artifact(path):
            return _load_artifact(path)
        if (path / "config.json").is_file():
            from vitedge.models.hf import load_hf

            return load_hf(path)
        raise InputError(f"{path} is a folder but none of the supported formats",
                         "expected a vitedge artifact (card.json) or a Hugging Face "
                         "save_pretrained folder (config.json + weights)")
    suffix = path.suffix.lower()
    from vitedge.models import graphs

    if suffix == ".onnx":
        return graphs.load_onnx(path)
    if suffix == ".pt2":
        _need_trust(path, trust_pickle, "a torch.export archive")
        return graphs.load_exported_program(path)
    if suffix == ".safetensors":
        raise InputError(f"{path} holds only weights, not an architecture",
                         f"name it: vitedge inspect timm:ARCH --weights {path}")
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".ts", ".jit", ".torchscript"):
        if is_torchscript_archive(path):
            _need_trust(path, trust_pickle, "a TorchScript archive")
            return graphs.load_torchscript(path)
        obj = load_object(path, trust_pickle=trust_pickle)
        import torch

        if isinstance(obj, torch.nn.Module):
            return graphs.from_module(obj, path, kind="pickle")
        raise InputError(f"{path} holds weights only (a state dict), not an architecture",
                         f"name it: vitedge inspect timm:ARCH --weights {path}")
    raise InputError(f"{path} has an unsupported extension {suffix!r}",
                     "expected .onnx, .pt2, .pt/.pth (TorchScript or pickled module), or a folder")


def _need_trust(path: Path, trust_pickle: bool, what: str) -> None:
    """torch.jit.load and torch.export.load unpickle what the file holds: PyTorch's own docs say a
    crafted file runs arbitrary code, so they run only with --trust-pickle."""
    if not trust_pickle:
        from vitedge.models.checkpoints import TRUST_PICKLE_HINT

        raise ModelLoadError(f"{path} is {what}, which PyTorch loads with pickle", TRUST_PICKLE_HINT)


# ---------------------------------------------------------------------------- artifacts
def _load_artifact(directory: Path) -> LoadedModel:
    card = read_card(directory)
    verify_files(directory, card)
    if card.format == "onnx":
        return LoadedModel(card, None, onnx_path=onnx_file(directory, card))
    if card.format == "bundle":  # its portable graph: ONNX Runtime bundles keep the unoptimized one
        portable = "source.onnx" if "source.onnx" in card.files else "model.onnx"
        return LoadedModel(card, None, onnx_path=onnx_file(directory, card, portable))
    weights = directory / "model.safetensors"
    source = card.source
    kind = source.get("kind")
    from vitedge.prune.rebuild import (  # the one upward import: see prune/rebuild.py
        is_pruned,
        restore,
    )

    if is_pruned(source):
        # per-block shapes no constructor makes: build the family's model, then restore() shrinks it
        if kind == "huggingface":  # from the config on the card: the original folder is not needed
            from vitedge.models.hf import build_from_source

            module = build_from_source(source)
        else:
            load_family = _load_timm if kind == "timm" else _load_torchvision
            module = load_family(source["name"], None, dict(source.get("kwargs") or {})).module
        module = restore(module, source, read_state_dict(weights))
    elif kind == "timm":
        module = restore(_load_timm(source["name"], weights, dict(source.get("kwargs") or {})).module, source)
    elif kind == "torchvision":
        module = restore(_load_torchvision(source["name"], weights, dict(source.get("kwargs") or {})).module,
                         source)
    else:
        raise ModelLoadError(f"artifact {directory} records a {kind!r} source that cannot be "
                             "rebuilt in PyTorch", "use its model.onnx, or re-create it")
    return LoadedModel(card, module, weights_path=weights)

