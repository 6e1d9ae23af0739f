"""`vitedge optimize` on the real DeiT-Tiny with pruned candidates, measured in one run.

    .venv/bin/python benchmarks/optimize_deit.py [--prune 0,0.15,auto] [--tome 0] [--distill-steps 0]
                                                 [--work DIR]

Calibrates and prunes (compensated: `--prune P` removes a share P of the MACs, `auto` the largest
cut that holds the budget on the calibration images) on fold 0 of the 500 real ImageNet images
and holds out fold 1 (the seeded halves of benchmarks/realdata.py), for the x86-cpu target on
this machine, with the bounds of benchmarks/cpu_runtimes.py (1 point top-1, >= 98.5 %
agreement); prints the candidates (MACs, agreement, top-1, p50 latency, speed-up against the r0
FP32 ONNX Runtime bundle), the pick, and the pick against the fastest peer within the same
bounds on that machine (OpenVINO running the FP32 ONNX as is, its own precision pick; and forced
FP32), timed in the same alternating rounds. Target: the pick >= 1.2x that peer. Needs
../shared/realdata.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402
from results import Results  # noqa: E402

from vitedge.models.load import load  # noqa: E402


def peers(results: Results, out: Path, work: Path) -> None:
    """The pick against OpenVINO running the FP32 ONNX (as is, and forced FP32), same rounds."""
    from vitedge.runtime.base import interleaved_latency
    from vitedge.runtime.openvino.runner import OpenVinoSession
    from vitedge.sessions import load as load_session

    graph = out / "candidates" / "r0-onnx" / "model.onnx"
    sessions = {"pick": load_session(out / "best"), "OpenVINO as is": OpenVinoSession(graph, precision=None),
                "OpenVINO forced FP32": OpenVinoSession(graph)}
    for batch in (1, 8):
        ms = interleaved_latency(sessions, batch, rounds=8, runs=20 if batch == 1 else 6)
        fastest = min((k for k in ms if k != "pick"), key=ms.get)
        ratio = ms[fastest] / ms["pick"]
        results.note(f"batch {batch}: pick {ms['pick']:.2f} ms, {fastest} {ms[fastest]:.2f} ms: {ratio:.2f}× "
              + ("(target 1.2x met)" if ratio >= 1.2 else f"(target 1.2x MISSED by {1.2 - ratio:.2f})"))
    for session in sessions.values():
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prune", default="0,0.15,auto")
    parser.add_argument("--tome", default="0")
    parser.add_argument("--distill-steps", default="0")
    parser.add_argument("--work", type=Path, help="keep the folds and the optimize folder here")
    args = parser.parse_args()
    if not realdata.available():
        raise SystemExit(realdata.missing_message())
    results = Results("optimize_deit", "vitedge optimize on DeiT-Tiny with pruned candidates")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "fold1").is_dir():
            labels = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS).card.labels
            realdata.two_folds(work, labels)
        out = work / "optimized"
        command = [str(Path(sys.executable).with_name("vitedge")), "optimize", "timm:deit_tiny_patch16_224",
                   "-w", str(realdata.DEIT_WEIGHTS), "--target", "x86-cpu", "--data", str(work / "fold1"),
                   "--calib", str(work / "fold0"), "--samples", "250", "--prune", args.prune, "--tome", args.tome,
                   "--distill-steps", args.distill_steps, "--max-drop", "1", "--min-agreement", "0.985",
                   "-o", str(out), "--overwrite"]
        subprocess.run(command, check=True)
        document = json.loads((out / "optimize.json").read_text())
        measured = [c for c in document["candidates"] if c["status"] == "measured"]
        base = next(c for c in measured if c["name"] == "r0-fp32-onnxruntime")
        caption = (f"DeiT-Tiny, x86-cpu, calibrate/prune/distill on fold 0 ({document['calibration_samples']}), "
                   f"held out fold 1 ({document['eval_samples']}); FP32 top-1 {100 * document['fp32_top1']:.1f} %")
        rows = []
        for c in sorted(measured, key=lambda c: c["p50_ms"]):
            pruned = f"{100 * c['prune']:.0f} %" + (" (budget)" if c.get("pruning") == "budget" else "") \
                if c.get("prune") else "-"
            rows.append([c["name"], pruned, f"{c['macs'] / 1e6:.0f}", f"{100 * c['agreement']:.1f} %",
                         f"{100 * c['top1']:.1f} %", f"{c['p50_ms']:.2f}", f"{base['p50_ms'] / c['p50_ms']:.2f}×"])
        results.table(caption, ["candidate", "MACs pruned", "MACs (M)", "agreement", "top-1", "p50 ms", "speed-up"],
                      rows)
        for c in document["candidates"]:
            if c["status"] != "measured":
                results.note(f"{c['name']}: {c['status']}: {c.get('reason')}")
        results.note(f"chosen (within {document['max_drop']:g} points of top-1 and >= 98.5 % agreement): "
                     f"{document['chosen']}")
        pruned = [c for c in measured if c.get("prune")]
        if pruned:
            closest = min(pruned, key=lambda c: c["drop"])
            results.note(f"closest pruned candidate: {closest['name']} ({100 * closest['prune']:.0f} % fewer MACs): "
                         f"drop {closest['drop']:.1f} points, agreement {100 * closest['agreement']:.1f} % "
                         f"(bounds: 1 point, 98.5 %)")
        if document.get("load") and document["load"]["busy"]:
            results.note("warning: the machine was busy while optimize timed the bundles "
                         f"(others used {100 * document['load']['others']:.0f} % of the cores)")
        if document["chosen"]:
            peers(results, out, work)
    results.save()


if __name__ == "__main__":
    main()
