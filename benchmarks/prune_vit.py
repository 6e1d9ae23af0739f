"""Compensated pruning on the real DeiT-Tiny, in one run, with the baselines beside it.

    .venv/bin/python benchmarks/prune_vit.py [--targets 0.85,0.75] [--distill-steps 0]
                                                     [--recover-steps 0] [--skip-speed] [--folds 0,1]

Two folds of the 500 real ImageNet images (../shared/realdata): prune on one fold (vitedge keeps
a fifth of it aside for its held-out figures), evaluate on the other, swap; top-1 and agreement
with the unpruned model are over all 500. At each MAC target (the share of MACs kept), rows:

- `taylor`: Torch-Pruning with Taylor importance, no compensation (`--method plain`: what
  `vitedge prune --data` did before compensation);
- `corp-style`: MLP units only, chosen and folded into fc2 by ridge regression, no refit toward
  the unpruned model (the method of CORP, arXiv 2602.05243, as reimplemented here);
- `vitedge`: `vitedge prune --data FOLD --target-macs T` with nothing else (the default:
  heads and MLP units, compensation, the refit toward the unpruned block outputs);
- with `--distill-steps N`, `vitedge + distill`: the same and N label-free distillation steps
  (logits, lr 1e-4);
- with `--recover-steps N`, `vitedge + recovery`: the same and N steps of block-wise recovery
  (`--distill-blocks 1 --lr 1e-5`: every block's tokens matched, images blended pairwise, early
  stopping on the held-out KL).

Targets: top-1 drop <= 1 point at >= 15 % fewer MACs and <= 3 points at >= 25 % fewer; each
prune <= 10 minutes on 2 cores (compensation alone <= 2 minutes), peak memory < 4 GB. Then the
x86-cpu bundles of the `vitedge` rows (fold 0) timed against the unpruned model's bundle, on
ONNX Runtime and OpenVINO, in alternating rounds. Prints the CPU and ISA it ran on.
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import realdata  # noqa: E402
from results import machine_line  # noqa: E402

from vitedge.data import model_labels, open_data  # noqa: E402
from vitedge.drift import compare, topk_accuracy  # noqa: E402
from vitedge.models.load import load  # noqa: E402
from vitedge.prune.distill import DistillConfig  # noqa: E402
from vitedge.prune.pipeline import prune  # noqa: E402
from vitedge.prune.plan import Method, PrunePlan  # noqa: E402


def logits(module, images: np.ndarray) -> np.ndarray:
    import torch

    module.eval()
    with torch.inference_mode():
        tensor = torch.from_numpy(images)
        return torch.cat([module(tensor[i:i + 50]) for i in range(0, len(tensor), 50)]).numpy()


def corp_style(teacher, fold: Path, pre, target: float, size) -> tuple[object, float, float]:
    """MLP units only, folded into fc2, no refit: the MLP share `--target-macs` would search for
    MLP units alone (the widths Torch-Pruning's rounding keeps there)."""
    import torch

    from vitedge.models.structure import count_macs
    from vitedge.prune.compensate import compensated_prune
    from vitedge.prune.pipeline import _search_ratios
    from vitedge.prune.structured import prune_model

    images = np.concatenate(list(open_data(fold, pre, samples=None).batches(64)))
    order = np.random.default_rng(0).permutation(len(images))
    train = torch.from_numpy(images[order[min(200, max(10, len(images) // 5)):]])  # as vitedge's split
    macs = count_macs(teacher, size)
    ratios = _search_ratios(teacher, target, macs, size, 8, lambda _message: None, heads=False)
    goal = prune_model(copy.deepcopy(teacher), ratios, importance="l2")["after"]
    student = copy.deepcopy(teacher)
    start = time.perf_counter()
    compensated_prune(student, goal, train)
    return student, time.perf_counter() - start, count_macs(student, size) / macs


def bundle_speed(tmp: Path, rows: dict[str, Path]) -> None:
    from vitedge.runtime.base import interleaved_latency
    from vitedge.sessions import load as session

    vitedge = [str(Path(sys.executable).with_name("vitedge"))]
    for runtime in ("onnxruntime", "openvino"):
        bundles = {}
        for name, artifact in rows.items():
            onnx = tmp / f"{name}-onnx"
            if not onnx.exists():
                subprocess.run([*vitedge, "export", str(artifact), "-o", str(onnx), "--parity-samples", "4"],
                           check=True, capture_output=True)
            bundle = tmp / f"{name}-{runtime}"
            subprocess.run([*vitedge, "compile", str(onnx), "--target", "x86-cpu", "--runtime", runtime,
                            "-o", str(bundle), "-q"], check=True, capture_output=True)
            bundles[name] = session(bundle)
        for batch in (1, 8):
            ms = interleaved_latency(bundles, batch, rounds=8, runs=20 if batch == 1 else 6)
            base = ms["unpruned"]
            print(f"- {runtime} FP32 bundle, batch {batch}: " + ", ".join(
                f"{name} {value:.2f} ms ({base / value:.2f}x)" for name, value in ms.items()))
        for s in bundles.values():
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default="0.85,0.75", help="MAC shares to keep")
    parser.add_argument("--distill-steps", type=int, default=0)
    parser.add_argument("--recover-steps", type=int, default=0)
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    if not realdata.available():
        print(f"skipped: {realdata.missing_message()}")
        return
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    targets = [float(t) for t in args.targets.split(",")]
    folds_used = [int(f) for f in args.folds.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        deit = load("timm:deit_tiny_patch16_224", weights=realdata.DEIT_WEIGHTS)
        pre, size = deit.card.preprocessing, deit.card.preprocessing.input_size
        folds = realdata.two_folds(tmp, deit.card.labels)
        teacher = deit.torch_module("benchmark").eval()
        evaluation = {}
        for k, fold in enumerate(folds):
            data = open_data(fold, pre, samples=None)
            images = np.concatenate(list(data.batches(64)))
            evaluation[k] = (images, model_labels(deit.card, data), logits(teacher, images))
        everything = np.concatenate([evaluation[1 - k][2] for k in folds_used])
        labels = np.concatenate([evaluation[1 - k][1] for k in folds_used])
        print(f"unpruned DeiT-Tiny: top-1 {100 * topk_accuracy(everything, labels):.1f} % on the {len(labels)} "
              "evaluation images")
        methods = ([] if args.skip_baselines else ["taylor", "corp-style"]) + ["vitedge"]
        if args.distill_steps:
            methods.append("vitedge + distill")
        if args.recover_steps:
            methods.append("vitedge + recovery")
        verdicts: dict[float, list[tuple[str, float, float, float, float]]] = {}
        speed_rows: dict[str, Path] = {}
        print("\n| MACs kept (target) | method | MAC cut | top-1 | drop | agreement | seconds per prune | "
              "peak RSS |\n|---|---|---|---|---|---|---|---|")
        for target in targets:
            for method in methods:
                outputs, seconds, shares = [], [], []
                for k in folds_used:
                    fold, other = folds[k], 1 - k
                    start = time.perf_counter()
                    if method == "corp-style":
                        student, took, share = corp_style(teacher, fold, pre, target, size)
                    else:
                        out = tmp / f"{method.replace(' ', '')}-{target}-{k}"
                        plan = PrunePlan(target_macs=target,
                                         method=Method.PLAIN if method == "taylor" else Method.AUTO)
                        config = DistillConfig(steps=0)
                        if method == "vitedge + distill":
                            config = DistillConfig(steps=args.distill_steps, batch_size=16, lr=1e-4)
                        elif method == "vitedge + recovery":
                            config = DistillConfig(steps=args.recover_steps, batch_size=16, lr=1e-5, blocks=1.0,
                                                   mixup=True, criterion="kl", eval_every=25, patience=6)
                        metrics = prune(deit, out, plan, data=fold, distill=config)
                        student, took, share = load(out).module, time.perf_counter() - start, metrics["mac_share"]
                        if method == "vitedge" and k == folds_used[0]:
                            speed_rows[f"{target:g}"] = out
                    seconds.append(took)
                    shares.append(share)
                    outputs.append(logits(student, evaluation[other][0]))
                pruned = np.concatenate(outputs)
                reference = np.concatenate([evaluation[1 - k][2] for k in folds_used])
                truth = np.concatenate([evaluation[1 - k][1] for k in folds_used])
                top1, base = topk_accuracy(pruned, truth), topk_accuracy(reference, truth)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
                print(f"| {target:.2f} | {method} | {100 * (1 - np.mean(shares)):.1f} % | {100 * top1:.1f} % | "
                      f"{100 * (base - top1):+.1f} | {100 * compare(reference, pruned).top1_agreement:.1f} % | "
                      f"{np.mean(seconds):.0f} | {rss:.1f} GiB |", flush=True)
                verdicts.setdefault(target, []).append((method, 1 - float(np.mean(shares)), 100 * (base - top1),
                                                        float(np.max(seconds)), rss))
        print("\ntargets: top-1 drop <= 1 point at >= 15 % fewer MACs, <= 3 points at >= 25 % fewer; "
              "<= 10 minutes per prune; peak memory < 4 GiB")
        for target, rows in verdicts.items():
            for method, cut, drop, took, rss in rows:
                if not method.startswith("vitedge"):
                    continue
                limit = 1.0 if cut < 0.2 else 3.0
                print(f"- {method} at {100 * cut:.1f} % fewer MACs: drop {drop:.1f} points, "
                      + ("met" if drop <= limit else f"MISSED by {drop - limit:.1f} points") + f" (limit {limit:g}); "
                      + f"{took:.0f} s per prune, " + ("met" if took <= 600 else "MISSED") + f"; {rss:.1f} GiB, "
                      + ("met" if rss < 4 else "MISSED"))
        if not args.skip_speed and speed_rows:
            print("\n### x86-cpu bundles (fold 0's vitedge artifacts vs the unpruned model)\n")
            from vitedge.export import export_onnx

            export_onnx(deit, tmp / "unpruned-onnx", parity_samples=4)
            bundle_speed(tmp, {"unpruned": tmp / "unpruned-onnx", **speed_rows})


if __name__ == "__main__":
    main()
