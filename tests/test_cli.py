"""The command line: outputs, exit codes, and one clear line for every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, kwargs_cli, tiny_timm
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.versions import cpu_features

runner = CliRunner()
REPO_SAMPLES = Path(__file__).resolve().parents[1] / "vitedge" / "assets" / "samples"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_does_not_import_heavy_modules():
    code = ("import sys, vitedge.cli.app; heavy = {'torch', 'cv2', 'onnxruntime', 'onnx', 'timm', 'numpy', 'PIL'}"
            " & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_help():
    assert run("--version").output.strip().startswith("vitedge ")
    result = run("--help")
    assert result.exit_code == 0
    for command in ("inspect", "export", "doctor"):
        assert command in result.output


def test_every_commands_help_reads_at_80_columns():
    """-h as well as --help; placeholders that say what a value is (never Typer's `<list[str]>`
    or `{bundle}`), the shared source options under their own heading, nothing past column 80."""
    import typer.main

    group = typer.main.get_command(app)
    commands = [[name] for name in group.commands if name != "targets"] + [["targets", "show"]]
    for words in commands:
        result = runner.invoke(app, [*words, "-h"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0, (words, result.output)
        text = result.output
        assert text.startswith(f"Usage: vitedge {' '.join(words)} [OPTIONS]"), text[:120]
        typer_types = ("<str>", "<int>", "<float>", "<bool>", "<path>", "<file>", "<list[", "<directory>")
        assert "{" not in text.splitlines()[0] and not any(t in text for t in typer_types), words
        assert all(len(line) <= 80 for line in text.splitlines()), (words, max(text.splitlines(), key=len))
    run_help = runner.invoke(app, ["run", "-h"], env={"COLUMNS": "80"}).output
    assert "Model source options" in run_help and "-s, --source SOURCE..." in run_help
    assert "--serve HOST:PORT" in run_help and "--out PATH" in run_help
    quantize_help = runner.invoke(app, ["quantize", "-h"], env={"COLUMNS": "80"}).output
    own, shared = quantize_help.split("Model source options")
    assert "--recipe" in own and "--weights" in shared and "--mean R,G,B" in shared


def test_inspect_timm_json(tiny_ckpt):
    result = run("inspect", "timm:vit_tiny_patch16_224", "--weights", tiny_ckpt, *kwargs_cli(),
                 "--json")
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["structure"]["num_heads"] == 2 and card["num_classes"] == 10
    assert card["macs"] > 0 and card["params"] > 0


def test_inspect_table_and_overrides(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    result = run("inspect", "builtin:digits-vit", "--mean", "0.1,0.2,0.3", "--labels", labels)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "mean (0.1, 0.2, 0.3)" in text and "class0" in text and "4 / 64 / 4 / 4" in text


def test_export_cli(tmp_path):
    out = tmp_path / "digits"
    result = run("export", "builtin:digits-vit", "-o", out, "--parity-samples", "8")
    assert result.exit_code == 0, result.output
    assert "parity passed on 8 images" in result.output
    assert (out / "model.onnx").is_file() and (out / "card.json").is_file()
    assert_user_error(run("export", "builtin:digits-vit", "-o", out), "already exists",
                      "--overwrite")
    quiet = run("export", "builtin:digits-vit", "-o", out, "--parity-samples", "2", "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.output.strip().startswith("wrote ") and "parity" not in quiet.output


def test_doctor_json():
    result = run("doctor", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["packages"]["torch"] and "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert "available" in report["tensorrt"] and "features" in report["cpu"]


def test_cpu_feature_parsing():
    x86 = cpu_features("flags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n")
    assert x86["AVX2"] and x86["AVX-512 VNNI"] and not x86["AMX-INT8"]
    arm = cpu_features("Features\t: fp asimd asimddp\n")
    assert arm["NEON dot-product"] and not arm["INT8 matmul (i8mm)"]


# ----------------------------------------------------------------------------- bad input
def test_missing_file():
    assert_user_error(run("inspect", "nope/missing.pt"), "does not exist")


def test_missing_weights_file():
    assert_user_error(run("inspect", "timm:vit_tiny_patch16_224", "-w", "missing.safetensors"),
                      "weights file missing.safetensors does not exist")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoint(tmp_path, tiny_ckpt, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".pth":
        torch.save(tiny_timm().state_dict(), tmp_path / "full.pth")
        data = (tmp_path / "full.pth").read_bytes()
    else:
        data = tiny_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_user_error(run("inspect", "timm:vit_tiny_patch16_224", "-w", path, *kwargs_cli()),
                      "unreadable or truncated")


def test_state_dict_mismatch_names_keys(tiny_ckpt):
    result = run("inspect", "timm:vit_tiny_patch16_224", "-w", tiny_ckpt,
                 *kwargs_cli(num_classes=5))
    assert_user_error(result, "does not match", "head.weight", "checkpoint [10, 32] vs model [5, 32]")


def test_unknown_timm_name_suggests():
    assert_user_error(run("inspect", "timm:vit_tiny_patch16_2244"), "unknown timm architecture",
                      "did you mean vit_tiny_patch16_224")


def test_onnx_that_fails_checker(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not protobuf at all" * 10)
    assert_user_error(run("inspect", garbage), "not a valid ONNX model")
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["undefined_tensor"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph), broken)
    assert_user_error(run("inspect", broken), "not a valid ONNX model")


def test_unsupported_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert_user_error(run("inspect", tmp_path), "none of the supported formats")


def test_state_dict_without_architecture(tmp_path, tiny_ckpt):
    torch.save(tiny_timm().state_dict(), tmp_path / "sd.pth")
    assert_user_error(run("inspect", tmp_path / "sd.pth"), "weights only", "timm:ARCH")
    assert_user_error(run("inspect", tiny_ckpt), "only weights", "timm:ARCH")


def test_pickled_module_without_trust(tmp_path):
    torch.save(tiny_timm(), tmp_path / "whole.pt")
    assert_user_error(run("inspect", tmp_path / "whole.pt"), "--trust-pickle")
    ok = run("inspect", tmp_path / "whole.pt", "--trust-pickle", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["structure"]["depth"] == 2


def test_export_from_onnx_says_torch_is_needed(tmp_path, tiny_onnx_artifact):
    assert_user_error(run("export", tiny_onnx_artifact / "model.onnx", "-o", tmp_path / "o"),
                      "needs a PyTorch model")
    assert not (tmp_path / "o").exists()


def test_bad_option_values(tmp_path):
    assert_user_error(run("inspect", "builtin:digits-vit", "--mean", "0.5,0.5"), "3 comma-separated")
    assert_user_error(run("inspect", "builtin:digits-vit", "-k", "img_size"), "not key=value")
    assert_user_error(run("export", "builtin:digits-vit", "-o", tmp_path / "o", "--data",
                          tmp_path / "nothing"), "does not exist")
    assert not (tmp_path / "o").exists()


def test_every_command_that_takes_a_model_takes_the_same_source_options(tiny_ckpt, tmp_path):
    """A checkpoint built with size overrides works everywhere (prune had no -k)."""
    from conftest import HELDOUT

    source = ["timm:vit_tiny_patch16_224", "-w", tiny_ckpt, *kwargs_cli()]
    samples = REPO_SAMPLES
    for args in (["inspect", *source], ["predict", *source, samples, "--json", "--top-k", "1"],
                 ["prune", *source, "--heads", "0.5", "-q", "-o", tmp_path / "pruned"],
                 ["bench", *source, "--runs", "1", "--warmup", "0"],
                 ["eval", source[0], source[0], *source[1:], "--data", HELDOUT, "--samples", "12",
                  "-o", tmp_path / "eval"]):
        result = run(*args)
        assert result.exit_code == 0, (args[0], result.output)
    assert json.loads((tmp_path / "pruned" / "card.json").read_text())["source"]["kwargs"]["embed_dim"] == 32
    compiled = run("compile", *source, "--target", "x86-cpu", "-o", tmp_path / "b", "-q")
    assert compiled.exit_code == 0, compiled.output
    assert_user_error(run("predict", tmp_path / "b", samples, "-w", tiny_ckpt),
                      "weights cannot apply to the bundle")


def test_every_command_that_loads_a_model_takes_the_shared_source_options():
    import typer.main

    loading = {"weights", "model_kwargs", "trust_pickle"}
    preprocessing = {"mean", "std", "crop_pct", "interpolation", "input_size", "labels"}
    group = typer.main.get_command(app)
    params = {name: {p.name for p in command.params} for name, command in group.commands.items()}
    for name in ("inspect", "export", "prune", "quantize", "compile", "predict"):
        assert loading | preprocessing <= params[name], name
    for name in ("eval", "bench", "run"):
        assert loading <= params[name] and not preprocessing & params[name], name
    # parsed once, before the command runs: a bad value is one line on every command
    assert_user_error(run("bench", "builtin:digits-vit", "-k", "no_equals_sign"), "key=value")
    assert_user_error(run("eval", "builtin:digits-vit", "--data", "nowhere", "-o", "ev", "-k", "x"), "key=value")
