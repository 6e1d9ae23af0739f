"""vitedge run / eval / report / capture on CPU: real files, folders, an MJPEG stream served here."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import HELDOUT, assert_user_error, chromium, make_digits_video
from streams import MjpegServer, video_frames
from typer.testing import CliRunner

from vitedge.cli.app import app
from vitedge.errors import InputError
from vitedge.live.camera import FrameSource
from vitedge.live.loop import ROUND_WAIT_S, run_loop
from vitedge.live.options import RunOptions
from vitedge.models.options import SourceOptions
from vitedge.runtime.base import Session
from vitedge.sessions import load as load_session

VITEDGE = Path(sys.executable).with_name("vitedge")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_digits_video(tmp_path_factory.mktemp("v") / "cam.mp4", frames=90, hold=10)


@pytest.fixture(scope="module")
def bundle(digits_onnx, tmp_path_factory) -> Path:
    from vitedge.compile.prepare import compile_bundle
    from vitedge.models.load import load
    from vitedge.quantize.ptq import quantize
    from vitedge.quantize.recipes import Recipe
    from vitedge.targets import load_target

    root = tmp_path_factory.mktemp("deploy")
    shutil.copytree(digits_onnx, root / "digits-onnx")
    from conftest import TRAIN

    quantize(load(root / "digits-onnx"), TRAIN, root / "int8", eval_data=HELDOUT,
             recipe=Recipe.LINEAR_ONLY, samples=64, eval_samples=100)
    compile_bundle(load(root / "int8"), load_target("x86-cpu"), root / "x86")
    return root / "x86"


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "frames.jsonl").read_text().splitlines()]


def test_sources_file_folder_glob(video, tmp_path):
    with FrameSource.open(str(video)) as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(90)) and frames[0].image.shape == (480, 640, 3)
    with FrameSource.open(str(video), loop=True) as source:
        looped = [f for _, f in zip(range(200), source)]
    assert len(looped) == 200 and source.stats.loops == 2
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("0045.png", "0103.png"):
        shutil.copy(HELDOUT / "3" / name, folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    with FrameSource.open(str(folder)) as source:
        frames = list(source)
    assert [f.name for f in frames] == ["0045.png", "0103.png", "broken.png"]
    assert frames[2].image is None and source.stats.corrupt == 1
    with FrameSource.open(str(folder / "0*.png")) as source:
        assert len(list(source)) == 2
    with pytest.raises(InputError, match="does not exist"):
        FrameSource.open(str(tmp_path / "missing.mp4"))


def test_run_on_a_file_logs_every_frame_with_shadow(bundle, video, tmp_path):
    deployed, reference = load_session(bundle), load_session(bundle.parent / "digits-onnx")
    summary = run_loop(deployed, FrameSource.open(str(video)), tmp_path / "run", reference=reference,
                  options=RunOptions(shadow_every=5))
    lines = _lines(tmp_path / "run")
    assert sorted(line["index"] for line in lines) == list(range(90))  # once each, none lost
    counts = summary.frames
    assert counts.read == counts.logged + counts.dropped == 90 and counts.dropped == 0
    shadowed = [line for line in lines if "shadow" in line]
    assert {line["index"] for line in shadowed} <= set(range(0, 90, 5))
    assert len(shadowed) + summary.shadow.skipped_reference_behind == 18
    # the summary's totals are the mean of the per-frame metrics that were logged
    assert summary.drift.samples == len(shadowed)
    assert summary.drift.top1_agreement == pytest.approx(np.mean([l["shadow"]["agree"] for l in shadowed]))
    assert summary.drift.kl == pytest.approx(np.mean([l["shadow"]["kl"] for l in shadowed]), abs=1e-6)
    truth = json.loads(Path(str(video) + ".labels.json").read_text())["labels"]
    accuracy = np.mean([int(l["top"][0][1]) == truth[l["index"]] for l in lines])
    assert accuracy > 0.8  # the synthetic camera is readable by the shipped model
    assert summary.loop_overhead_ms.p50 > 0 and summary.deployed.latency_ms.calls == 90


def test_odd_frames_are_counted_not_fatal(bundle, tmp_path):
    import cv2

    folder = tmp_path / "odd"
    folder.mkdir()
    frame = cv2.imread(str(HELDOUT / "3" / "0045.png"))
    cv2.imwrite(str(folder / "a.png"), cv2.resize(frame, (640, 480)))
    cv2.imwrite(str(folder / "b.png"), cv2.cvtColor(cv2.resize(frame, (320, 240)), cv2.COLOR_BGR2GRAY))
    (folder / "c.png").write_bytes(b"\x89PNG broken")
    cv2.imwrite(str(folder / "d.png"), cv2.resize(frame, (640, 480)))
    summary = run_loop(load_session(bundle), FrameSource.open(str(folder)), tmp_path / "run",
                  options=RunOptions(shadow_every=0, show=True))
    counts = summary.frames
    assert counts.logged == 4 and counts.corrupt == 1 and counts.size_changes == 2
    lines = {l["index"]: l for l in _lines(tmp_path / "run")}
    assert lines[2]["corrupt"] and all(lines[i]["top"][0][1] == "3" for i in (0, 1, 3))
    if "GUI:                           NONE" in cv2.getBuildInformation():  # --show turns itself off, once
        events = [json.loads(l)["event"] for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
        assert events.count("no GUI") == 1


class SlowReference(Session):
    """A reference that takes 50 ms per frame, so the shadow queue fills up."""

    backend = "slow"

    def __init__(self, inner: Session) -> None:
        super().__init__(inputs=inner.inputs, outputs=inner.outputs, precision="fp32")
        self.inner, self.card = inner, inner.card

    def _infer(self, batch):
        time.sleep(0.15)
        return self.inner.infer(batch)


def test_slow_reference_is_skipped_not_queued(bundle, video, tmp_path):
    deployed = load_session(bundle)
    slow = SlowReference(load_session(bundle.parent / "digits-onnx"))
    summary = run_loop(deployed, FrameSource.open(str(video)), tmp_path / "run", reference=slow,
                  options=RunOptions(shadow_every=1))
    shadow = summary.shadow
    assert shadow.skipped_reference_behind > 30  # most frames could not be shadowed
    assert shadow.compared + shadow.skipped_reference_behind == 90
    assert sorted(l["index"] for l in _lines(tmp_path / "run")) == list(range(90))


def test_mjpeg_stream_killed_mid_run(bundle, video, tmp_path):
    server = MjpegServer(video_frames(video, 30), fps=60)
    source = FrameSource.open(server.url, reconnect_s=1.0)
    threading.Timer(1.5, server.kill).start()
    summary = run_loop(load_session(bundle), source, tmp_path / "run", reference=None,
                  options=RunOptions(shadow_every=0))
    assert summary.stop_reason == "source disconnected" and summary.live
    counts = summary.frames
    assert counts.logged > 10
    assert counts.read == counts.logged + counts.dropped
    events = [json.loads(l)["event"] for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "disconnected" in events and "gave up" in events


def test_reference_port_and_output_refusals(bundle, video, tmp_path):
    deployed = load_session(bundle)
    other = load_session("timm:vit_tiny_patch16_224", SourceOptions(model_kwargs={
        "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 7}))
    with pytest.raises(InputError, match="labels|classes"):
        run_loop(deployed, FrameSource.open(str(video)), tmp_path / "a", reference=other)
    from vitedge.live.serve import LiveServer

    busy = LiveServer("127.0.0.1:0", "x")
    port = busy.address.rsplit(":", 1)[1].strip("/")
    with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is already in use"):
        run_loop(deployed, FrameSource.open(str(video)), tmp_path / "b", options=RunOptions(
            shadow_every=0, serve=f"127.0.0.1:{port}"))
    busy.close()
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match="already exists"):
        run_loop(deployed, FrameSource.open(str(video)), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sigint_stops_gracefully_with_summary_and_report(bundle, video, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([str(VITEDGE), "run", str(bundle), "--source", str(video), "--loop",
                                "-o", str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 90  # until it has looped (frames.jsonl is flushed every second)
    while time.time() < deadline and not (
            (out / "frames.jsonl").is_file() and len((out / "frames.jsonl").read_text().splitlines()) > 100):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "signal SIGINT"
    assert summary["frames"]["logged"] == len(_lines(out)) > 90  # it looped, and logged every frame
    assert summary["shadow"]["compared"] > 0  # the reference was found through the lineage
    assert (out / "report.html").is_file() and "Traceback" not in stderr


def test_library_run_has_the_commands_defaults(bundle, video, tmp_path):
    """`vitedge.live.run` is the command without the CLI: reference found through the lineage,
    report written, the same alert thresholds; bad options are refused before anything is written."""
    import vitedge.live

    said: list[str] = []
    summary = vitedge.live.run(bundle, str(video), tmp_path / "run", options=RunOptions(frames=40),
                               progress=said.append)
    assert summary.frames.logged == 40 and summary.shadow.compared == 8  # every 5th frame
    assert summary.drift.top1_agreement is not None and (tmp_path / "run" / "report.html").is_file()
    assert any("shadow reference" in line and "digits-onnx" in line for line in said)
    with pytest.raises(InputError, match="--min-cosine watches feature extractors"):
        vitedge.live.run(bundle, str(video), tmp_path / "bad", options=RunOptions(min_cosine=0.9))
    lonely = tmp_path / "lonely" / "x86"  # away from its ONNX parent: found where it was at compile time
    shutil.copytree(bundle, lonely)
    said.clear()
    vitedge.live.run(lonely, str(video), tmp_path / "run2", options=RunOptions(frames=5), report=False,
                     progress=said.append)
    assert any("shadow reference" in line and "digits-onnx" in line for line in said)
    assert not (tmp_path / "run2" / "report.html").exists() and not (tmp_path / "bad").exists()


@pytest.mark.skipif(chromium() is None, reason="no chromium here (make test installs Debian's when it can)")
def test_live_page_in_headless_chromium(bundle, video, tmp_path):
    from vitedge.live.serve import free_port

    port = free_port()
    done: dict = {}
    stop = threading.Event()
    source = FrameSource.open(str(video), loop=True)
    read = source.read
    source.read = lambda: None if stop.is_set() else read()  # ends the run when the test is done
    worker = threading.Thread(target=lambda: done.setdefault("summary", run_loop(
        load_session(bundle), source, tmp_path / "run",
        reference=load_session(bundle.parent / "digits-onnx"),
        options=RunOptions(shadow_every=2, serve=f"127.0.0.1:{port}", duration=120))))
    worker.start()
    time.sleep(2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10) as stream:
        head = stream.read(4096)
    assert b"Content-Type: image/jpeg" in head and b"\xff\xd8" in head  # a JPEG frame arrived
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=90).stdout
    stop.set()
    worker.join(timeout=60)
    assert 'id="stream"' in dom and 'src="/stream.mjpg"' in dom
    frames = int(dom.split('id="frames">')[1].split("<")[0])
    assert frames > 0  # the page's script fetched /metrics.json and filled the table
    assert "%" in dom.split('id="agreement">')[1].split("<")[0]
    assert done["summary"].frames.logged > 0


def test_eval_and_report(bundle, tmp_path):
    from vitedge.evaluate import evaluate
    from vitedge.report.write import write_report

    result = evaluate([str(bundle.parent / "digits-onnx"), str(bundle)], HELDOUT, tmp_path / "ev",
                      samples=120)
    first, second = result.models
    assert result.samples == 120 and result.labeled
    assert first.top1 > 0.95 and first.vs_first is None
    assert second.vs_first.samples == 120 and second.vs_first.top1_agreement > 0.95
    assert abs(second.top1 - first.top1) < 0.05
    assert {d.class_name for d in second.per_class_delta} == {str(i) for i in range(10)}
    data = write_report(tmp_path / "ev", tmp_path / "r" / "eval.html")
    page = (tmp_path / "r" / "eval.html").read_text()
    assert data["kind"] == "eval" and page.count("data:image/png;base64,") >= 3
    assert "agreement with first" in page and (tmp_path / "r" / "eval.md").read_text().startswith("# vitedge eval")


def test_capture_keeps_spaced_frames_and_drops_duplicates(video, tmp_path):
    from vitedge.live.capture import capture

    summary = capture(str(video), 12, tmp_path / "cap")
    assert summary["kept"] + summary["near_duplicates_dropped"] <= 12 and summary["kept"] >= 6
    assert len(list((tmp_path / "cap").glob("*.png"))) == summary["kept"]
    static = tmp_path / "static"
    static.mkdir()
    frame = video_frames(video, 1)[0]
    import cv2

    for i in range(5):
        cv2.imwrite(str(static / f"{i}.png"), frame)
    assert capture(str(static), 5, tmp_path / "cap2")["near_duplicates_dropped"] == 4


def test_cli_run_and_bad_inputs(bundle, video, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(bundle), "--source", str(video), "--frames", "30",
                                 "-o", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    assert "--frames 30 reached: 30 frames" in " ".join(result.output.split())
    assert (tmp_path / "r" / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "r"), "-o", str(tmp_path / "again.html")])
    assert result.exit_code == 0 and (tmp_path / "again.json").is_file()
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hi")
    cases = [
        (["run", str(bundle), "--source", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "x")],
         "does not exist"),
        (["run", str(bundle), "--source", str(video), "-o", str(tmp_path / "r")], "already exists"),
        (["run", str(bundle), "--source", str(video), "--reference", str(not_a_model), "-o",
          str(tmp_path / "y")], "none of the supported formats"),
        (["run", str(bundle), "--source", str(video), "--reference", str(tmp_path), "-o",
          str(tmp_path / "y")], "lies inside the input"),
        (["report", str(tmp_path)], "neither a run directory"),
        (["capture", str(video), "-n", "0", "-o", str(tmp_path / "z")], "Invalid value for '-n'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prometheus_metrics_scraped_during_a_run_match_the_summary(bundle, video, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from vitedge.live.serve import free_port

    def samples(text: str) -> dict[str, float]:
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                assert sample.labels.get("target") in (None, "x86-cpu", "arm64-cpu") or "le" in sample.labels
                if "le" not in sample.labels:
                    found[sample.name] = sample.value
        return found

    metrics_port, page_port = free_port(), free_port()
    scraped: dict[str, float] = {}

    def scrape(line: dict) -> None:
        if line["index"] == 29:  # during the run, over HTTP, as Prometheus does
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            scraped.update(samples(body))
            page = urllib.request.urlopen(f"http://127.0.0.1:{page_port}/metrics", timeout=5).read().decode()
            assert samples(page)["vitedge_frames_logged_total"] == 30  # --serve has /metrics too
            with pytest.raises(urllib.error.HTTPError):  # --metrics serves nothing else
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=5)

    deployed, reference = load_session(bundle), load_session(bundle.parent / "digits-onnx")
    summary = run_loop(deployed, FrameSource.open(str(video)), tmp_path / "run", reference=reference,
                       options=RunOptions(shadow_every=3, metrics=f"127.0.0.1:{metrics_port}",
                                          serve=f"127.0.0.1:{page_port}"), on_frame=scrape)
    assert scraped["vitedge_frames_logged_total"] == 30 and scraped["vitedge_frames_read_total"] >= 30
    assert scraped["vitedge_inference_seconds_count"] == 30
    # the end: metrics.prom (node_exporter's textfile format) holds summary.json's figures
    final = samples((tmp_path / "run" / "metrics.prom").read_text())
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "metrics.prom" in written["files"]
    frames = written["frames"]
    assert final["vitedge_frames_read_total"] == frames["read"] == 90
    assert final["vitedge_frames_logged_total"] == frames["logged"]
    assert final["vitedge_frames_dropped_total"] == frames["dropped"]
    assert final["vitedge_frames_corrupt_total"] == frames["corrupt"]
    assert final["vitedge_frames_shadowed_total"] == written["shadow"]["compared"] == summary.drift.samples
    assert final["vitedge_shadow_skipped_total"] == written["shadow"]["skipped_reference_behind"]
    assert final["vitedge_inference_seconds_count"] == written["deployed"]["latency_ms"]["calls"] == 90
    assert final["vitedge_fps"] == pytest.approx(written["fps"], rel=1e-6)
    assert final["vitedge_drift_alert"] in (0.0, 1.0) and (written["alerts"] or final["vitedge_drift_alert"] == 0.0)
    assert 0.0 <= final["vitedge_rolling_agreement"] <= 1.0
    sum_ms = final["vitedge_inference_seconds_sum"] * 1000
    assert sum_ms == pytest.approx(sum(deployed.timing.calls_ms), rel=1e-6)


def test_several_sources_are_batched_on_one_model(bundle, video, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from vitedge.report.write import write_report
    from vitedge.schemas.results import MultiRunSummary

    deployed, reference = load_session(bundle), load_session(bundle.parent / "digits-onnx")
    sources = [FrameSource.open(str(video)), FrameSource.open(str(video)), FrameSource.open(str(HELDOUT))]
    summary = run_loop(deployed, sources, tmp_path / "run", reference=reference,
                       options=RunOptions(shadow_every=3, frames=60, window=7))
    assert isinstance(summary, MultiRunSummary) and [e.dir for e in summary.streams] == ["stream0", "stream1",
                                                                                      "stream2"]
    # files never stall: every round had a frame of each stream, and one model call took all three
    assert summary.frames.logged == summary.batching.frames == 180
    assert summary.batching.sizes == {"3": 60} and summary.deployed.latency_ms.calls == 60
    assert summary.stop_reason == "--frames 60 reached"
    alone = run_loop(load_session(bundle), FrameSource.open(str(video)), tmp_path / "alone",
                     options=RunOptions(shadow_every=0, frames=60))
    assert alone.frames.logged == 60
    single = {line["index"]: line for line in _lines(tmp_path / "alone")}
    scraped, rolling = {}, {}
    for family in text_string_to_metric_families((tmp_path / "run" / "metrics.prom").read_text()):
        for sample in family.samples:
            if sample.name == "vitedge_frames_logged_total":
                scraped[sample.labels["stream"]] = sample.value
            if sample.name in ("vitedge_rolling_agreement", "vitedge_rolling_kl"):
                rolling[sample.name[16:], int(sample.labels["stream"])] = sample.value
    assert scraped == {"0": 60, "1": 60, "2": 60}  # one scrape target, a series per stream
    for number in range(3):
        folder = tmp_path / "run" / f"stream{number}"
        stream = json.loads((folder / "summary.json").read_text())
        lines = _lines(folder)
        assert stream["stream"] == number and stream["frames"]["logged"] == 60 == len(lines)
        assert sorted(line["index"] for line in lines) == list(range(60))
        assert {line["stream"] for line in lines} == {number} and {line["batch"] for line in lines} == {3}
        shadowed = [line for line in lines if "shadow" in line]
        assert len(shadowed) + stream["shadow"]["skipped_reference_behind"] == 20
        assert stream["drift"]["samples"] == len(shadowed) > 0
        last = sorted(shadowed, key=lambda line: line["index"])[-7:]  # the rolling window of 7, at the end
        assert rolling["agreement", number] == pytest.approx(np.mean([l["shadow"]["agree"] for l in last]))
        assert rolling["kl", number] == pytest.approx(np.mean([l["shadow"]["kl"] for l in last]), abs=1e-9)
        assert all(line["frame_ms"] >= line["latency_ms"] for line in lines)
        if number < 2:  # the same video as the run of one source: the same outputs, batched or not
            for line in lines:
                alone_top = single[line["index"]]["top"]
                assert line["top"][0][1] == alone_top[0][1]
                assert line["top"][0][2] == pytest.approx(alone_top[0][2], abs=1e-3)
    report = write_report(tmp_path / "run", tmp_path / "run" / "report.html")
    assert report["kind"] == "fleet" and len(report["streams"]) == 3
    assert report["runs"][0]["summary"]["batching"]["calls"] == 60


def _perturbed(artifact: Path, out: Path, shift: float) -> Session:
    """The artifact's model with its class-1 logit raised: a deployed model that really disagrees."""
    import onnx
    from onnx import numpy_helper

    from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

    model = onnx.load(artifact / "model.onnx")
    bias = next(i for i in model.graph.initializer if i.name == "head.bias")
    values = numpy_helper.to_array(bias).copy()
    values[1] += shift
    bias.CopyFrom(numpy_helper.from_array(values, "head.bias"))
    onnx.save(model, out)
    return OnnxRuntimeSession(out, card=load_session(artifact).card)


