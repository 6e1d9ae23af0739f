"""compile --preprocess-in-graph: bundles that take raw pixels, held to vitedge's own preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HELDOUT, assert_user_error, make_digits_video, native_cpu_target
from onnx import TensorProto, helper
from typer.testing import CliRunner

from vitedge.card import Interpolation, Preprocessing, ResizeMode
from vitedge.cli.app import app
from vitedge.compile.ingraph import with_preprocessing
from vitedge.compile.prepare import compile_bundle
from vitedge.data import open_images, sample_photos
from vitedge.errors import InputError
from vitedge.live.camera import FrameSource
from vitedge.live.loop import run_loop
from vitedge.live.options import RunOptions
from vitedge.preprocess import Layout, PixelInput, PixelType, load_frame, preprocess
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
from vitedge.sessions import load as load_session

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "vitedge" / "assets" / "samples"


def _identity(height: int, width: int) -> onnx.ModelProto:
    """A 'model' that returns its input: what comes out is what the preprocessing made."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, height, width])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return [r.path for r in sample_photos(tmp_path_factory.mktemp("photos"), 6).records]


def _levels(got: np.ndarray, expected: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """|difference| in 0..255 pixel levels."""
    return np.abs(got - expected) * np.asarray(pre.std, np.float32)[:, None, None] / pre.scale


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("dtype", list(PixelType))
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_normalization_in_the_graph_is_vitedges_exactly(photos, layout, dtype, order):
    pre = Preprocessing(input_size=(224, 224), channel_order="BGR" if order == "RGB" else "RGB")
    pixels = PixelInput(size=(224, 224), layout=layout, channel_order=order, dtype=dtype)
    graph = with_preprocessing(_identity(224, 224), pre, pixels)
    assert graph.graph.input[0].type.tensor_type.elem_type == (
        TensorProto.UINT8 if dtype is PixelType.UINT8 else TensorProto.FLOAT)
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]] == list(pixels.shape())
    session = OnnxRuntimeSession(graph)
    expected = np.stack([preprocess(p, pre) for p in photos])
    raw = np.stack([pixels.from_image(p, pre) for p in photos])
    assert raw.dtype == np.dtype(str(dtype)) and raw.shape[1:] == pixels.shape()
    np.testing.assert_array_equal(session.infer(raw), expected)  # same float32 ops, same order
    # a preprocessed batch goes back to exactly the pixels it was made from
    np.testing.assert_array_equal(pixels.from_normalized(expected, pre), raw)


@pytest.mark.parametrize("interpolation, mode, max_levels, max_mean", [
    (Interpolation.BILINEAR, ResizeMode.SHORTER_CROP, 1, 0.3),
    (Interpolation.BICUBIC, ResizeMode.SHORTER_CROP, 8, 0.3),
    (Interpolation.BICUBIC, ResizeMode.SQUASH, 8, 0.3),
    (Interpolation.NEAREST, ResizeMode.SHORTER_CROP, 255, 8.0),
])
def test_resize_in_the_graph_against_pillow(photos, interpolation, mode, max_levels, max_mean):
    """Frames at a capture size (640x480) resized and cropped in the graph vs vitedge's Pillow path:
    bilinear within 1 level, bicubic within 8 (Pillow resamples in two 8-bit passes), nearest
    picks a neighbouring pixel on a few rows/columns where the source coordinate rounds the other way."""
    pre = Preprocessing(input_size=(224, 224), interpolation=interpolation, resize_mode=mode)
    pixels = PixelInput(size=(480, 640), channel_order="BGR", resize=True)
    graph = with_preprocessing(_identity(224, 224), pre, pixels)
    assert {"Resize", "Slice" if mode is ResizeMode.SHORTER_CROP else "Resize"} <= {n.op_type for n in graph.graph.node}
    session = OnnxRuntimeSession(graph)
    from PIL import Image

    levels = []
    for path in photos:
        frame = load_frame(path)  # BGR, as OpenCV reads a camera
        frame = np.ascontiguousarray(np.asarray(Image.fromarray(frame).resize((640, 480))))
        raw = pixels.from_image(frame, pre, frame_channel_order="BGR")
        np.testing.assert_array_equal(raw, frame)  # a frame at the capture size goes in as it is
        levels.append(_levels(session.infer(raw[None])[0], preprocess(frame, pre, frame_channel_order="BGR"), pre))
    levels = np.stack(levels)
    assert levels.max() <= max_levels + 1e-3 and levels.mean() <= max_mean
    if interpolation is Interpolation.NEAREST:
        assert (levels > 1e-3).mean() < 0.08


