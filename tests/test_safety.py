"""Trust: nothing lost, nothing executed, nothing forged, nothing injected, no tracebacks.

Each test is a hostile-but-realistic use and asserts that the user's data is still there
(bytes compared), the exit code is 1 with one line, and no traceback escaped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HELDOUT, TRAIN, assert_user_error, chromium, native_cpu_target, tree
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.documents import sealed, write_document

VITEDGE = Path(sys.executable).with_name("vitedge")
SAMPLES = Path(__file__).resolve().parents[1] / "vitedge" / "assets" / "samples"
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def made(digits_onnx, tmp_path_factory):
    """An ONNX artifact, a bundle compiled from it, a finished run and an eval (built once)."""
    root = tmp_path_factory.mktemp("made")
    shutil.copytree(digits_onnx, root / "onnx")
    assert cli("compile", root / "onnx", "--target", native_cpu_target(), "-o", root / "bundle",
               "-q").exit_code == 0
    images = root / "imgs"
    shutil.copytree(HELDOUT / "3", images)
    result = cli("run", root / "bundle", "--source", images, "--frames", "20", "--shadow-every", "2",
                 "--reference", root / "onnx", "-o", root / "run", "-q", "--no-report")
    assert result.exit_code == 0, result.output
    result = cli("eval", root / "onnx", root / "bundle", "--data", HELDOUT, "--samples", "40",
                 "-o", root / "eval")
    assert result.exit_code == 0, result.output
    return root


def copy(made: Path, name: str, to: Path) -> Path:
    shutil.copytree(made / name, to / name)
    return to / name


def reseal(folder: Path) -> None:
    """What a forger with vitedge's own code can do: re-seal every document, re-hash the card."""
    import hashlib

    for name in ("summary.json", "eval.json", "bundle.json", "passport.json"):
        path = folder / name
        if path.is_file():
            try:
                write_document(path, json.loads(path.read_text()))
            except (ValueError, AttributeError):
                pass  # a document that is no longer an object stays as it is
    card = folder / "card.json"
    if card.is_file():
        data = json.loads(card.read_text())
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            data["files"] = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                             if isinstance(h, str) and len(h) == 64 and (folder / n).is_file()
                             and ".." not in n and not n.startswith("/") else h
                             for n, h in data["files"].items()}
        if isinstance(data, dict):
            write_document(card, data)


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


# ======================================================================== 2. nothing is lost
def test_overwrite_refuses_a_folder_vitedge_did_not_write(tmp_path):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.docx").write_bytes(b"four years of work")
    (out / "sub" / "data.csv").write_text("1,2,3\n")
    before = tree(out)
    assert_user_error(cli("export", "builtin:digits-vit", "-o", out, "--overwrite"),
                      "is not a vitedge output", "sub/", "thesis.docx")
    assert tree(out) == before