def test_fleet_report_puts_the_worst_streams_first(bundle, video, tmp_path):
    runner = CliRunner()
    reference_dir = bundle.parent / "digits-onnx"
    fleet = tmp_path / "fleet <b>"
    fleet.mkdir()
    result = runner.invoke(app, ["run", str(bundle), "--source", str(video), "--source", str(video),
                                 "--frames", "30", "-o", str(fleet / "cams"), "-q"])
    assert result.exit_code == 0, result.output
    assert "60 frames from 2 streams" in " ".join(result.output.split())
    assert json.loads((fleet / "cams" / "report.json").read_text())["kind"] == "fleet"
    drifting = run_loop(_perturbed(reference_dir, tmp_path / "shifted.onnx", 4.0), FrameSource.open(str(video)),
                        fleet / "bad", reference=load_session(reference_dir),
                        options=RunOptions(shadow_every=2, frames=60, window=20))
    assert drifting.drift.verdict == "drift"
    flips = [(l["shadow"]["reference_top1"], l["top"][0][1]) for l in _lines(fleet / "bad") if "shadow" in l]
    flips = [pair for pair in flips if pair[0] != pair[1]]
    assert flips
    shutil.copytree(fleet / "bad", fleet / "tampered")
    with open(fleet / "tampered" / "frames.jsonl", "a") as log:
        log.write("{}\n")
    result = runner.invoke(app, ["report", str(fleet / "*"), str(fleet / "cams"), "-o", str(tmp_path / "f.html")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "f.json").read_text())
    streams = data["streams"]
    assert len(streams) == 3 and streams[0]["run"] == str(fleet / "bad")  # drift first, each run once
    assert streams[0]["verdict"] == "drift" and streams[0]["alerts"] >= 1 and streams[0]["flips"] == len(flips)
    assert {s["run"] for s in streams[1:]} == {str(fleet / "cams" / "stream0"), str(fleet / "cams" / "stream1")}
    assert sum(f["frames"] for f in data["flips"]) == len(flips)
    assert [f["folder"] for f in data["left_out"]] == [str(fleet / "tampered")]
    page = (tmp_path / "f.html").read_text()
    assert "fleet &lt;b&gt;" in page and "fleet <b>" not in page
    assert_user_error(runner.invoke(app, ["report", str(fleet / "bad"), str(fleet / "cams")]), "add -o")
    assert_user_error(runner.invoke(app, ["report", str(fleet / "tampered"), str(tmp_path / "nothing*"),
                                          "-o", str(tmp_path / "g.html")]), "matches no folder")
    assert_user_error(runner.invoke(app, ["report", str(fleet / "tampered"), str(fleet / "tampered"),
                                          "-o", str(tmp_path / "g.html")]), "none of the folders is a finished run")
    assert not (tmp_path / "g.html").exists()