def test_resizes_the_runtime_cannot_do_are_refused():
    pre = Preprocessing(input_size=(224, 224))
    capture = PixelInput(size=(480, 640), resize=True)
    for runtime, fragment in (("tensorrt", "NVIDIA/TensorRT#3560"), ("openvino", "ignores antialias")):
        with pytest.raises(InputError, match=fragment.replace(".", r"\.")):
            with_preprocessing(_identity(224, 224), pre, capture, runtime=runtime)
    with pytest.raises(InputError, match="no lanczos"):
        with_preprocessing(_identity(224, 224), Preprocessing((224, 224), interpolation=Interpolation.LANCZOS),
                           capture)
    # upscaling needs no antialiasing, so TensorRT can take it
    with_preprocessing(_identity(224, 224), pre, PixelInput(size=(120, 160), resize=True), runtime="tensorrt")


@pytest.fixture(scope="module")
def bundles(digits_onnx, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ingraph")
    target = native_cpu_target()
    made = {"plain": root / "plain", "pixels": root / "pixels", "camera": root / "camera"}
    compile_bundle(digits_onnx, target, made["plain"], runtime="onnxruntime")
    compile_bundle(digits_onnx, target, made["pixels"], runtime="onnxruntime", preprocess_in_graph=True,
                   channel_order="BGR", input_layout="NCHW")
    compile_bundle(digits_onnx, target, made["camera"], preprocess_in_graph=True, frame_size="480x640",
                   channel_order="BGR")  # --runtime auto keeps ONNX Runtime (OpenVINO cannot antialias)
    return made


def test_bundle_with_the_preprocessing_inside(bundles):
    settings = json.loads((bundles["pixels"] / "bundle.json").read_text())
    assert settings["pixels"] == {"size": [32, 32], "layout": "NCHW", "channel_order": "BGR",
                                  "dtype": "uint8", "resize": False}
    assert settings["input"] == {"name": "image", "shape": [3, 32, 32]}
    plain, pixels = load_session(bundles["plain"]), load_session(bundles["pixels"])
    data = open_images(HELDOUT)
    records = data.records[:16]
    pre = plain.card.preprocessing
    batch = np.stack([preprocess(r.path, pre) for r in records])
    expected = plain.infer(batch)
    # callers that compare models on preprocessed images run it unchanged ...
    np.testing.assert_allclose(pixels.infer(batch), expected, atol=1e-5)
    # ... and raw frames (BGR, as OpenCV reads them) are what it takes
    frames = np.stack([pixels.pixels.from_image(load_frame(r.path), pre, frame_channel_order="BGR")
                       for r in records])
    assert frames.dtype == np.uint8 and frames.shape[1:] == (3, 32, 32)
    np.testing.assert_allclose(pixels.infer_pixels(frames), expected, atol=1e-5)
    with pytest.raises(InputError, match="expected uint8"):
        pixels.infer_pixels(frames.astype(np.float32))
    with pytest.raises(InputError, match="raw pixels"):
        plain.infer_pixels(frames)
    # predict sends raw pixels and gets the plain bundle's answers
    ours = runner.invoke(app, ["predict", str(bundles["pixels"]), str(SAMPLES), "--json"])
    theirs = runner.invoke(app, ["predict", str(bundles["plain"]), str(SAMPLES), "--json"])
    assert ours.exit_code == 0, ours.output
    top1 = [[p["top"][0]["index"] for p in json.loads(r.stdout)["predictions"]] for r in (ours, theirs)]
    assert top1[0] == top1[1] and len(top1[0]) == 10
    # the same model on OpenVINO, when it is installed
    pytest.importorskip("openvino")
    ov = load_session(bundles["pixels"], backend="openvino")
    np.testing.assert_allclose(ov.infer(batch), expected, atol=1e-3)


def test_camera_bundle_resizes_inside_and_runs_live(bundles, tmp_path):
    camera = load_session(bundles["camera"])
    assert camera.backend == "onnxruntime" and camera.pixels.resize and camera.pixels.size == (480, 640)
    assert camera.input.shape[1:] == (480, 640, 3)
    pre = camera.card.preprocessing
    with pytest.raises(InputError, match="takes raw 480x640 frames"):
        camera.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="cannot run .* resizes in the graph and OpenVINO"):
        load_session(bundles["camera"], backend="openvino")  # its ONNX frontend ignores antialias
    video = make_digits_video(tmp_path / "cam.mp4", frames=60)
    plain = load_session(bundles["plain"])
    with FrameSource.open(str(video)) as source:
        frames = [f.image for f in source][:16]
    ours = camera.infer_pixels(np.stack(frames))  # BGR 640x480 frames straight from the decoder
    theirs = plain.infer(np.stack([preprocess(f, pre, frame_channel_order="BGR") for f in frames]))
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.9
    assert np.abs(ours - theirs).max() < 0.25 * np.abs(theirs).max()
    # the live loop feeds the frames as they are, and the FP32 reference its own preprocessing
    summary = run_loop(camera, FrameSource.open(str(video)), tmp_path / "run", reference=plain,
                       options=RunOptions(shadow_every=2))
    assert summary.frames.logged == 60 and summary.drift.samples >= 20
    assert summary.drift.top1_agreement >= 0.9


