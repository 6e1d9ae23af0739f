"""torch -> ONNX, simplified with onnxslim, and checked against PyTorch before it is kept.

Exporter: torch's dynamo-based `torch.onnx.export` (its default and maintained path) at opset
18, so LayerNorm is one `LayerNormalization` node (a decomposed `Pow(x, 2)` overflows in FP16).
TorchScript modules, and models dynamo cannot trace, fall back to the TorchScript exporter; the
card records which one ran.

Simplifier: onnxslim, not onnx-simplifier: onnxslim is pure Python (no compiled wheel that lags
new Python/onnx releases), is maintained, and keeps LayerNormalization intact.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.artifact import derive_card, write_card
from vitedge.card import ModelCard
from vitedge.data import ImageSet, iter_batches, open_images, sample_photos
from vitedge.errors import ExportError, InputError, exception_line
from vitedge.formatting import percent
from vitedge.locks import releasing
from vitedge.models.loaded import LoadedModel
from vitedge.models.names import exported_modules, record_modules
from vitedge.models.options import SourceOptions

if TYPE_CHECKING:
    import onnx
    import torch

DEFAULT_OPSET = 18
MIN_OPSET = 17  # first opset with LayerNormalization
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a single file at 2 GiB


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime vs PyTorch on the same preprocessed images. Truthy only when it passed."""

    samples: int
    max_abs_diff: float
    max_rel_diff: float  # max over images of max|diff| / max|reference logit|
    top1_agreement: float | None  # None for feature extractors (no classes)
    atol: float
    rtol: float
    within_tolerance: bool
    data: str

    def __bool__(self) -> bool:
        return self.samples > 0 and self.within_tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": bool(self)}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    card: ModelCard
    parity: ParityResult
    exporter: str
    seconds: float


@releasing
def export_onnx(model: LoadedModel | str | Path, out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, simplify: bool = True,
                parity_data: str | Path | None = None, parity_samples: int = 16,
                atol: float = 1e-3, rtol: float = 1e-3, overwrite: bool = False,
                options: SourceOptions | None = None) -> ExportResult:
    """Export `model` (loaded, or a source read with `options`), simplify, check, and write
    `out_dir` (model.onnx + card.json) atomically.

    Raises ExportError (and writes nothing) when ONNX Runtime's logits differ from PyTorch's
    beyond `atol + rtol * |reference|` on any element.
    """
    import onnx

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"opset {opset} is outside {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
                         f"(onnx {onnx.__version__})",
                         "opset 17 is the first with a single LayerNormalization node; 18 is the default")
    if parity_samples < 1:
        raise InputError(f"--parity-samples {parity_samples} must be at least 1")
    from vitedge.models.load import as_loaded
    from vitedge.outputs import OutputKind, check_output, input_paths, writing

    loaded = as_loaded(model, options)
    inputs = [*loaded.origin, *input_paths(parity_data)]
    check_output(out_dir, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs)
    module = loaded.torch_module("export")
    started = time.perf_counter()
    pre = loaded.card.preprocessing
    with _parity_images(parity_data, parity_samples) as images, \
            writing(out_dir, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs) as staging:
        onnx_path = staging / "model.onnx"
        deployed, fused = reparameterized(module, loaded.card)
        model, exporter, batch_dynamic = _export(deployed, pre.input_size, opset, dynamic_batch)
        modules = exported_modules(model)
        if simplify:
            model = _simplify(model)
        record_modules(model, modules)  # the model's own layer names, for reports
        _save(model, onnx_path)
        parity = check_parity(module, onnx_path, images, loaded.card, atol=atol, rtol=rtol,
                              batch_dynamic=batch_dynamic)
        if not parity:
            raise ExportError(
                f"ONNX output differs from PyTorch: max abs diff {parity.max_abs_diff:.3g}, max "
                f"rel diff {parity.max_rel_diff:.3g} (tolerance atol={atol:g}, rtol={rtol:g}) on "
                f"{parity.samples} images, top-1 agreement {percent(parity.top1_agreement, 1, 'n/a')}",
                "nothing was written; try --no-simplify or another --opset, or raise --atol if "
                "the model is known to be numerically sensitive")
        card = _export_card(loaded, model, parity, exporter, opset, batch_dynamic, simplify, fused)
        write_card(staging, card)
    return ExportResult(Path(out_dir), card, parity, exporter, time.perf_counter() - started)


