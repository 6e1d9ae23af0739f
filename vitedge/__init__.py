import os
from pathlib import Path

# vitedge never phones home. Libraries it drives send usage telemetry unless told not to, each by
# its own switch, read when it is first used (a user's own setting is kept):
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # ONNX Runtime: 1DS events, ~/.cache/Microsoft device id
os.environ.setdefault("NNCF_CI", "1")  # NNCF: its only switch, read by nncf.telemetry.wrapper alone
# OpenVINO's import: see vitedge.runtime.openvino.runner.import_openvino
# FFmpeg's decoder complaints (OpenCV's video reading) would print under --quiet; vitedge counts
# the frames it cannot decode itself (corrupt, in every summary).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

__version__ = "0.1.0"
ASSETS = Path(__file__).resolve().parent / "assets"  # package data: the shipped model, samples, tables
