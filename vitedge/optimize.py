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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import InputError, VitedgeError
from vitedge.locks import releasing
from vitedge.models.options import SourceOptions
from vitedge.outputs import OutputKind, input_paths, writing
from vitedge.schemas.optimize import CandidateDoc, OptimizeDoc
from vitedge.targets import Precision, Runtime, Target, load_target

MANIFEST = "optimize.json"
CANDIDATES = "candidates"
BEST = "best"
# Relative cost per MAC where latency cannot be measured here (an estimate, labelled as such).
COST_PER_MAC = {"fp32": 1.0, "bf16": 0.5, "fp16": 0.5, "int8": 0.25}


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


@dataclass(frozen=True)
class Variant:
    """A model the search builds bundles of: pruned by a share of the MACs (or as far as the
    budget holds), then `r` tokens merged per block."""

    prune: float  # share of the MACs removed by pruning
    tome: int
    budget: bool = False  # pruned as far as the budget holds on the calibration images (--prune auto)

    @property
    def pruned(self) -> bool:
        return bool(self.prune) or self.budget

    @property
    def prefix(self) -> str:  # the names of the unpruned variants are those of earlier releases
        return "pauto-" if self.budget else f"p{round(100 * self.prune)}-" if self.prune else ""

    def name(self, what: str) -> str:
        return f"{self.prefix}r{self.tome}-{what}"