@contextlib.contextmanager
def _parity_images(parity_data: str | Path | None, count: int) -> Iterator[ImageSet]:
    """The user's images, or natural ones (crops of a photo a dependency ships, not upscaled digits)."""
    if parity_data is not None:
        yield open_images(parity_data).sample(count, seed=0)
        return
    from vitedge.locks import temporary_directory

    with temporary_directory("parity") as folder:
        yield sample_photos(folder, count)


def _export(module: torch.nn.Module, input_size: tuple[int, int], opset: int,
            dynamic_batch: bool) -> tuple[onnx.ModelProto, str, bool]:
    import torch

    # batch 2 for tracing a dynamic batch (1 would be specialized away); static graphs get 1
    example = (torch.randn(2 if dynamic_batch else 1, 3, *input_size),)
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            return _export_dynamo(module, example, opset, dynamic_batch), "dynamo", dynamic_batch
        except Exception as first:  # noqa: BLE001 - fall back below, report both if both fail
            dynamo_error = first
            if dynamic_batch:  # programs saved with a fixed batch cannot be made dynamic
                try:
                    static = (torch.randn(1, 3, *input_size),)
                    return _export_dynamo(module, static, opset, False), "dynamo", False
                except Exception:  # noqa: BLE001
                    pass
    else:
        dynamo_error = None
    try:
        return _export_torchscript(module, example, opset, dynamic_batch), "torchscript", dynamic_batch
    except Exception as exc:  # noqa: BLE001
        reason = exception_line(exc, 200)
        before = f"dynamo exporter: {exception_line(dynamo_error, 200)}; " if dynamo_error else ""
        raise ExportError(f"torch.onnx.export failed ({before}TorchScript exporter: {reason})",
                          "the model uses an operation ONNX cannot express at this opset; try "
                          "another --opset, or export the model to .pt2 with torch.export first") from None


