"""`vitedge optimize`: the fastest bundle within an accuracy budget, measured.

The search covers what vitedge can do to a ViT for a target: structured pruning (`--prune P`:
a share P of the MACs removed by compensated pruning on the calibration images, as `vitedge prune
--data CALIB --target-macs 1-P` does; `--prune auto`: the largest cut whose pruned model holds the
budget on the calibration images' held-out slice, as `vitedge prune --max-drop` does), token merging (`r` tokens per block, training-free, also on top of a
pruned model), precision (FP32, BF16 where the CPU has it, INT8 from `vitedge quantize`
with the target's scheme, INT8 with BF16 float layers) and runtime (every runtime the target
lists: ONNX Runtime, OpenVINO). Every candidate is an ordinary artifact or bundle under
OUT/candidates/, written by the same steps a user would run (prune --target-macs 1-P or --max-drop B,
export, prune --tome, quantize,
compile --runtime R --precision P) and loaded as `predict` loads it. Accuracy is top-1 agreement
with the FP32 source (and top-1 when the data is labeled) on held-out images: `--data`, split
in two (seeded, disjoint files) unless `--calib` is given. Latency is measured here, all
candidates in the same alternating rounds at the profile's `opt` batch, when this machine has
the target's ISA; otherwise each candidate gets a MAC-weighted cost estimate (FP32 1, BF16 0.5,
INT8 0.25 per MAC), labelled as such. The fastest candidate within the budget is copied to
OUT/best; optimize.json holds every figure and is updated after each candidate, so a run that
was stopped (or ran out of --time-budget) goes on with `--resume`.

A TensorRT target (a Jetson, a desktop GPU) gets FP16 and INT8 (+ FP16 float layers) bundles.
Where the engine cannot be built here (no TensorRT, another GPU) each candidate's accuracy comes
from ONNX Runtime running the bundle's own ONNX — the Q/DQ graph TensorRT builds from; an FP16
candidate runs FP32 there, which each candidate says — and the latency is the MAC estimate (FP16
0.5 per MAC, and INT8 no cheaper than FP16 until measured: the profiles default to FP16 because
INT8 ViTs are often no faster there), so the pick is the fewest MACs within the budget, in FP16:
build and time the candidates on the device (`vitedge build`, `vitedge bench`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import InputError, VitedgeError
from vitedge.locks import releasing
from vitedge.models.options import SourceOptions
from vitedge.optimize.choose import BEST, choose, copy_best, estimate_costs, time_bundles
from vitedge.optimize.variants import CANDIDATES, Builder, Variant, candidate_path, usable
from vitedge.outputs import OutputKind, input_paths, writing
from vitedge.schemas.base import LoadDoc
from vitedge.schemas.optimize import CandidateDoc, OptimizeDoc
from vitedge.targets import Precision, Runtime, Target, load_target

MANIFEST = "optimize.json"


@dataclass(frozen=True)
class OptimizeResult:
    out: Path
    document: OptimizeDoc
    best: Path | None


def parse_duration(text: str | None) -> float | None:
    """Seconds from '90s', '20m', '1.5h' or a plain number of seconds (None: no limit)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"--time-budget {text!r} is not a duration", "e.g. 90s, 20m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@releasing
