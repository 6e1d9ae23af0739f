"""Reading weight files safely, and matching them to a model with readable errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    import torch

# Where training scripts nest the weights (DeiT/MAE: "model"; timm train: "state_dict" and
# "state_dict_ema"; some EMA trainers: "model_ema"). The first present key wins.
NESTED_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")
# Prefixes that wrappers add: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

TRUST_PICKLE_HINT = ("it holds pickled Python objects, which can run code when loaded; if you "
                     "trust where it came from, pass --trust-pickle")


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("constants.pkl") or "/code/" in name for name in names)


def _torch_load(path: Path, *, trust_pickle: bool) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=False)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "weights_only" in str(exc):
            raise ModelLoadError(f"{path} cannot be loaded as plain weights", TRUST_PICKLE_HINT) \
                from None
        raise ModelLoadError(f"checkpoint {path} is unreadable or truncated ({_first_line(exc)})",
                             "re-download or re-save it") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"checkpoint {path} is unreadable or truncated ({_first_line(exc)})",
                             "re-download or re-save it") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_object(path: Path, *, trust_pickle: bool = False) -> Any:
    """Whatever a .pt/.pth/.bin file holds (state dict, or with trust_pickle a whole module)."""
    return _torch_load(path, trust_pickle=trust_pickle)


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping from .safetensors, .pth, .pt, .bin or .ckpt."""
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"weights file {path} does not exist", "check the --weights path")
    if path.is_dir():
        raise InputError(f"weights path {path} is a directory",
                         "pass the checkpoint file itself (.safetensors, .pth, .pt, .bin)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"checkpoint {path} is unreadable or truncated "
                                 f"({_first_line(exc)})", "re-download or re-save it") from None
    else:
        state = _torch_load(path, trust_pickle=trust_pickle)
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{path} does not hold a state dict (found {type(state).__name__} with keys "
            f"{_preview(list(state)[:8] if isinstance(state, dict) else [])})",
            f"expected name -> tensor, raw or nested under one of {', '.join(NESTED_KEYS)}")
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _preview(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit})" if len(names) > limit else "") if names else "-"


def mismatch_report(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """None when the state dict fits the model exactly, else one readable line saying how not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({_preview(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_preview(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({_preview(shapes, 2)})")
    return "; ".join(parts)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str,
              hint: str) -> None:
    problem = mismatch_report(model, state)
    if problem:
        raise ModelLoadError(f"checkpoint does not match {what}: {problem}", hint)
    model.load_state_dict(state, strict=True)