def test_bad_preprocess_in_graph_inputs(digits_onnx, tmp_path):
    base = ["compile", str(digits_onnx), "--target", native_cpu_target(), "-o"]
    cases = [
        (["--frame-size", "480x640"], "add --preprocess-in-graph"),
        (["--preprocess-in-graph", "--frame-size", "480"], "is not HEIGHTxWIDTH"),
        (["--preprocess-in-graph", "--channel-order", "RGBA"], "is not RGB or BGR"),
        (["--preprocess-in-graph", "--frame-size", "480x640", "--runtime", "openvino"], "--runtime onnxruntime"),
    ]
    for index, (extra, fragment) in enumerate(cases):
        out = tmp_path / f"b{index}"
        assert_user_error(runner.invoke(app, [*base, str(out), *extra]), fragment)
        assert not out.exists()
    out = tmp_path / "orin"
    assert_user_error(runner.invoke(app, ["compile", str(digits_onnx), "--target", "jetson-orin-nano", "-o",
                                          str(out), "--preprocess-in-graph", "--frame-size", "480x640"]),
                      "NVIDIA/TensorRT#3560")
    assert not out.exists()


def test_triton_package_of_a_raw_pixel_bundle(bundles, tmp_path):
    import runpy

    from vitedge.package.triton import parse_config

    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] ships the schema")
    out = tmp_path / "triton"
    result = runner.invoke(app, ["package", str(bundles["camera"]), "--for", "triton", "-o", str(out)])
    assert result.exit_code == 0, result.output
    model_dir = next((out / "model_repository").iterdir())
    config = parse_config((model_dir / "config.pbtxt").read_text())
    from tritonclient.grpc import model_config_pb2

    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [480, 640, 3]
    assert "uint8 NHWC BGR 480x640 pixels" in (out / "README.md").read_text()
    client = runpy.run_path(str(out / "client.py"))  # what a Triton user runs (the call needs a server)
    photo = SAMPLES / "3.png"
    batch = client["batch_of"](str(photo))
    assert batch.dtype == np.uint8 and batch.shape == (1, 480, 640, 3)
    assert load_session(bundles["camera"]).infer_pixels(batch).argmax() == 3
