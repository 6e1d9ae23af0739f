"""`vitedge run` throughput and stability on this machine, measured in one run.

    .venv/bin/python benchmarks/live_loop.py [--frames 10000]

1. FPS on a 640x480 file with the shipped INT8 CPU bundle, shadowed by the FP32 ONNX model on
   every 5th frame; inference time and the loop's own overhead (capture is timed apart, too).
2. The same loop for `--frames` (default 10,000) frames of the looped video: resident memory
   after warm-up (frame 500) and at the end, and the frame accounting (read = logged + dropped).
3. Four streams of the video on one model (`vitedge run --source V x4`, frames batched across
   streams) against four separate `vitedge run` processes at once, each shadowed every 5th frame:
   aggregate FPS and per-stream frame latency p50/p95 (capture to result logged, `frame_ms`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vitedge.compile.prepare import compile_bundle  # noqa: E402
from vitedge.export import export_onnx  # noqa: E402
from vitedge.live.camera import FrameSource  # noqa: E402
from vitedge.live.loop import run_loop  # noqa: E402
from vitedge.live.options import RunOptions  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.quantize.ptq import quantize  # noqa: E402
from vitedge.sessions import load as load_session  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from make_digits_video import make_digits_video  # noqa: E402
from results import Results  # noqa: E402

from vitedge.targets import load_target  # noqa: E402

STREAMS = 4


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decode_fps(video: Path, frames: int = 300) -> float:
    source = FrameSource.open(str(video), loop=True)
    start = time.perf_counter()
    for _ in range(frames):
        source.read()
    source.close()
    return frames / (time.perf_counter() - start)


def frame_ms(run_dir: Path) -> list[float]:
    lines = (json.loads(line) for line in (run_dir / "frames.jsonl").read_text().splitlines())
    return [line["frame_ms"] for line in lines if "frame_ms" in line]


def percentiles(values: list[float]) -> str:
    import numpy as np

    return f"p50 {np.percentile(values, 50):.1f} ms / p95 {np.percentile(values, 95):.1f} ms"


def streams(results: Results, tmp: Path, video: Path) -> None:
    """Section 3: one process, four sources, against four processes of one source each."""
    vitedge = Path(sys.executable).with_name("vitedge")
    common = ["--reference", str(tmp / "fp32"), "--shadow-every", "5", "-q", "--no-report"]
    command = [str(vitedge), "run", str(tmp / "x86"), *sum((["--source", str(video)] for _ in range(STREAMS)), []),
               "-o", str(tmp / "multi"), *common]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((tmp / "multi" / "summary.json").read_text())
    multi_fps = summary["frames"]["logged"] / summary["seconds"]
    multi_latency = sum((frame_ms(tmp / "multi" / f"stream{k}") for k in range(STREAMS)), [])
    batching = summary["batching"]
    processes = [subprocess.Popen([str(vitedge), "run", str(tmp / "x86"), "--source", str(video),
                                   "-o", str(tmp / f"single{k}"), *common], stdout=subprocess.DEVNULL)
                 for k in range(STREAMS)]
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a vitedge run process failed ({process.returncode})")
    singles = [json.loads((tmp / f"single{k}" / "summary.json").read_text()) for k in range(STREAMS)]
    began = min(s["started"] for s in singles)
    ended = max(s["started"] + s["seconds"] for s in singles)
    separate_fps = sum(s["frames"]["logged"] for s in singles) / (ended - began)
    separate_latency = sum((frame_ms(tmp / f"single{k}") for k in range(STREAMS)), [])
    results.note(f"3. {STREAMS} streams of the 640x480 video, shadow every 5th frame, one process "
                 f"(--source x{STREAMS}): {multi_fps:.1f} FPS together "
          f"({multi_fps / STREAMS:.1f} per stream); {batching['calls']} model calls, "
          f"{batching['mean_batch']:.2f} frames per call; frame latency {percentiles(multi_latency)}")
    results.note(f"3. {STREAMS} processes at once: {separate_fps:.1f} FPS together "
          f"({separate_fps / STREAMS:.1f} per stream); frame latency {percentiles(separate_latency)}")
    results.note(f"3. ratio (one process / {STREAMS} processes): {multi_fps / separate_fps:.2f}× aggregate FPS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--streams-only", action="store_true", help="only section 3")
    args = parser.parse_args()
    results = Results("live_loop", "vitedge run: throughput, memory and several streams")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export_onnx(load("builtin:digits-vit"), tmp / "fp32", parity_samples=4)
        quantize(load(tmp / "fp32"), str(ROOT / "calibration/digits/train"), tmp / "int8",
                 eval_data=str(ROOT / "calibration/digits/heldout"))
        compile_bundle(load(tmp / "int8"), load_target("x86-cpu"), tmp / "x86")
        video = make_digits_video(tmp / "cam.mp4", frames=600)
        results.note(f"video: 640x480, 600 frames; decoding alone: {decode_fps(video):.0f} FPS")
        if args.streams_only:
            streams(results, tmp, video)
            results.save()
            return

        deployed, reference = load_session(tmp / "x86"), load_session(tmp / "fp32")
        summary = run_loop(deployed, FrameSource.open(str(video)), tmp / "run1", reference=reference,
                      options=RunOptions(shadow_every=5))
        lat, loop = summary.deployed.latency_ms, summary.loop_overhead_ms
        results.note(f"1. 600 frames, shadow every 5th: {summary.fps:.1f} FPS; inference p50 "
              f"{lat.p50_ms:.2f} ms / p95 {lat.p95_ms:.2f} ms; loop overhead (preprocess, "
              f"logging) p50 {loop.p50:.2f} ms / p95 {loop.p95:.2f} ms; shadowed "
              f"{summary.shadow.compared}, skipped {summary.shadow.skipped_reference_behind}; "
              f"agreement {100 * summary.drift.top1_agreement:.2f}%")
        summary = run_loop(load_session(tmp / "x86"), FrameSource.open(str(video)), tmp / "run1r",
                      reference=load_session(tmp / "fp32"),
                      options=RunOptions(shadow_every=5, record=tmp / "annotated.mp4"))
        results.note(f"1. same with --record (overlay + mp4v encode): {summary.fps:.1f} FPS, loop "
              f"overhead p50 {summary.loop_overhead_ms.p50:.2f} ms")

        marks: dict[str, float] = {}

        def on_frame(line: dict) -> None:
            if line["index"] == 500:
                marks["warm"] = rss_mib()

        deployed, reference = load_session(tmp / "x86"), load_session(tmp / "fp32")
        summary = run_loop(deployed, FrameSource.open(str(video), loop=True), tmp / "run2",
                      reference=reference, options=RunOptions(shadow_every=5, frames=args.frames),
                      on_frame=on_frame)
        end = rss_mib()
        counts = summary.frames
        lines = (tmp / "run2" / "frames.jsonl").read_text().splitlines()
        indices = sorted(json.loads(line)["index"] for line in lines)
        results.note(f"2. {args.frames} frames (looped video): {summary.fps:.1f} FPS; RSS after warm-up "
              f"{marks['warm']:.1f} MiB, at the end {end:.1f} MiB "
              f"({100 * (end - marks['warm']) / marks['warm']:+.2f}%); read {counts.read} = "
              f"logged {counts.logged} + dropped {counts.dropped}; frames.jsonl has "
              f"{len(lines)} lines, {len(set(indices))} distinct indices, "
              f"{'each once' if indices == list(range(len(indices))) else 'GAPS OR DUPLICATES'}")
        streams(results, tmp, video)
    results.save()


if __name__ == "__main__":
    main()