class _Search:
    def __init__(self, folder: Path, loaded: Any, target: Target, say: Callable[[str], None],
                 started: float, time_budget: float | None, distill_steps: int = 300) -> None:
        from vitedge.compile.cpu import bf16_here, openvino_importable
        from vitedge.versions import machine_arch

        self.folder, self.loaded, self.target, self.say = folder, loaded, target, say
        self.started, self.time_budget, self.distill_steps = started, time_budget, distill_steps
        self.tensorrt = target.runtime is Runtime.TENSORRT
        self.same_isa = not self.tensorrt and target.isa in (None, machine_arch())
        self.runtimes = [Runtime.TENSORRT] if self.tensorrt else [
            r for r in target.runtimes if r is not Runtime.OPENVINO or openvino_importable() is None]
        self.bf16 = Precision.BF16 in target.precisions and Runtime.OPENVINO in self.runtimes and bf16_here()
        self.candidates: dict[str, dict[str, Any]] = {}
        self.mac_counts: dict[Variant, int] = {}
        self.not_tried: list[str] = []
        self.previous: dict[str, dict[str, Any]] = {}
        self.unbuildable: dict[Variant, str] = {}  # variants whose model could not be made, and why
        self.chosen: str | None = None
        self.pareto: list[str] = []

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
        from vitedge.runtime.onnxrt import OnnxRuntimeSession

        self.max_drop, self.min_agreement = max_drop, min_agreement
        if self.loaded.onnx_path is not None:  # an ONNX source is its own FP32 candidate model
            self.base: Any = self.loaded
            graph = self.loaded.onnx_path
        else:
            self.base = self._path("r0-onnx")
            if not (resume and self._usable(self.base)):
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
            self.previous[name]["status"] == "skipped" or self._usable(self._path(name)))}
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
                model = self._model(variant, int8)
            except VitedgeError as exc:
                reason = self.unbuildable[variant] = exc.message  # its INT8 pass is not tried again
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

    def _onnx_dir(self, variant: Variant) -> Any:
        return self.base if variant == Variant(0.0, 0) else self._path(variant.name("onnx"))

    def _model(self, variant: Variant, int8: bool) -> Any:
        """The model the bundles of this variant compile (FP32 ONNX, or its INT8 QDQ artifact)."""
        from vitedge.export import export_onnx

        r = variant.tome
        onnx_dir = self._onnx_dir(variant)
        if (r or variant.pruned) and self.loaded.module is None:
            raise InputError(("pruning" if variant.pruned else "token merging") + " needs the PyTorch model; "
                             "the source is an ONNX graph",
                             "optimize the torch source (timm:NAME --weights ..., a vitedge torch artifact)")
        if onnx_dir is not self.base and not self._usable(onnx_dir):
            from vitedge.prune.pipeline import prune
            from vitedge.prune.plan import PrunePlan

            model = self._pruned(variant) if variant.pruned else self.loaded
            if r:
                self.say(f"merging {r} tokens per block (ToMe)")
                prune(model, self._path(variant.name("tome")), PrunePlan(tome=r), overwrite=True)
                model = self._path(variant.name("tome"))
            export_onnx(model, onnx_dir, overwrite=True)
        if not int8:
            return onnx_dir
        int8_dir = self._path(variant.name("int8"))
        if not self._usable(int8_dir):
            from vitedge.quantize.ptq import BudgetMissed, quantize

            self.say(f"quantizing {variant.name('')[:-1]} for {self.target.name} ({self.target.int8_scheme})")
            try:
                quantize(onnx_dir, self.calibration, int8_dir, target=self.target,
                         max_drop=self.max_drop, min_agreement=self.min_agreement, overwrite=True,
                         progress=lambda m: self.say(f"  {m}"))
            except BudgetMissed:
                pass  # the best model quantize found was written; it is measured like the others
        return int8_dir

    def _pruned(self, variant: Variant) -> Path:
        """The source pruned as `vitedge prune --data CALIB` would with its default method
        (compensated where the family allows): to 1 - `variant.prune` of the MACs, or as far as
        the budget holds on the calibration images' held-out slice; then `--distill-steps` (the
        held-out data never trains or judges it)."""
        from vitedge.prune.distill import DistillConfig
        from vitedge.prune.pipeline import prune
        from vitedge.prune.plan import PrunePlan

        path = self._path(variant.prefix + "pruned")
        if not self._usable(path):
            plan = PrunePlan(max_drop=self.max_drop, min_agreement=self.min_agreement) if variant.budget else \
                PrunePlan(target_macs=round(1 - variant.prune, 4))
            self.say("pruning " + ("as far as the budget holds on the calibration images" if variant.budget else
                                   f"{variant.prune:.0%} of the MACs")
                     + (f", distilling {self.distill_steps} steps" if self.distill_steps else ""))
            prune(self.loaded, path, plan, data=self.calibration, distill=DistillConfig(steps=self.distill_steps),
                  overwrite=True, progress=lambda m: self.say(f"  {m}"))
        return path

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
                     precision_run=precision_run, macs=self._macs(variant), agreement=agreement, top1=top1,
                     drop=drop, int8_share=quantization.get("int8_linear_mac_share", 0.0),
                     native=native, ran_on=ran_on, seconds=time.perf_counter() - begun)
        self.say(f"  agreement {100 * agreement:.1f}%" + (f", top-1 {100 * top1:.1f}%" if top1 is not None else "")
                 + f", {precision_run} on {runtime}")

    def _pruned_share(self, variant: Variant) -> float:
        """The share of the MACs pruning removed (what the pruned card measured; 0: not pruned)."""
        from vitedge.artifact import read_card

        path = self._path(variant.prefix + "pruned")
        if not variant.pruned or not self._usable(path):
            return variant.prune
        share = read_card(path).metrics.get("prune", {}).get("mac_share")
        return round(1 - share, 4) if share else variant.prune

    def _macs(self, variant: Variant) -> int:
        """MACs of one image in the float graph of the variant (MatMul/Gemm/Conv, ToMe's matching
        included), counted on the ONNX graph the same way for every variant (once per variant:
        each of its bundles has them)."""
        if variant not in self.mac_counts:
            import onnx

            from vitedge.quantize.qdq import compute_nodes

            onnx_dir = self._onnx_dir(variant)
            path = self.loaded.onnx_path if not isinstance(onnx_dir, Path) else onnx_dir / "model.onnx"
            graph = onnx.load(str(path), load_external_data=False)
            self.mac_counts[variant] = int(sum(n.macs for n in compute_nodes(graph)))
        return self.mac_counts[variant]

    def _record(self, name: str, variant: Variant, precision: str, runtime: str, **fields: Any) -> None:
        self.candidates[name] = {"name": name, "tome": variant.tome, "prune": self._pruned_share(variant),
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
            self._time(measured, batch)
        else:
            base = max((c["macs"] or 0) for c in measured) if measured else 0
            for c in measured:
                half = "fp16" if self.tensorrt and c["precision"] in ("fp16", "best") else \
                    "bf16" if c["precision_run"] in ("bf16", "int8+bf16") else "fp32"
                float_cost = COST_PER_MAC[half]
                # TensorRT profiles default to FP16 because INT8 ViTs are often no faster there at
                # batch 1: unmeasured, INT8 earns nothing over FP16 (fewer MACs still count)
                int8_cost = COST_PER_MAC["fp16"] if self.tensorrt else COST_PER_MAC["int8"]
                share = c.get("int8_share") or 0.0
                c["estimated_cost"] = ((c["macs"] or 0) / (base or 1)) * (
                    share * int8_cost + (1 - share) * float_cost)
        within = [c for c in measured if self._meets(c)]
        key = (lambda c: c["p50_ms"]) if self.same_isa else (lambda c: c["estimated_cost"])
        chosen = min(within, key=lambda c: (key(c), -c["agreement"])) if within else None  # ties: closer to FP32
        pareto = [c["name"] for c in measured if not any(
            key(o) <= key(c) and o["agreement"] >= c["agreement"] and (key(o), o["agreement"]) != (key(c), c["agreement"])
            for o in measured)]
        if chosen is not None:
            self._copy_best(chosen["bundle"])
        self.chosen, self.pareto = (chosen["name"] if chosen else None), pareto
        document = self._write(finished=not self.not_tried)
        from vitedge.report.write import write_report

        write_report(self.folder, self.folder / "report.html")
        return document

    def _meets(self, candidate: dict[str, Any]) -> bool:
        return candidate["drop"] <= self.max_drop and (
            self.min_agreement is None or candidate["agreement"] >= self.min_agreement)

    def _time(self, measured: list[dict[str, Any]], batch: int) -> None:
        from vitedge.runtime.base import interleaved_latency
        from vitedge.sessions import load as load_session

        self.say(f"timing {len(measured)} bundles in alternating rounds at batch {batch}")
        sessions = {c["name"]: load_session(self.folder / c["bundle"]) for c in measured}
        try:
            times = interleaved_latency(sessions, batch, rounds=6, runs=5, warmup=1)
        finally:
            for session in sessions.values():
                session.close()
        for c in measured:
            c["p50_ms"] = times[c["name"]]

    def _copy_best(self, bundle: str) -> None:
        from vitedge.artifact import read_card
        from vitedge.compile.bundle import read_bundle

        source = self.folder / bundle
        card = read_card(source)
        with writing(self.folder / BEST, OutputKind.BUNDLE, overwrite=True) as staging:
            for name in (*card.files, "card.json"):
                shutil.copy2(source / name, staging / name)
        read_bundle(self.folder / BEST)  # what a device will read

    # ------------------------------------------------------------------ bookkeeping
    def _path(self, name: str) -> Path:
        return self.folder / CANDIDATES / name

    def _usable(self, path: Path) -> bool:
        """An artifact a previous run finished (its files verify)."""
        from vitedge.artifact import is_artifact, read_card, verify_files

        if not is_artifact(path):
            return False
        try:
            verify_files(path, read_card(path))
        except InputError:
            return False
        return True

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
                    "finished": finished}
        checked = OptimizeDoc.from_dict(document)  # what a resume will read back
        write_document(self.folder / MANIFEST, document)
        return checked
