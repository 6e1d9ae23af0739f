"""CPU bundles: ONNX Runtime or OpenVINO, chosen by measuring both on this machine.

Which CPU runtime is faster depends on the CPU (OpenVINO's BF16/AMX kernels on a Sapphire Rapids
Xeon, ONNX Runtime's MLAS on many AMD and Arm CPUs), so `--runtime auto` builds every runtime
the target lists, times them in alternating rounds on the bundle's batch profile and keeps the
fastest; the passport records every figure and why. On another ISA nothing can be measured: the
profile's own runtime is kept and the passport says so.

ONNX Runtime candidates are the graph optimized offline (saved at OFFLINE_LEVEL, loaded with
optimization disabled) and the plain graph optimized when the session starts (level "all", which
adds CPU-specific layouts that must not be saved): on some CPUs the second is faster. OpenVINO
bundles hold the graph as OpenVINO IR (model.xml/model.bin, FP32 weights) and the precision
hint for its float layers; the precision OpenVINO actually runs is read back and recorded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.compile.bundle import MODEL, SOURCE
from vitedge.errors import ExportError, InputError, VitedgeError
from vitedge.runtime.onnxrt.loader import OFFLINE_LEVEL, onnxruntime_built, optimize_here
from vitedge.runtime.onnxrt.runner import OnnxRuntimeSession
from vitedge.runtime.openvino.loader import IR_MODEL, IR_WEIGHTS, openvino_here, openvino_importable
from vitedge.targets import CompilePrecision, CompileRuntime, Runtime, Target

if TYPE_CHECKING:
    from vitedge.runtime.base import Session

# What an OpenVINO bundle asks for its float layers, by the bundle's precision.
OV_HINTS = {CompilePrecision.FP32: "fp32", CompilePrecision.INT8: "fp32",
            CompilePrecision.BF16: "bf16", CompilePrecision.BEST: "bf16"}
TIMING_ROUNDS = 12  # alternating rounds of 3 timed calls per candidate


@dataclass
class Candidate:
    runtime: Runtime
    variant: str  # how it runs, for the passport and the compile line
    precision: CompilePrecision  # what the bundle runs with this runtime
    session: Session | None = None
    built: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    error: str | None = None


def runtimes_for(target: Target, requested: CompileRuntime, precision: CompilePrecision,
                 same_isa: bool, best: bool = False) -> tuple[list[Runtime], str | None]:
    """The runtimes to build for a CPU target, and a note when auto could not measure them all.
    `best`: the precision is what `--precision best` resolved to, so FP32 competes with BF16."""
    if requested is CompileRuntime.TENSORRT:
        raise InputError(f"{target.name} is a CPU target; TensorRT runs on NVIDIA GPUs",
                         f"use --runtime {' or '.join(target.runtimes)} (or auto), or a GPU --target")
    if requested is not CompileRuntime.AUTO:
        runtime = Runtime(requested.value)
        if runtime not in target.runtimes:
            raise InputError(f"target {target.name} lists runtimes {', '.join(target.runtimes)}, "
                             f"not {runtime}", "pick one of them, or --runtime auto")
        if precision is CompilePrecision.BF16 and runtime is Runtime.ONNXRUNTIME:
            raise InputError("ONNX Runtime's CPU provider runs fp32 and int8 here, not bf16",
                             "use --runtime openvino (or auto) for bf16, or --precision fp32")
        return [runtime], None
    if precision is CompilePrecision.BF16 and not best:
        return [Runtime.OPENVINO], "bf16 runs on OpenVINO only"
    if not same_isa:
        return [target.runtime], (f"the target is {target.isa}, this machine is not: runtimes are "
                                  f"only measured on the target's ISA, so the profile's "
                                  f"{target.runtime} is kept")
    runtimes = list(target.runtimes)
    missing = openvino_importable() if Runtime.OPENVINO in runtimes else None
    if missing:
        runtimes.remove(Runtime.OPENVINO)
        return runtimes, f"{missing}: only {', '.join(runtimes)} measured"
    return runtimes, None


def cpu_bundle(staging: Path, source_path: Path, target: Target, requested: CompileRuntime,
               precision: CompilePrecision, int8_graph: bool, batch: tuple[int, int, int],
               facts: dict[str, Any], say: Callable[[str], None], *, best: bool = False,
               tick: Callable[[int, int, str], None] | None = None
               ) -> tuple[dict[str, Any], dict[str, Any], CompilePrecision]:
    """Write the CPU bundle's model files into `staging`; return bundle.json, the passport's
    `built` and the precision the bundle runs.

    `tick(index, total, label)`: each timing round done (a progress bar).
    `best` (`--precision best`, resolved to BF16 float layers on a CPU with native BF16): on this
    ISA the same runtimes also compete with FP32 float layers, and the faster is kept. Native
    BF16 is not always faster: on a 2-core Xeon with AVX512_BF16 but no AMX, OpenVINO ran
    DeiT-Tiny in BF16 at 21.6 ms against 12.3 ms in FP32 (benchmarks/cpu_runtimes.py).
    """
    shutil.copyfile(source_path, staging / SOURCE)
    same_isa = target.isa in (None, facts["arch"])
    half = precision in (CompilePrecision.BF16, CompilePrecision.BEST)
    best = best and half and same_isa
    runtimes, note = runtimes_for(target, requested, precision, same_isa, best)
    full = CompilePrecision.INT8 if int8_graph else CompilePrecision.FP32  # FP32 float layers
    candidates: list[Candidate] = []
    measuring = requested is CompileRuntime.AUTO and same_isa
    for runtime in runtimes:
        if runtime is Runtime.ONNXRUNTIME:
            candidates.append(Candidate(runtime, "offline-optimized graph" if same_isa else
                                        "graph optimized on the device", full))
            if measuring:
                candidates.append(Candidate(runtime, "session-optimized graph", full))
        else:
            for each in (precision, full) if best else (precision,):
                hint = OV_HINTS[each]
                candidates.append(Candidate(runtime, f"int8, {hint} float layers" if int8_graph else hint,
                                            each))
    try:
        for candidate in candidates:
            _prepare(candidate, staging, target, facts, same_isa, int8_graph, say,
                     tolerate=len(candidates) > 1)
        working = [c for c in candidates if c.error is None]
        if not working:
            raise ExportError(f"no runtime could run the graph: {candidates[0].error}")
        rounds, load = 0, None
        if len(working) > 1:
            say(f"timing {len(working)} candidates in {TIMING_ROUNDS} alternating rounds at batch {batch[1]}")
            from vitedge.machine_load import LoadWatch
            from vitedge.runtime.base import interleaved_latency

            assert all(c.session is not None for c in working)
            with LoadWatch() as watch:
                label = f"timing {len(working)} runtimes (alternating rounds)"
                medians = interleaved_latency({str(i): c.session for i, c in enumerate(working)},  # type: ignore[misc]
                                              batch[1], rounds=TIMING_ROUNDS, runs=3, warmup=1,
                                              on_round=(lambda i, n: tick(i, n, label)) if tick else None)
            load = watch.load
            rounds = TIMING_ROUNDS
            for i, candidate in enumerate(working):
                candidate.p50_ms = round(medians[str(i)], 4)
        chosen = min(working, key=lambda c: c.p50_ms if c.p50_ms is not None else 0.0)
    finally:
        for candidate in candidates:
            if candidate.session is not None:
                candidate.session.close()
    _keep_only(staging, chosen)
    built = dict(chosen.built)
    if rounds:
        built["runtime_choice"] = {
            "batch": batch[1], "rounds": rounds, "chosen": candidates.index(chosen),
            "why": _why(chosen, candidates, batch[1]),
            "candidates": [{"runtime": str(c.runtime), "variant": c.variant, "p50_ms": c.p50_ms,
                            "error": c.error} for c in candidates],
            "load": load.to_dict() if load is not None else None}
    if note:
        built["note"] = "; ".join(n for n in (built.get("note"), note) if n)
    return _settings(chosen, target), built, chosen.precision


def _why(chosen: Candidate, candidates: list[Candidate], batch: int) -> str:
    others = ", ".join(f"{c.runtime} {c.variant} {c.p50_ms:.2f} ms" if c.p50_ms is not None
                       else f"{c.runtime} {c.variant} failed ({c.error})"
                       for c in candidates if c is not chosen)
    return f"fastest at batch {batch}: {chosen.runtime} {chosen.variant} {chosen.p50_ms:.2f} ms; {others}"


def _prepare(candidate: Candidate, staging: Path, target: Target, facts: dict[str, Any],
             same_isa: bool, int8_graph: bool, say: Callable[[str], None], *, tolerate: bool) -> None:
    """Build the candidate's files and (on this ISA) its session; on failure record why when
    other candidates remain (`tolerate`), else raise."""
    try:
        if candidate.runtime is Runtime.OPENVINO:
            candidate.built, candidate.session = openvino_here(
                staging / SOURCE, staging / IR_MODEL, facts, OV_HINTS[candidate.precision], target.cpu_threads,
                compile_here=same_isa, int8=int8_graph, say=say,
                convert=not (staging / IR_MODEL).is_file())  # another hint: the same IR
        elif candidate.variant == "session-optimized graph":
            candidate.session = OnnxRuntimeSession(staging / SOURCE, optimization="all",
                                                   threads=target.cpu_threads)
            candidate.built = onnxruntime_built(
                facts, note="the plain graph, optimized by ONNX Runtime when the session starts "
                            "(level all): faster here than the saved optimization")
        elif same_isa:
            say(f"optimizing the graph offline for ONNX Runtime {facts['onnxruntime']} ({OFFLINE_LEVEL})")
            candidate.built, candidate.session = optimize_here(staging / SOURCE, staging / MODEL, facts, int8=int8_graph,
                                                               threads=target.cpu_threads)
        else:
            shutil.copyfile(staging / SOURCE, staging / MODEL)
            candidate.built = onnxruntime_built(
                facts, note=f"not optimized offline: the target is {target.isa}, this machine is "
                            f"{facts['arch']}; ONNX Runtime optimizes it when the session starts "
                            "on the device")
    except VitedgeError as exc:
        if not tolerate:
            raise
        candidate.error = exc.message
    except Exception as exc:  # a runtime that cannot take this graph is one candidate less
        if not tolerate:
            raise ExportError(f"{candidate.runtime} could not prepare the graph: {exc}",
                              f"compile with --runtime {'onnxruntime' if candidate.runtime is Runtime.OPENVINO else 'openvino'}") from None
        candidate.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _keep_only(staging: Path, chosen: Candidate) -> None:
    """Remove the files of the candidates not chosen (staging is vitedge's own folder)."""
    if chosen.runtime is Runtime.OPENVINO:
        (staging / MODEL).unlink(missing_ok=True)
        return
    for name in (IR_MODEL, IR_WEIGHTS):
        (staging / name).unlink(missing_ok=True)
    if chosen.variant == "session-optimized graph":
        shutil.copyfile(staging / SOURCE, staging / MODEL)


def _settings(chosen: Candidate, target: Target) -> dict[str, Any]:
    if chosen.runtime is Runtime.OPENVINO:
        return {"runtime": "openvino", "model": IR_MODEL, "weights": IR_WEIGHTS,
                "source_model": SOURCE,
                "openvino": {"precision": OV_HINTS[chosen.precision], "performance_hint": "LATENCY",
                             "threads": target.cpu_threads}}
    optimized = bool(chosen.built.get("optimized_offline"))
    return {"runtime": "onnxruntime", "model": MODEL, "source_model": SOURCE,
            # a CPU profile (it names an ISA) runs the CPU provider; an ONNX Runtime profile
            # without one may be a GPU machine: TensorRT EP, then CUDA EP, where the build has them
            "session": {"providers": ["CPUExecutionProvider"] if target.isa else
                        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                        "intra_op_threads": target.cpu_threads,
                        "optimization": "disabled" if optimized else "all"}}