def optimize(source: str | Path, target: Target | str | Path, data: str | Path, out: str | Path, *,
             calib: str | Path | None = None, max_drop: float = 1.0, min_agreement: float | None = None,
             time_budget: float | None = None, tome: tuple[int, ...] = (0, 8, 16),
             prune: tuple[float | str, ...] = (0.0,), distill_steps: int = 0, samples: int = 300,
             eval_samples: int | None = None, resume: bool = False, overwrite: bool = False,
             options: SourceOptions | None = None,
             progress: Callable[[str], None] | None = None) -> OptimizeResult:
    """Search, measure and choose (see the module docstring); write OUT and OUT/report.html;
    return its document."""
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    if not isinstance(target, Target):
        target = load_target(target)
    if max_drop < 0 or (min_agreement is not None and not 0 <= min_agreement <= 1):
        raise InputError("--max-drop must be >= 0 and --min-agreement within [0, 1]")
    tome = tuple(sorted(set(tome)))
    if any(r < 0 for r in tome):
        raise InputError(f"--tome {','.join(map(str, tome))}: token counts must be >= 0", "e.g. --tome 0,8,16")
    budget = any(p == "auto" for p in prune)
    shares = tuple(sorted({round(float(p), 2) for p in prune if p != "auto"}))
    if any(not 0 <= p < 1 for p in shares):
        raise InputError(f"--prune {','.join(map(str, shares))}: shares of the MACs to remove "
                         "must be within [0, 1)", "e.g. --prune 0,0.15,0.25 or --prune 0,auto")
    variants = [Variant(share, 0) for share in shares] + ([Variant(0.0, 0, budget=True)] if budget else [])
    if distill_steps < 0:
        raise InputError(f"--distill-steps {distill_steps} must be >= 0")
    from vitedge.models.load import as_loaded

    loaded = as_loaded(source, options)
    inputs = [*loaded.origin, *input_paths(data, calib)]
    with writing(out, OutputKind.OPTIMIZE, overwrite=overwrite, inputs=inputs, live=True,
                 resume=resume) as folder:
        search = _Search(folder, loaded, target, say, started, time_budget, distill_steps)
        search.open_data(data, calib, samples, eval_samples)
        search.start(str(source), max_drop, min_agreement, resume)
        # The likely winners first, so that a --time-budget stop leaves out the long shots: the
        # unpruned model in every precision (INT8 included), then token merging, then pruning.
        for pruned in variants:
            for r in tome:
                for int8 in (False, True):
                    search.variant(Variant(pruned.prune, r, pruned.budget), int8=int8)
        document = search.finish()
    best = Path(out) / BEST if document.chosen else None
    return OptimizeResult(Path(out), document, best)