def test_a_lost_camera_does_not_stop_the_other_streams(bundle, video, tmp_path):
    server = MjpegServer(video_frames(video, 30), fps=60)
    camera = FrameSource.open(server.url, reconnect_s=60)  # still reconnecting when the run ends
    threading.Timer(1.0, server.kill).start()
    summary = run_loop(load_session(bundle), [camera, FrameSource.open(str(video), loop=True)], tmp_path / "run",
                       options=RunOptions(shadow_every=0, duration=3.5))
    assert summary.stop_reason == "--duration 3.5 s reached" and summary.live
    live, looped = (json.loads((tmp_path / "run" / f"stream{k}" / "summary.json").read_text()) for k in (0, 1))
    assert live["frames"]["logged"] > 10 and looped["frames"]["loops"] >= 1
    events = [json.loads(l)["event"] for l in (tmp_path / "run" / "stream0" / "events.jsonl").read_text().splitlines()]
    assert "disconnected" in events
    last_live = _lines(tmp_path / "run" / "stream0")[-1]["t"]
    file_lines = _lines(tmp_path / "run" / "stream1")
    assert {line["batch"] for line in file_lines} <= {1, 2} and 2 in {line["batch"] for line in file_lines}
    # while the camera reconnects the other stream goes on, not held up waiting for it each round
    stalled = [line for line in file_lines if line["t"] > last_live + 1.1]
    assert len(stalled) > 10
    assert len(stalled) / (stalled[-1]["t"] - stalled[0]["t"]) > 1.5 / ROUND_WAIT_S