def test_overwrite_refuses_foreign_files_inside_a_vitedge_output(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    (art / "notes.txt").write_text("mine")
    run_dir = copy(made, "run", tmp_path)
    (run_dir / "disagreements" / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    before = tree(tmp_path)
    assert_user_error(cli("export", "builtin:digits-vit", "-o", art, "--overwrite"),
                      "holds notes.txt, which vitedge did not write")
    assert_user_error(cli("run", made / "bundle", "--source", made / "imgs", "--frames", "2",
                          "-o", run_dir, "--overwrite"), "disagreements/holiday.jpg")
    assert_user_error(cli("export", "builtin:digits-vit", "-o", run_dir, "--overwrite"),
                      "is a vitedge run directory, not a artifact")
    assert tree(tmp_path) == before


def test_overwrite_replaces_its_own_output_of_the_same_kind(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    result = cli("report", made / "run", "-o", art / "report.html")  # a report set inside: also ours
    assert result.exit_code == 0, result.output
    result = cli("export", "builtin:digits-vit", "-o", art, "--overwrite", "--parity-samples", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in art.iterdir()) == ["card.json", "model.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("case", ["quantize-into-itself", "capture-into-source", "run-into-bundle",
                                  "compile-into-parent", "compile-inside-source", "current-dir",
                                  "eval-into-data", "report-over-summary", "report-over-card",
                                  "bench-json-dir", "bench-json-foreign", "record-existing"])
def test_outputs_never_replace_inputs(made, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    art, bundle, run_dir = (copy(made, n, tmp_path) for n in ("onnx", "bundle", "run"))
    images = copy(made, "imgs", tmp_path)
    (tmp_path / "p").mkdir()
    shutil.copytree(art, tmp_path / "p" / "int8")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    (tmp_path / "movie.mp4").write_bytes(b"not ours")
    before = tree(tmp_path)
    args, message = {
        "quantize-into-itself": (["quantize", art, "--calib", TRAIN, "-o", art, "--overwrite"],
                                 "is an input of this command"),
        "capture-into-source": (["capture", images, "-o", images, "--overwrite"], "is an input"),
        "run-into-bundle": (["run", bundle, "--source", images, "-o", bundle, "--overwrite"], "is an input"),
        "compile-into-parent": (["compile", tmp_path / "p" / "int8", "--target", "x86-cpu", "-o",
                                 tmp_path / "p", "--overwrite"], "holds the input"),
        "compile-inside-source": (["compile", art, "--target", "x86-cpu", "-o", art / "sub"],
                                  "lies inside the input"),
        "current-dir": (["export", "builtin:digits-vit", "-o", ".", "--overwrite"], "the current directory"),
        "eval-into-data": (["eval", art, "--data", images, "-o", images, "--overwrite"], "is an input"),
        "report-over-summary": (["report", run_dir, "-o", run_dir / "summary.html"],
                                "summary.json exists and is not a report vitedge wrote"),
        "report-over-card": (["report", run_dir, "-o", art / "card.html"],
                             "card.json exists and is not a report vitedge wrote"),
        "bench-json-dir": (["bench", art, "--runs", "1", "--out", images], "is a folder; a file path"),
        "bench-json-foreign": (["bench", art, "--runs", "1", "--out", tmp_path / "notes.json"],
                               "notes.json exists and is not a bench table"),
        "record-existing": (["run", bundle, "--source", images, "--frames", "2", "-o", tmp_path / "r2",
                             "--record", tmp_path / "movie.mp4"], "--record"),
    }[case]
    assert_user_error(cli(*args), message)
    assert tree(tmp_path) == before
    assert cli("inspect", art).exit_code == 0  # still loads: nothing was touched


def test_a_second_writer_is_refused_while_the_first_runs(made, tmp_path):
    video = tmp_path / "cam.mp4"
    from conftest import make_digits_video

    make_digits_video(video, frames=60, hold=10)
    first = subprocess.Popen([VITEDGE, "run", made / "bundle", "--source", video, "--loop",
                              "--shadow-every", "0", "-o", tmp_path / "S", "-q", "--no-report"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    frames = tmp_path / "S" / "frames.jsonl"
    deadline = time.monotonic() + 60
    while (not frames.is_file() or frames.stat().st_size < 2000) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        second = cli("run", made / "bundle", "--source", video, "-o", tmp_path / "S", "--overwrite")
        assert_user_error(second, "is being written by another vitedge process", f"pid {first.pid}")
        grew = frames.stat().st_size
        time.sleep(1.5)
        assert frames.stat().st_size > grew  # the first one's frames are still there, still coming
    finally:
        first.send_signal(signal.SIGINT)
        output = first.communicate(timeout=60)[0]
    assert first.returncode == 0, output
    summary = json.loads((tmp_path / "S" / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["frames"]["logged"] > 10


def test_leftovers_of_killed_processes_are_cleaned_and_an_interrupted_swap_restored(tmp_path):
    (tmp_path / "Y").mkdir()
    (tmp_path / "Y" / "card.json").write_text('{"card_version": 2}')
    killed = subprocess.run([sys.executable, "-c", """
import os, tempfile
from pathlib import Path
from vitedge import locks
staging = locks.owned_dir(Path('.'), '.X.partial-')
(staging / 'model.onnx').write_bytes(b'half')
old = locks.owned_dir(Path('.'), '.Y.old-')
os.replace('Y', old / 'Y')          # killed between the two renames of an overwrite
scratch = locks.owned_dir(Path(tempfile.gettempdir()), 'vitedge-test-')
print(scratch, flush=True)
os.kill(os.getpid(), 9)
"""], cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    scratch = Path(killed.stdout.strip())
    assert scratch.is_dir() and not (tmp_path / "Y").exists()
    listed = subprocess.run([VITEDGE, "targets"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    notes = " ".join(listed.stderr.split())
    assert "restored" in notes and ".X.partial-" in notes and str(scratch) in notes
    assert (tmp_path / "Y" / "card.json").read_text() == '{"card_version": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Y"] and not scratch.exists()


def test_a_killed_run_keeps_its_frames_and_is_replaced_by_the_next(made, tmp_path):
    video = tmp_path / "cam.mp4"
    from conftest import make_digits_video

    make_digits_video(video, frames=60, hold=10)
    run_dir = tmp_path / "S"
    process = subprocess.Popen([VITEDGE, "run", made / "bundle", "--source", video, "--loop",
                                "--shadow-every", "0", "-o", run_dir, "-q"])
    deadline = time.monotonic() + 60
    while not (run_dir / "frames.jsonl").is_file() or (run_dir / "frames.jsonl").stat().st_size < 2000:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.kill()
    process.wait(timeout=30)
    assert json.loads((run_dir / "summary.json").read_text())["state"] == "running"
    assert_user_error(cli("report", run_dir), "did not finish")
    result = cli("run", made / "bundle", "--source", made / "imgs", "--frames", "3", "-o", run_dir,
                 "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "summary.json").read_text())["frames"]["logged"] == 3


def test_documents_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_document(path, {"kind": "run", "n": 1})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_document(path, {"kind": "run", "n": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_record_inside_the_run_directory_is_part_of_it(made, tmp_path):
    run_dir = tmp_path / "R"
    for _ in range(2):  # the second time --overwrite replaces run and recording together
        result = cli("run", made / "bundle", "--source", made / "imgs", "--frames", "4", "-o", run_dir,
                     "--record", run_dir / "annotated.mp4", "--overwrite", "-q")
        assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["record"] == "annotated.mp4" and "annotated.mp4" in summary["files"]


# ==================================================================== 3. nothing executed
def test_a_crafted_distillation_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "pruned"
    crafted = out.with_name("pruned.distill.pt")
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"
    subprocess.run([sys.executable, "-c", f"""
import pickle, torch
class Evil:
    def __reduce__(self):
        return (exec, ({code!r},))
torch.save({{"key": Evil()}}, {str(crafted)!r})
"""], check=True)
    before = crafted.read_bytes()
    result = cli("prune", "builtin:digits-vit", "--heads", "0.5", "--data", TRAIN, "--samples", "60",
                 "--distill-steps", "5", "-o", out)
    assert_user_error(result, "is not a vitedge distillation checkpoint", "would run code", "never runs code")
    assert not marker.exists() and crafted.read_bytes() == before and not out.exists()


def test_pickled_checkpoints_need_trust_pickle(tmp_path):
    import argparse

    import torch
    from conftest import kwargs_cli, tiny_timm

    path = tmp_path / "train_state.pth"  # what training scripts save: weights plus their args
    torch.save({"model": tiny_timm().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    refused = cli("inspect", "timm:vit_tiny_patch16_224", "-w", path, *kwargs_cli())
    assert_user_error(refused, "pickled Python objects", "--trust-pickle")
    trusted = cli("inspect", "timm:vit_tiny_patch16_224", "-w", path, *kwargs_cli(), "--trust-pickle")
    assert trusted.exit_code == 0, trusted.output


def test_hugging_face_folders_never_run_their_code(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    # transformers asks on the terminal whether to run the folder's code unless told not to
    done = subprocess.run([VITEDGE, "inspect", folder], input="y\ny\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "custom code" in done.stderr and "[y/N]" not in done.stdout + done.stderr
    assert not marker.exists()


def test_only_trust_pickle_loads_code_from_files():
    """Every torch.load in the package is weights_only, or tied to --trust-pickle in one place."""
    import re

    package = Path(__file__).resolve().parents[1] / "vitedge"
    loads = {}
    for path in package.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((.*?)\)\n", text, re.S):
            loads[f"{path.name}:{text[:match.start()].count(chr(10)) + 1}"] = match.group(1)
        assert not re.search(r"pickle\.loads?\(|allow_pickle=True|yaml\.load\(|\beval\(\s*[a-z]", text), path
    assert loads and all("weights_only=True" in args or "weights_only=not trust_pickle" in args
                         for args in loads.values()), loads
    assert sum("trust_pickle" in args for args in loads.values()) == 1
    # torch.jit.load / torch.export.load unpickle too: only graphs.py calls them, behind _need_trust
    callers = {p.name for p in package.rglob("*.py")
               if re.search(r"torch\.(jit|export)\.load\(", p.read_text())}
    assert callers == {"graphs.py"}
    models = (package / "models" / "load.py").read_text()
    assert models.count("_need_trust(path, trust_pickle") == 2


# ====================================================================== 4. nothing forged
def test_edited_cards_are_refused_everywhere(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    edit(art / "card.json", lambda c: c["labels"].__setitem__(3, "eight"))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(str(i) for i in range(10)))
    for args in (["inspect", art], ["export", art, "-o", tmp_path / "x"],
                 ["compile", art, "--target", "x86-cpu", "-o", tmp_path / "y"],
                 ["predict", art, SAMPLES], ["relabel", art, "--labels", names, "-o", tmp_path / "z"]):
        assert_user_error(cli(*args), "card.json was changed after vitedge wrote it", "vitedge relabel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.txt", "onnx"]


def test_removing_a_file_from_the_list_does_not_switch_verification_off(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    edit(art / "card.json", lambda c: c["files"].pop("model.onnx"))
    data = bytearray((art / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    assert_user_error(cli("inspect", art), "changed after vitedge wrote it")  # the seal
    write_document(art / "card.json", json.loads((art / "card.json").read_text()))  # a forger re-seals
    assert_user_error(cli("inspect", art), "does not list model.onnx, which a onnx artifact must have")


def test_paths_in_documents_stay_inside_their_folder(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    edit(art / "card.json", lambda c: c["files"].update({"/etc/shadow": "0" * 64}))
    write_document(art / "card.json", json.loads((art / "card.json").read_text()))
    result = cli("inspect", art)
    assert_user_error(result, "/etc/shadow", "not a relative path inside the folder")
    bundle = copy(made, "bundle", tmp_path)
    edit(bundle / "bundle.json", lambda b: b.update(model=str(art / "model.onnx")))
    reseal(bundle)
    assert_user_error(cli("predict", bundle, SAMPLES), "bundle.json", "model")
    run_dir = copy(made, "run", tmp_path)
    (tmp_path / "secret.jpg").write_bytes((made / "imgs").glob("*.png").__next__().read_bytes())
    lines = (run_dir / "frames.jsonl").read_text().splitlines()
    shadowed = next(i for i, line in enumerate(lines) if '"shadow"' in line)
    line = json.loads(lines[shadowed])
    line["saved"] = "../secret.jpg"
    lines[shadowed] = json.dumps(line)
    (run_dir / "frames.jsonl").write_text("\n".join(lines) + "\n")
    assert_user_error(cli("report", run_dir), "frames.jsonl was changed or removed")
    reseal(run_dir)
    edit(run_dir / "summary.json", lambda s: s["files"].update(
        {"frames.jsonl": __import__("hashlib").sha256((run_dir / "frames.jsonl").read_bytes()).hexdigest()}))
    reseal(run_dir)
    assert_user_error(cli("report", run_dir), "frames.jsonl line", "saved")


def test_a_symlink_out_of_the_artifact_is_refused(made, tmp_path):
    art = copy(made, "onnx", tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(art / "model.onnx", outside)
    (art / "model.onnx").symlink_to(outside)  # same bytes, same hash: only the link gives it away
    assert_user_error(cli("inspect", art), "links outside its folder")


def test_external_onnx_data_outside_the_artifact_is_refused(made, tmp_path):
    import onnx

    art = copy(made, "onnx", tmp_path)
    model = onnx.load(art / "model.onnx")
    onnx.save_model(model, tmp_path / "model.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    shutil.move(tmp_path / "weights.bin", tmp_path / "shared-weights.bin")
    external = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    for tensor in external.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../shared-weights.bin"
    onnx.save(external, art / "model.onnx")
    reseal(art)
    assert_user_error(cli("inspect", art), "external data", "../shared-weights.bin")


def test_relabel_writes_a_new_sealed_artifact_with_lineage(made, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                "eight", "nine"]))
    before = tree(made / "bundle")
    result = cli("relabel", made / "bundle", "--labels", names, "-o", tmp_path / "named")
    assert result.exit_code == 0, result.output
    assert tree(made / "bundle") == before
    predicted = cli("predict", tmp_path / "named", SAMPLES / "3.png", "--json", "--top-k", "1")
    assert predicted.exit_code == 0 and json.loads(predicted.stdout)["predictions"][0]["top"][0]["label"] == "three"
    card = json.loads((tmp_path / "named" / "card.json").read_text())
    from vitedge.artifact import artifact_hash, read_card

    assert card["lineage"][-1]["step"] == "relabel"
    assert card["lineage"][-1]["parent"]["artifact_hash"] == artifact_hash(read_card(made / "bundle"))
    names.write_text("zero\none\n")
    assert_user_error(cli("relabel", made / "bundle", "--labels", names, "-o", tmp_path / "few"),
                      "2 labels given for a model with 10 outputs")
    assert not (tmp_path / "few").exists()


# ======================================================================== 5. nothing injected
SCRIPT = "<img src=x onerror=\"var d=document.createElement('div');d.id='pwned';document.body.appendChild(d)\">"
SCRIPT_TAG = "<script>document.body.insertAdjacentHTML('beforeend','<i id=pwned2></i>')</script>"


def _injected(made: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A bundle whose labels carry script, and a source folder whose name does."""
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([f"{i}{SCRIPT}" if i % 2 else f"{i}{SCRIPT_TAG}" for i in range(10)]))
    assert cli("relabel", made / "bundle", "--labels", labels, "-o", tmp_path / "b").exit_code == 0
    assert cli("relabel", made / "onnx", "--labels", labels, "-o", tmp_path / "ref").exit_code == 0
    source = tmp_path / f"cam{SCRIPT}"
    source.mkdir()
    for digit in (2, 3):  # an even and an odd class: both labels show up
        for image in sorted((HELDOUT / str(digit)).glob("*.png"))[:10]:
            shutil.copy(image, source / f"{digit}-{image.name}")
    return tmp_path / "b", source


def test_reports_escape_every_user_string(made, tmp_path):
    bundle, source = _injected(made, tmp_path)
    result = cli("run", bundle, "--source", source, "--frames", "20", "--shadow-every", "2",
                 "--reference", tmp_path / "ref", "-o", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report.html").read_text()
    markdown = (tmp_path / "run" / "report.md").read_text()
    for text in (page, markdown):
        assert "<script>" not in text and "<img src=x" not in text
        assert "&lt;img src=x" in text and "&lt;script&gt;" in text


def _dom(url: str) -> str:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--no-first-run",
                           "--virtual-time-budget=4000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=90).stdout


@pytest.mark.skipif(chromium() is None, reason="no chromium here (make test installs Debian's when it can)")
def test_injected_script_does_not_run_in_a_browser(made, tmp_path):
    import threading

    from vitedge.live.camera import FrameSource
    from vitedge.live.loop import run_loop
    from vitedge.live.options import RunOptions
    from vitedge.live.serve import free_port
    from vitedge.sessions import load

    bundle, source = _injected(made, tmp_path)
    port = free_port()
    stop = threading.Event()
    frames = FrameSource.open(str(source), loop=True)
    read = frames.read
    frames.read = lambda: None if stop.is_set() else read()
    worker = threading.Thread(target=run_loop, args=(load(bundle), frames, tmp_path / "run"), kwargs=dict(
        reference=load(tmp_path / "ref"), options=RunOptions(shadow_every=2, serve=f"127.0.0.1:{port}",
                                                             duration=120)))
    worker.start()
    try:
        time.sleep(2)
        live = _dom(f"http://127.0.0.1:{port}/")
    finally:
        stop.set()
        worker.join(timeout=60)
    assert 'id="frames"' in live and int(live.split('id="frames">')[1].split("<")[0]) > 0  # the page ran
    assert "&lt;img src=x" in live  # the source name is shown, as text
    from vitedge.report.write import write_report

    write_report(tmp_path / "run", tmp_path / "report.html")
    report = _dom((tmp_path / "report.html").as_uri())
    assert "Agreement by reference class" in report
    for dom in (live, report):
        assert 'id="pwned"' not in dom and 'id="pwned2"' not in dom


def _bomb(path: Path) -> Path:
    from PIL import Image

    Image.new("1", (20000, 20000)).save(path)  # ~50 kB on disk, 1.2 GB as an OpenCV BGR frame
    return path


def test_decompression_bombs_are_skipped_and_counted_on_every_path(made, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(made / "imgs", folder)
    _bomb(folder / "0000-bomb.png")
    measured = subprocess.run([sys.executable, "-c", f"""
import resource, subprocess, sys
vitedge = {str(VITEDGE)!r}
for args in (["capture", {str(folder)!r}, "-n", "80", "-o", {str(tmp_path / "cap")!r}],
             ["run", {str(made / "bundle")!r}, "--source", {str(folder)!r}, "--shadow-every", "0",
              "--frames", "3", "-o", {str(tmp_path / "run")!r}, "-q"]):
    done = subprocess.run([vitedge, *args], capture_output=True, text=True)
    print(done.returncode, " ".join(done.stdout.split()))
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""], capture_output=True, text=True, check=True).stdout.splitlines()
    assert measured[0].startswith("0 ") and "1 unreadable" in measured[0]
    assert measured[1].startswith("0 ") and "1 corrupt" in measured[1]
    assert int(measured[2]) < 900  # MiB: the bomb was never decoded (it alone is 1.2 GB decoded)
    result = cli("predict", made / "bundle", folder)
    assert result.exit_code == 0 and "1 unreadable skipped" in " ".join(result.output.split())
    from vitedge.data import open_data
    from vitedge.models.load import load

    data = open_data(folder, load(made / "onnx").card.preprocessing, samples=None)
    assert len(data) == len(list((made / "imgs").iterdir())) and "400 MP, above the 89.5 MP limit" in data.skipped[0]


def test_the_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    from PIL import Image

    from vitedge.preprocess import MAX_PIXELS_VARIABLE, UnreadableImageError, image_size

    Image.new("RGB", (400, 300)).save(tmp_path / "photo.png")
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "100000")
    with pytest.raises(UnreadableImageError, match="above the 0.1 MP limit"):
        image_size(tmp_path / "photo.png")
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "120000")
    assert image_size(tmp_path / "photo.png") == (400, 300)


# ============================================================ 6. no tracebacks, no no-ops
@pytest.mark.parametrize("args, message", [
    (["quantize", "builtin:digits-vit", "--calib", TRAIN, "--samples", "-1", "-o", "{o}"], "'--samples'"),
    (["quantize", "builtin:digits-vit", "--calib", TRAIN, "--eval-samples", "-1", "-o", "{o}"], "'--eval-samples'"),
    (["quantize", "builtin:digits-vit", "--calib", TRAIN, "--max-drop", "nan", "-o", "{o}"], "not a finite number"),
    (["prune", "builtin:digits-vit", "--heads", "0.5", "--batch-size", "-1", "-o", "{o}"], "'--batch-size'"),
    (["prune", "builtin:digits-vit", "--heads", "0.5", "--lr", "nan", "-o", "{o}"], "nan is not a finite number"),
    (["prune", "builtin:digits-vit", "--heads", "0.5", "--lr", "-1", "-o", "{o}"], "-1 is outside (0, 10]"),
    (["run", "{bundle}", "--source", "{imgs}", "--window", "1000000000000", "-o", "{o}"], "'--window'"),
    (["run", "{bundle}", "--source", "{imgs}", "--serve", "127.0.0.1:99999", "-o", "{o}"], "port 0-65535"),
    (["run", "{bundle}", "--source", "{imgs}", "--serve", ":-1", "-o", "{o}"], "port 0-65535"),
    (["run", "{bundle}", "--source", "{imgs}", "--metrics", "nope", "-o", "{o}"], "--metrics 'nope' is not HOST:PORT"),
    (["run", "{bundle}", "--source", "{imgs}", "-o", "{file}", "--overwrite"], "is a file, not a run directory"),
    (["export", "builtin:digits-vit", "--opset", "99", "-o", "{o}"], "opset 99 is outside 17.."),
    (["export", "builtin:digits-vit", "--atol", "-1", "-o", "{o}"], "'--atol'"),
    (["bench", "builtin:digits-vit", "-o", "{dir}"], "is a folder; a file path is expected"),
    (["bench", "builtin:digits-vit", "--batch", "0"], "--batch 1..4096"),
    (["inspect", "builtin:digits-vit", "--weights", "{file}"], "--weights does not apply to builtin:digits-vit"),
    (["prune", "builtin:digits-vit", "--embed", "0.99", "-q", "-o", "{o}"], "--embed 0.99 removed nothing"),
    (["prune", "builtin:digits-vit", "--mlp", "0.5", "--round-to", "1000", "-q", "-o", "{o}"],
     "--mlp 0.5 removed nothing"),
    (["inspect", "timm:vit_tiny_patch16_224", "-k", "checkpoint_path=/etc/passwd"], "read a file or the network"),
    (["capture", "{imgs}", "-n", "0", "-o", "{o}"], "'-n'"),
    (["report", "{run}", "-o", "{o}"], "is not an .html file name"),
])
def test_bad_options_are_one_line(made, tmp_path, args, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    values = {"o": tmp_path / "o", "bundle": made / "bundle", "imgs": made / "imgs", "file": tmp_path / "file",
              "dir": tmp_path / "dir", "run": made / "run"}
    assert_user_error(cli(*[str(a).format(**values) for a in args]), message)
    assert not (tmp_path / "o").exists() and (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("name, change, message", [
    ("passport.json", lambda d: d.pop("runtime"), "passport.json: field runtime: Field required"),
    ("passport.json", lambda d: [d.clear(), d.update({})], "passport.json: field passport_version"),
    ("card.json", lambda d: d.update(files=3), "card.json: field files"),
    ("card.json", lambda d: d.update(labels=5), "card.json: field labels"),
    ("card.json", lambda d: d["files"].update({"model.onnx": None}), "card.json: field files.model.onnx"),
    ("card.json", lambda d: d["lineage"].append({"params": 1}), "card.json: field lineage.3.step"),
    ("bundle.json", lambda d: d.pop("batch"), "bundle.json: field batch: Field required"),
    ("bundle.json", lambda d: d.update(batch=[8, 2, 16]), "min <= opt <= max"),
])
def test_malformed_documents_name_the_file_and_field(made, tmp_path, name, change, message):
    bundle = copy(made, "bundle", tmp_path)
    edit(bundle / name, change)
    reseal(bundle)
    assert_user_error(cli("predict", bundle, SAMPLES), message)


def test_a_document_that_is_not_an_object_is_refused(made, tmp_path):
    bundle = copy(made, "bundle", tmp_path)
    (bundle / "passport.json").write_text("[]")
    reseal(bundle)
    assert_user_error(cli("predict", bundle, SAMPLES), "passport.json holds a JSON list, not an object")


# ================================================================================== fuzz
def _mutations():
    from hypothesis import strategies as st

    values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                       st.text(max_size=8), st.sampled_from(["../x", "/etc/passwd", "model.onnx", "..", ""]),
                       st.lists(st.integers(-2, 20), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                  st.integers(), max_size=2))
    return st.tuples(st.sampled_from(["delete", "replace", "flip", "truncate"]), st.integers(0, 10**6),
                     values, st.booleans())


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):
            yield from _paths(item, (*prefix, index))


def _mutate(path: Path, operation: str, pick: int, value, resealed: bool, folder: Path) -> None:
    raw = path.read_bytes()
    if operation == "flip":
        data = bytearray(raw)
        data[pick % len(data)] ^= 1 << (pick % 8)
        path.write_bytes(bytes(data))
        return
    if operation == "truncate":
        path.write_bytes(raw[: pick % len(raw)])
        return
    document = json.loads(raw)
    targets = [p for p in _paths(document) if p]
    where = targets[pick % len(targets)]
    parent = document
    for key in where[:-1]:
        parent = parent[key]
    if operation == "delete":
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    path.write_text(json.dumps(document, allow_nan=True))
    if resealed:
        reseal(folder)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["card.json", "bundle.json", "passport.json", "summary.json", "eval.json"])
def test_fuzzed_documents_are_refused_cleanly_or_still_work(made, tmp_path_factory, name):
    from hypothesis import HealthCheck, given, settings

    folder_name = {"summary.json": "run", "eval.json": "eval"}.get(name, "bundle")

    def consume(folder: Path):
        if folder_name == "bundle":
            return cli("predict", folder, SAMPLES / "3.png", "--json")
        return cli("report", folder, "-o", folder.parent / "r.html")

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_mutations())
    def check(mutation):
        root = tmp_path_factory.mktemp("fuzz")
        folder = copy(made, folder_name, root)
        _mutate(folder / name, *mutation, folder=folder)
        result = consume(folder)
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        if result.exit_code:
            assert_user_error(result)
        shutil.rmtree(root)

    check()


def test_sealing_is_stable_and_catches_any_edit():
    document = sealed({"b": [1, 2.5, None, float("nan")], "a": {"x": "é"}})
    assert document["b"][3] is None  # NaN is not JSON: written as null
    from vitedge.documents import seal_of

    assert seal_of(json.loads(json.dumps(document))) == document["seal"]
    document["a"]["x"] = "e"
    assert seal_of(document) != document["seal"]


def test_a_failed_library_step_gives_its_output_lock_back(made, tmp_path):
    from vitedge import locks
    from vitedge.compile.prepare import CompilePrecision, compile_bundle
    from vitedge.errors import InputError
    from vitedge.models.load import load
    from vitedge.targets import load_target

    with pytest.raises(InputError, match="int8 needs a quantized"):  # found after the output check
        compile_bundle(load(made / "onnx"), load_target("x86-cpu"), tmp_path / "b",
                       precision=CompilePrecision.INT8)
    assert str(locks.absolute_path(tmp_path / "b")) not in locks._locks
    other = subprocess.run([sys.executable, "-c", f"from vitedge import locks; print(locks.busy({str(tmp_path / 'b')!r}))"],
                           capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "False" and list(tmp_path.iterdir()) == []


def test_nothing_phones_home(digits_onnx, tmp_path):
    """ONNX Runtime (1DS), NNCF and OpenVINO send usage telemetry unless told not to, and write a
    device or client id into the home folder when they do (~/.cache/Microsoft, ~/intel): running
    ONNX Runtime, NNCF and OpenVINO through vitedge in a fresh process (not under pytest, which NNCF
    itself exempts) with an empty home must leave that home empty."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import sys\n"
        "from vitedge.models.load import load\n"
        "from vitedge.quantize.ptq import quantize\n"
        "from vitedge.runtime.openvino.loader import convert_to_ir\n"
        "src, calib, out = sys.argv[1:4]\n"
        "quantize(load(src), calib, out + '/int8', samples=16, eval_data=None)\n"  # NNCF imports OpenVINO first
        "convert_to_ir(src + '/model.onnx', out + '/ir/model.xml')\n"
        "from vitedge.runtime.openvino.runner import OpenVinoSession\n"
        "OpenVinoSession(out + '/ir/model.xml').close()\n")
    env = {**os.environ, "HOME": str(home)}
    for switch in ("NNCF_CI", "ORT_DISABLE_TELEMETRY", "JENKINS_URL", "CI"):
        env.pop(switch, None)
    (tmp_path / "out" / "ir").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", script, str(digits_onnx), str(TRAIN), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "int8" / "model.onnx").is_file() and (tmp_path / "out" / "ir" / "model.xml").is_file()
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []  # no ~/intel client id