class _Search:
    def __init__(self, folder: Path, loaded: Any, target: Target, say: Callable[[str], None],
                 started: float, time_budget: float | None, distill_steps: int = 300) -> None:
        from vitedge.runtime.openvino.loader import bf16_here, openvino_importable
        from vitedge.versions import machine_arch

        self.folder, self.loaded, self.target, self.say = folder, loaded, target, say
        self.started, self.time_budget, self.distill_steps = started, time_budget, distill_steps
        self.tensorrt = target.runtime is Runtime.TENSORRT
        self.same_isa = not self.tensorrt and target.isa in (None, machine_arch())
        self.runtimes = [Runtime.TENSORRT] if self.tensorrt else [
            r for r in target.runtimes if r is not Runtime.OPENVINO or openvino_importable() is None]
        self.bf16 = Precision.BF16 in target.precisions and Runtime.OPENVINO in self.runtimes and bf16_here()
        self.candidates: dict[str, dict[str, Any]] = {}
        self.not_tried: list[str] = []
        self.previous: dict[str, dict[str, Any]] = {}
        self.unbuildable: dict[Variant, str] = {}  # variants whose model could not be made, and why
        self.chosen: str | None = None
        self.pareto: list[str] = []
        self.load: LoadDoc | None = None  # how busy the machine was while the bundles were timed

    # ------------------------------------------------------------------ data and reference
    def open_data(self, data: str | Path, calib: str | Path | None, samples: int,
                  eval_samples: int | None) -> None:
        from vitedge.data import model_labels, open_data

        pre = self.loaded.card.preprocessing
        if calib is None:
            whole = open_data(data, pre, samples=None, role="data")
            self.calibration, self.evaluation = whole.split(0.5)
            if eval_samples is not None and eval_samples < len(self.evaluation):
                self.evaluation = self.evaluation.split(eval_samples / len(self.evaluation), seed=1)[0]
        else:
            self.calibration = open_data(calib, pre, samples=samples, role="calibration")
            self.evaluation = open_data(data, pre, samples=eval_samples, seed=1, role="eval")
        self.labels = model_labels(self.loaded.card, self.evaluation)

    def start(self, source: str, max_drop: float, min_agreement: float | None, resume: bool) -> None:
        from vitedge.artifact import sha256_file
        from vitedge.export import export_onnx
        from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession

        self.max_drop, self.min_agreement = max_drop, min_agreement
        if self.loaded.onnx_path is not None:  # an ONNX source is its own FP32 candidate model
            self.base: Any = self.loaded
            graph = self.loaded.onnx_path
        else:
            self.base = self._path("r0-onnx")
            if not (resume and usable(self.base)):
                self.say("exporting the FP32 source")
                export_onnx(self.loaded, self.base, overwrite=True)
            graph = self.base / "model.onnx"
        self.source_hash = sha256_file(graph)
        manifest = self.folder / MANIFEST
        if resume and manifest.is_file():
            from vitedge.documents import read_model

            previous = read_model(manifest, OptimizeDoc, hint="run optimize again without --resume")
            if (previous.source_hash, previous.target) != (self.source_hash, self.target.name) or \
                    (previous.eval_samples, previous.calibration_samples) != (len(self.evaluation),
                                                                              len(self.calibration)):
                raise InputError(f"{self.folder} was optimized for another source, target or data "
                                 f"({previous.source}, {previous.target}, {previous.data})",
                                 "resume with the same arguments, or write to another -o")
            self.previous = {c.name: c.to_dict() for c in previous.candidates if c.status != "failed"}
        with OnnxRuntimeSession(graph) as reference:
            self.fp32 = reference.infer_all(self.evaluation, 16)
        from vitedge.compile.passport import machine_facts
        from vitedge.drift import topk_accuracy
        from vitedge.versions import cpu_name

        self.fp32_top1 = topk_accuracy(self.fp32, self.labels) if self.labels is not None else None
        facts = machine_facts()
        self.machine = {"cpu": cpu_name(), "arch": facts["arch"], "cpu_features": facts["cpu_features"],
                        "onnxruntime": facts["onnxruntime"], "openvino": facts["openvino"]}
        self.settings = {"source": source, "target": self.target.name, "data": self.evaluation.origin,
                         "calibration": self.calibration.origin}
        self.builder = Builder(self.folder, self.loaded, self.base, self.target, self.calibration, self.say,
                               max_drop=max_drop, min_agreement=min_agreement, distill_steps=self.distill_steps)
        self.say(f"held-out: {len(self.evaluation)} samples; calibration: {len(self.calibration)}")
        self._write(finished=False)

    # ------------------------------------------------------------------ candidates
    def variant(self, variant: Variant, *, int8: bool) -> None:
        """The float (or INT8) model of `variant`, and its bundles."""
        if self.tensorrt:  # what a TensorRT user deploys: FP16, and INT8 with FP16 float layers
            half = Precision.FP16 in self.target.precisions
            precisions = [("best" if half else "int8") if int8 else ("fp16" if half else "fp32")]
        else:
            precisions = (["int8", *(["best"] if self.bf16 else [])] if int8 else
                          ["fp32", *(["bf16"] if self.bf16 else [])])
        names = [(variant.name(f"{p}-{rt}"), p, rt) for p in precisions for rt in self._runtimes_for(p)]
        done = {name for name, _p, _rt in names if name in self.previous and (
            self.previous[name]["status"] == "skipped" or usable(self._path(name)))}
        pending = [n for n in names if n[0] not in done]
        for name in sorted(done, key=[n for n, _p, _rt in names].index):
            self.candidates[name] = self.previous[name]
        if not pending:
            return
        if self._out_of_time():
            self.not_tried += [n for n, _p, _rt in pending]
            return
        reason = self.unbuildable.get(variant) or next(
            (c.get("reason") for n, c in self.previous.items()
             if c["status"] == "skipped" and n.startswith(variant.name(""))), None)
        if reason is None:
            try:
                model = self.builder.model(variant, int8)
            except VitedgeError as exc:
                reason = self.unbuildable[variant] = exc.message  # its INT8 pass is not tried again
                self.say(f"skipping every {variant.name('')[:-1]} candidate: {reason}")
        if reason is not None:
            for name, precision, runtime in pending:
                self._record(name, variant, precision, runtime, status="skipped", reason=reason)
            return
        for name, precision, runtime in pending:
            if self._out_of_time():
                self.not_tried.append(name)
                continue
            self._bundle(name, variant, precision, runtime, model)

    def _runtimes_for(self, precision: str) -> list[str]:
        return [str(rt) for rt in self.runtimes
                if precision in ("fp32", "int8") or rt in (Runtime.OPENVINO, Runtime.TENSORRT)]

    def _bundle(self, name: str, variant: Variant, precision: str, runtime: str, model: Any) -> None:
        from vitedge.artifact import read_card
        from vitedge.compile.prepare import compile_bundle
        from vitedge.drift import topk_accuracy
        from vitedge.sessions import load as load_session

        begun = time.perf_counter()
        self.say(f"[{len(self.candidates) + 1}] {name}: compiling and measuring")
        try:
            bundle = compile_bundle(model, self.target, self._path(name), precision=precision,
                                    runtime=runtime, overwrite=True, weigh_best=False)
            native = True
            try:
                session = load_session(bundle.path)
            except InputError:
                if not self.tensorrt:
                    raise
                native = False  # no engine here: the bundle's own ONNX on ONNX Runtime, said so
                session = load_session(bundle.path, backend="onnxruntime")
            with session:
                logits = session.infer_all(self.evaluation, 16)
                precision_run = session.precision if native else \
                    f"{session.precision} on ONNX Runtime ({precision} on the device)"
                ran_on = session.description
        except VitedgeError as exc:
            self._record(name, variant, precision, runtime, status="failed", reason=exc.message)
            return
        agreement = float(np.mean(logits.argmax(1) == self.fp32.argmax(1)))
        top1 = topk_accuracy(logits, self.labels) if self.labels is not None else None
        drop = 100 * (self.fp32_top1 - top1) if top1 is not None and self.fp32_top1 is not None \
            else 100 * (1 - agreement)
        card = read_card(model) if isinstance(model, Path) else model.card
        quantization = card.metrics.get("quantization") or {}
        self._record(name, variant, precision, runtime, status="measured", bundle=f"{CANDIDATES}/{name}",
                     precision_run=precision_run, macs=self.builder.macs(variant), agreement=agreement, top1=top1,
                     drop=drop, int8_share=quantization.get("int8_linear_mac_share", 0.0),
                     native=native, ran_on=ran_on, seconds=time.perf_counter() - begun)
        self.say(f"  agreement {100 * agreement:.1f}%" + (f", top-1 {100 * top1:.1f}%" if top1 is not None else "")
                 + f", {precision_run} on {runtime}")

    def _record(self, name: str, variant: Variant, precision: str, runtime: str, **fields: Any) -> None:
        self.candidates[name] = {"name": name, "tome": variant.tome, "prune": self.builder.pruned_share(variant),
                                 "pruning": "budget" if variant.budget else "target" if variant.prune else None,
                                 "precision": precision, "runtime": runtime, **fields}
        self._write(finished=False)

    # ------------------------------------------------------------------ choosing
    def finish(self) -> OptimizeDoc:
        measured = [c for c in self.candidates.values() if c["status"] == "measured"]
        batch = self.target.batch.opt
        if self.tensorrt:  # TensorRT engines built here (on the device itself) can be timed here
            self.same_isa = bool(measured) and all(c.get("native") for c in measured)
        if self.same_isa and measured:
            self.load = time_bundles(self.folder, measured, batch, self.say)
        else:
            estimate_costs(measured, self.tensorrt)
        chosen, pareto = choose(measured, self._meets, timed=self.same_isa)
        if chosen is not None:
            copy_best(self.folder, chosen["bundle"])
        self.chosen, self.pareto = (chosen["name"] if chosen else None), pareto
        document = self._write(finished=not self.not_tried)
        from vitedge.report.write import write_report

        write_report(self.folder, self.folder / "report.html")
        return document

    def _meets(self, candidate: dict[str, Any]) -> bool:
        return candidate["drop"] <= self.max_drop and (
            self.min_agreement is None or candidate["agreement"] >= self.min_agreement)

    # ------------------------------------------------------------------ bookkeeping
    def _path(self, name: str) -> Path:
        return candidate_path(self.folder, name)

    def _out_of_time(self) -> bool:
        return self.time_budget is not None and time.perf_counter() - self.started > self.time_budget

    def _write(self, *, finished: bool) -> OptimizeDoc:
        from vitedge.documents import write_document

        document = {"kind": "optimize", **self.settings, "source_hash": self.source_hash,
                    "eval_samples": len(self.evaluation), "calibration_samples": len(self.calibration),
                    "labeled": self.labels is not None, "max_drop": self.max_drop,
                    "min_agreement": self.min_agreement, "batch": self.target.batch.opt,
                    "measured_here": self.same_isa,
                    "machine": self.machine, "fp32_top1": self.fp32_top1,
                    "candidates": [CandidateDoc.from_dict(c).to_dict() for c in self.candidates.values()],
                    "chosen": self.chosen, "pareto": self.pareto,
                    "not_tried": self.not_tried, "seconds": time.perf_counter() - self.started,
                    "finished": finished, "load": self.load.to_dict() if self.load is not None else None}
        checked = OptimizeDoc.from_dict(document)  # what a resume will read back
        write_document(self.folder / MANIFEST, document)
        return checked
