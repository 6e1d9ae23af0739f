"""Running TensorRT engines: the engine runner, and TensorRT's import and version.

Written against the public TensorRT 10/11 Python API; needs `import tensorrt` and an NVIDIA GPU.
Device memory is held in torch CUDA tensors (torch is already a dependency), so no pycuda.
What builds the engines is beside this file (loader.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import ExportError, MissingDependencyError
from vitedge.runtime.base import Session, TensorInfo


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorRT is not importable here ({exc})",
            "build on the device: `vitedge build BUNDLE` where TensorRT is installed (JetPack "
            "ships it), or run the bundle's trtexec line") from None
    return tensorrt


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)



class TensorRTSession(Session):
    backend = "tensorrt"

    def __init__(self, engine_path: Path, *, precision: str, description: str = "",
                 card: Any = None, origin: tuple[Path, ...] = ()) -> None:
        self.model_path = engine_path
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError("TensorRT engines need a CUDA GPU, and torch sees none",
                                         "run on the device the bundle was built for")
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load {engine_path} (built by another TensorRT "
                              "version or GPU?)", "rebuild it: vitedge build BUNDLE")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        tensors = {"in": [], "out": []}
        self._dtypes: dict[str, Any] = {}
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._dtypes[name] = torch.from_numpy(np.empty(0, dtype)).dtype
            mode = "in" if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"
            shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            tensors[mode].append(TensorInfo(name, shape, dtype.name))
        low, _opt, high = self.engine.get_tensor_profile_shape(tensors["in"][0].name, 0)
        super().__init__(inputs=tensors["in"], outputs=tensors["out"], precision=precision,
                         min_batch=int(low[0]), max_batch=int(high[0]),
                         description=description or f"TensorRT {trt.__version__} engine",
                         card=card, origin=origin)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        name_in, name_out = self.input.name, self.outputs[0].name
        with torch.cuda.stream(self.stream):
            device_in = torch.from_numpy(batch).to("cuda", dtype=self._dtypes[name_in])
            self.context.set_input_shape(name_in, tuple(device_in.shape))
            device_out = torch.empty(tuple(self.context.get_tensor_shape(name_out)),
                                     dtype=self._dtypes[name_out], device="cuda")
            self.context.set_tensor_address(name_in, device_in.data_ptr())
            self.context.set_tensor_address(name_out, device_out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError("TensorRT execution failed (see its log above)")
        self.stream.synchronize()
        return device_out.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None
