"""Tiny models built on the spot, so every source format is tested without a download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "num_classes": 10}
TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]
REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "calibration" / "digits" / "heldout"
REALDATA = REPO.parent / "shared" / "realdata"
TRAIN = REPO / "calibration" / "digits" / "train"


def _script(name: str):
    """A module of scripts/ (demo tools, not library code), imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_digits_video = _script("make_digits_video").make_digits_video


def int8_kernels_exact() -> bool:
    """Whether ONNX Runtime's x86 INT8 kernels compute what the Q/DQ graph says: with VNNI (or
    AMX, or on Arm) they do; on an AVX2-only CPU its u8s8 kernels sum pairs of products in 16
    bits and saturate (ONNX Runtime's quantization docs: use reduce_range there), so INT8 agrees
    less with FP32 (measured on a 2-core AVX2 EPYC: the pruned digits model 84.5 % instead of
    >= 98 %, a tiny random DeiT 85 % on 40 photos). Tests bound INT8 figures more loosely there."""
    import platform

    from vitedge.versions import cpu_features

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    features = cpu_features()
    return any(features.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def native_cpu_target() -> str:
    """The CPU profile of this machine's ISA: only there is a bundle optimized offline."""
    from vitedge.versions import machine_arch

    return "arm64-cpu" if machine_arch() == "arm64" else "x86-cpu"


def onnxruntime_only_target(folder: Path) -> Path:
    """This machine's CPU profile with ONNX Runtime alone (FP32 and INT8): where a test needs one
    runtime, not the timing of two."""
    from vitedge.targets import load_target

    profile = folder / "ort-only.toml"
    text = Path(load_target(native_cpu_target()).path).read_text()
    profile.write_text(text.replace('runtimes = ["onnxruntime", "openvino"]', 'runtimes = ["onnxruntime"]')
                       .replace('precisions = ["fp32", "bf16", "int8"]', 'precisions = ["fp32", "int8"]'))
    return profile


def assert_user_error(result, *fragments):
    """A CliRunner result that is one clear line: exit 1, no traceback, the fragments in it."""
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert output.strip().startswith("error:"), output
    assert len(output.strip().splitlines()) <= 3, output  # one message, soft-wrapped at most
    for fragment in fragments:
        assert fragment in " ".join(output.split()), output


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must still be there, unchanged."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def tiny_timm(name: str = "vit_tiny_patch16_224", **overrides) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **{**TINY, **overrides}).eval()


def kwargs_cli(**overrides) -> list[str]:
    args: list[str] = []
    for key, value in {**TINY, **overrides}.items():
        args += ["-k", f"{key}={value}"]
    return args


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(tiny_timm().state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx_artifact(tmp_path_factory, tiny_ckpt) -> Path:
    from vitedge.export import export_onnx
    from vitedge.models.load import load

    out = tmp_path_factory.mktemp("art") / "tiny-onnx"
    export_onnx(load("timm:vit_tiny_patch16_224", weights=tiny_ckpt, model_kwargs=TINY), out)
    return out


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory) -> Path:
    """The shipped digits ViT exported to an ONNX artifact (shared by quantize and compile tests)."""
    from vitedge.export import export_onnx
    from vitedge.models.load import load

    out = tmp_path_factory.mktemp("digits") / "digits-onnx"
    export_onnx(load("builtin:digits-vit"), out, parity_samples=4)
    return out


@pytest.fixture(scope="session")
def digits_int8(digits_onnx, tmp_path_factory) -> Path:
    """The shipped digits ViT quantized (linear-only, 64 calibration images): compile and runtime tests."""
    from vitedge.models.load import load
    from vitedge.quantize.ptq import quantize
    from vitedge.quantize.recipes import Recipe

    out = tmp_path_factory.mktemp("digits") / "int8"
    quantize(load(digits_onnx), TRAIN, out, eval_data=HELDOUT, recipe=Recipe.LINEAR_ONLY,
             samples=64, eval_samples=100)
    return out


def chromium() -> str | None:
    """Debian's chromium (make test installs it when it can), for the tests that render pages."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered_width(page: Path, window: int = 1280) -> int:
    """How wide a report renders in headless Chromium in a `window`-px window (its scrollWidth)."""
    import subprocess

    probe = page.with_name(page.stem + ".probe.html")
    script = ("<script>document.body.setAttribute('data-width', "
              "String(document.documentElement.scrollWidth))</script></body>")
    probe.write_text(page.read_text().replace("</body>", script))
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", f"--window-size={window},900",
                          "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=90).stdout
    probe.unlink()
    return int(dom.split('data-width="')[1].split('"')[0])
