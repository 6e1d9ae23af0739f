"""NNCF post-training quantization of one ONNX graph: the calibration data handed to NNCF, NNCF
kept quiet, and its result made TensorRT-safe (signed INT8) for the symmetric scheme."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vitedge.data import DataSet
from vitedge.errors import InputError
from vitedge.quantize.qdq import to_signed_int8
from vitedge.quantize.recipes import CalibrationMethod
from vitedge.targets import Scheme

if TYPE_CHECKING:
    import onnx


class _Samples:
    """Re-iterable calibration samples for nncf.Dataset (it iterates more than once).

    `tick(index, total)` is called for every sample handed out, so a caller can show progress.
    """

    def __init__(self, data: DataSet, input_name: str,
                 tick: Callable[[int, int], None] | None = None) -> None:
        self.data, self.input_name, self.tick = data, input_name, tick

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        total = len(self.data)
        for index, sample in enumerate(self.data.samples()):
            if self.tick is not None:
                self.tick(index, total)
            yield {self.input_name: sample}

    def __len__(self) -> int:
        return len(self.data)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs and draws its own progress bars on stdout; a library call must not print."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def nncf_quantize(model: onnx.ModelProto, calibration: DataSet, *, scheme: Scheme,
                   method: CalibrationMethod, ignored: Any, smooth_quant: bool,
                   bias_correction: bool, full: bool = False,
                   tick: Callable[[int, int], None] | None = None) -> onnx.ModelProto:
    from vitedge.quantize.nncf_import import import_nncf

    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimators = {CalibrationMethod.MINMAX: RangeEstimatorParametersSet.MINMAX,
                  CalibrationMethod.MEAN_MINMAX: RangeEstimatorParametersSet.MEAN_MINMAX,
                  CalibrationMethod.PERCENTILE: RangeEstimatorParametersSet.MEAN_QUANTILE}
    advanced = AdvancedQuantizationParameters(
        # SmoothQuant is off by default: on DeiT-Tiny it lowered FP32 agreement (measured in
        # benchmarks/quantize_vit.py); --smooth-quant turns it on with NNCF's transformer alpha.
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=0.95 if smooth_quant else -1),
        activations_range_estimator_params=estimators[method],
        # one scale per activation tensor, as TensorRT requires: NNCF's CPU hardware config lets a
        # depthwise convolution's input be quantized per channel (MobileViT, EfficientViT, PVTv2,
        # TinyViT...), which no TensorRT build takes
        activations_quantization_params=QuantizationParameters(per_channel=False),
        disable_bias_correction=not bias_correction,
    )
    preset = (nncf.QuantizationPreset.PERFORMANCE if scheme is Scheme.SYMMETRIC
              else nncf.QuantizationPreset.MIXED)
    # "full" is NNCF without the transformer model type: everything it can quantize, residual
    # adds included; the report shows what that costs.
    model_type = None if full else nncf.ModelType.TRANSFORMER
    input_name = model.graph.input[0].name
    dataset = nncf.Dataset(_Samples(calibration, input_name, tick))
    with _quiet_nncf():
        try:
            quantized = nncf.quantize(model, dataset, preset=preset, subset_size=len(calibration),
                                      model_type=model_type, ignored_scope=ignored,
                                      advanced_parameters=advanced)
        except nncf.ValidationError as exc:
            raise InputError(f"NNCF rejected the settings: {str(exc).strip().splitlines()[-1]}",
                             "check --exclude patterns and the recipe") from None
    if scheme is Scheme.SYMMETRIC:
        # NNCF's symmetric preset still quantizes non-negative activations (after ReLU/MaxPool,
        # softmax probabilities) as UINT8 with zero-point 0; TensorRT takes signed INT8 only.
        # (Forcing signedness in NNCF conflicts with its hardware configs on CNN stems.)
        to_signed_int8(quantized)
    return quantized
