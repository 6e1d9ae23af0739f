"""Target profiles: every shipped one loads; bad profiles get clear errors."""

import json

import pytest
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.errors import InputError
from vitedge.targets import (
    TARGETS_DIR,
    Precision,
    Runtime,
    Scheme,
    list_targets,
    load_target,
)

SHIPPED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx",
           "desktop-gpu", "x86-cpu", "arm64-cpu"}
runner = CliRunner()


def test_every_shipped_profile_loads_and_is_consistent():
    targets = {t.name: t for t in list_targets()}
    assert set(targets) == SHIPPED
    for target in targets.values():
        assert target.default_precision in target.precisions
        assert target.batch.min <= target.batch.opt <= target.batch.max
        assert "Sources" in (TARGETS_DIR / f"{target.name}.toml").read_text()  # cites the vendor
        if target.runtime is Runtime.TENSORRT:
            assert target.int8_scheme is Scheme.SYMMETRIC and target.compute_capability
            assert Precision.FP16 in target.precisions
    assert targets["jetson-orin-nano"].dla_cores == 0 and targets["jetson-agx-orin"].dla_cores == 2
    assert targets["jetson-xavier-nx"].compute_capability == "7.2"
    assert targets["jetson-xavier-nx"].jetpack.startswith("5")
    assert targets["x86-cpu"].int8_scheme is Scheme.ASYMMETRIC


def _write(tmp_path, text):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


GOOD = '''name = "mine"
description = "my box"
runtime = "onnxruntime"
precisions = ["fp32", "int8"]
default_precision = "int8"
int8_scheme = "asymmetric"
batch = { min = 1, opt = 2, max = 4 }
'''


def test_user_profile_and_validation(tmp_path):
    target = load_target(_write(tmp_path, GOOD))
    assert target.name == "mine" and target.default_precision is Precision.INT8
    cases = {
        GOOD + "colour = 'red'\n": "unknown key(s) colour",
        GOOD.replace('default_precision = "int8"', 'default_precision = "fp16"'):
            "default_precision fp16 is not among precisions",
        GOOD.replace("opt = 2", "opt = 9"): "1 <= min <= opt <= max",
        GOOD.replace('"onnxruntime"', '"tflite"'): "runtime = 'tflite' is not one of",
        GOOD.replace('runtime = "onnxruntime"', 'runtime = "tensorrt"'): "needs compute_capability",
        GOOD.replace('name = "mine"\n', ""): "missing key(s) name",
        "name = [": "not valid TOML",
    }
    for text, message in cases.items():
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_target(_write(tmp_path, text))


def test_unknown_target_lists_known_ones():
    with pytest.raises(InputError, match="did you mean jetson-orin-nano") as info:
        load_target("jetson-orin-nan")
    assert "x86-cpu" in info.value.hint


def test_cli_lists_and_shows():
    listed = runner.invoke(app, ["targets"])
    assert listed.exit_code == 0
    for name in SHIPPED:
        assert name in listed.output
    shown = runner.invoke(app, ["targets", "show", "jetson-agx-orin", "--json"])
    data = json.loads(shown.stdout)
    assert data["dla_cores"] == 2 and data["batch"] == {"min": 1, "opt": 8, "max": 32}
    missing = runner.invoke(app, ["targets", "show", "nope"])
    assert missing.exit_code == 1 and "unknown target 'nope'" in missing.output


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_ships_the_profiles(tmp_path):
    """`pip wheel .` -> a fresh venv -> `vitedge targets` and a Jetson compile, run elsewhere.

    The fresh venv gets only the wheel; its dependencies (torch, onnx, ...) are borrowed from
    this interpreter's site-packages by a path entry, which does not run the editable install's
    hook, so the vitedge that runs is the wheel's (checked below)."""
    import os
    import shutil
    import site
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # pip builds in the tree it is given: a copy, not the checkout
    shutil.copytree(root, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "demo-out", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("vitedge-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", purelib,
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    borrowed = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (Path(purelib) / "borrowed-deps.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    (venv / "bin" / "vitedge").write_text(f"#!{python}\nfrom vitedge.cli.app import app\napp()\n")
    (venv / "bin" / "vitedge").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def vitedge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "vitedge"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(python), "-c", "import vitedge; print(vitedge.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(purelib), where  # the wheel's vitedge, not the checkout's
    listed = vitedge("targets")
    assert listed.returncode == 0 and "jetson-orin-nano" in listed.stdout, listed.stderr
    compiled = vitedge("compile", "builtin:digits-vit", "--target", "jetson-orin-nano", "-o", "orin")
    assert compiled.returncode == 0, compiled.stderr
    assert (work / "orin" / "passport.json").is_file() and (work / "orin" / "trtexec.sh").is_file()
    assert "jetson-orin-nano" in compiled.stdout


def test_precision_labels_say_how_much_is_int8():
    from vitedge.formatting import precision_label

    assert precision_label("int8", 0.52) == "int8 (52% of MACs)"
    assert precision_label("int8+bf16", 0.21) == "int8+bf16 (21% of MACs)"
    assert precision_label("best", 0.7) == "best (70% of MACs)"
    assert precision_label("int8", 0.999) == "int8" and precision_label("int8", None) == "int8"
    assert precision_label("fp32", 0.5) == "fp32"  # a float bundle says nothing about INT8