def _export_dynamo(module: torch.nn.Module, example: tuple[Any, ...], opset: int,
                   dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    return program.model_proto


def _export_torchscript(module: torch.nn.Module, example: tuple[Any, ...], opset: int,
                        dynamic_batch: bool) -> onnx.ModelProto:
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(module, example, buffer, dynamo=False, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    layer_norms = sum(node.op_type == "LayerNormalization" for node in model.graph.node)
    slim = onnxslim.slim(model)
    if sum(node.op_type == "LayerNormalization" for node in slim.graph.node) != layer_norms:
        return model  # never trade the single-node LayerNorm for a smaller graph
    return slim


def _save(model: onnx.ModelProto, path: Path) -> None:
    import onnx

    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def check_parity(module: torch.nn.Module, onnx_path: Path, images: ImageSet, card: ModelCard, *,
                 atol: float, rtol: float, batch_dynamic: bool = True) -> ParityResult:
    """Run the same preprocessed images through PyTorch and ONNX Runtime (CPU) and compare."""
    import torch

    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

    session = OnnxRuntimeSession(onnx_path)
    reference, candidate = [], []
    for batch, _ in iter_batches(images, card.preprocessing, batch_size=8 if batch_dynamic else 1):
        with torch.no_grad():
            ref = module(torch.from_numpy(batch))
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        reference.append(ref.float().numpy())
        candidate.append(session.infer(batch))
    if not reference:
        raise InputError(f"none of the parity images in {images.origin} could be read",
                         "pass --data with a folder of readable images")
    ref_all = np.concatenate(reference)
    out_all = np.concatenate(candidate).astype(np.float32)
    diff = np.abs(out_all - ref_all)
    # Relative to each image's largest |logit|: element-wise ratios explode on logits near 0.
    scale = np.abs(ref_all).reshape(len(ref_all), -1).max(axis=1)
    rel = diff.reshape(len(ref_all), -1).max(axis=1) / np.maximum(scale, 1e-12)
    within = bool(np.all(diff <= atol + rtol * np.abs(ref_all)))
    agreement = None
    if card.num_classes and ref_all.ndim == 2:
        agreement = float(np.mean(ref_all.argmax(1) == out_all.argmax(1)))
    return ParityResult(samples=len(ref_all), max_abs_diff=float(diff.max()),
                        max_rel_diff=float(rel.max()), top1_agreement=agreement, atol=atol,
                        rtol=rtol, within_tolerance=within, data=images.origin)


def reparameterized(module: torch.nn.Module, card: ModelCard) -> tuple[torch.nn.Module, int]:
    """The inference form of a timm model with training-time branches (FastViT's and RepViT's
    re-parameterizable convolutions, MobileOne blocks, LeViT/TinyViT/EfficientViT conv+BN pairs):
    timm's own `reparameterize_model` on a copy, and how many modules it fused (0: `module` itself).
    The export's parity check compares the fused graph with the unfused module."""
    if card.source.get("kind") != "timm":
        return module, 0
    fusable = sum(1 for m in module.modules()
                  if hasattr(m, "fuse") or hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy"))
    if not fusable:
        return module, 0
    from timm.utils.model import reparameterize_model

    return reparameterize_model(module).eval(), fusable


def _export_card(loaded: LoadedModel, model: onnx.ModelProto, parity: ParityResult,
                 exporter: str, opset: int, batch_dynamic: bool, simplified: bool, fused: int) -> ModelCard:
    parent = loaded.card
    card = derive_card(parent, "export", format="onnx", card_metrics={"parity": parity.to_dict()},
                       params={"opset": opset, "dynamic_batch": batch_dynamic, "exporter": exporter,
                               "simplifier": "onnxslim" if simplified else None,
                               "reparameterized_modules": fused,
                               "input": INPUT_NAME, "output": OUTPUT_NAME},
                       metrics={"parity": parity.to_dict()},
                       tools=("torch", "onnx", "onnxruntime", "onnxslim", "onnxscript", "timm"))
    card.source = {**parent.source, "onnx": {"opset": opset, "dynamic_batch": batch_dynamic,
                                             "input": INPUT_NAME, "output": OUTPUT_NAME}}
    return card


def ensure_onnx(loaded: LoadedModel, tmp: Path, say: Callable[[str], None],
                parity_data: str | Path | None = None) -> Path:
    """The ONNX file of `loaded`: its own, or a checked export into `tmp` for torch sources."""
    if loaded.onnx_path is not None:
        return _self_contained(loaded.onnx_path, tmp)
    say("exporting to ONNX (with parity check)")
    export_onnx(loaded, tmp / "fp32", parity_data=parity_data)
    return tmp / "fp32" / "model.onnx"


def _self_contained(path: Path, tmp: Path) -> Path:
    """`path` itself, or, when it keeps weights in external data files, one self-contained copy in
    `tmp`: the steps copy and hash a single model file (a bundle's source.onnx), so weights left
    beside the user's file would be missing from what they write."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return path
    model = onnx.load(str(path))  # the data, from beside the user's file
    if model.ByteSize() >= 2**31 - 1:
        raise ExportError(f"{path} holds {model.ByteSize() / 2**30:.1f} GiB of weights in external data; "
                          "vitedge writes models as one ONNX file, which protobuf limits to 2 GiB",
                          "compile a smaller model, or build the engine from it with trtexec directly")
    copy = tmp / "source" / "model.onnx"
    copy.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(copy))
    return copy
