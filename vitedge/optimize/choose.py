"""How `vitedge optimize` chooses: every measured bundle timed here in the same alternating
rounds (or, on another ISA or without the target's engine, a MAC-weighted cost estimate,
labelled as such), the fastest within the budget copied to OUT/best, and the Pareto front."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitedge.outputs import OutputKind, writing
from vitedge.schemas.base import LoadDoc

BEST = "best"
# Relative cost per MAC where latency cannot be measured here (an estimate, labelled as such).
COST_PER_MAC = {"fp32": 1.0, "bf16": 0.5, "fp16": 0.5, "int8": 0.25}


def estimate_costs(measured: list[dict[str, Any]], tensorrt: bool) -> None:
    """Each candidate's `estimated_cost`: its MACs relative to the largest, weighted by what runs
    in INT8 and in which float precision."""
    base = max((c["macs"] or 0) for c in measured) if measured else 0
    for c in measured:
        half = "fp16" if tensorrt and c["precision"] in ("fp16", "best") else \
            "bf16" if c["precision_run"] in ("bf16", "int8+bf16") else "fp32"
        float_cost = COST_PER_MAC[half]
        # TensorRT profiles default to FP16 because INT8 ViTs are often no faster there at
        # batch 1: unmeasured, INT8 earns nothing over FP16 (fewer MACs still count)
        int8_cost = COST_PER_MAC["fp16"] if tensorrt else COST_PER_MAC["int8"]
        share = c.get("int8_share") or 0.0
        c["estimated_cost"] = ((c["macs"] or 0) / (base or 1)) * (
            share * int8_cost + (1 - share) * float_cost)


def time_bundles(folder: Path, measured: list[dict[str, Any]], batch: int, say: Callable[[str], None]) -> LoadDoc:
    """Each candidate's `p50_ms`, all timed in the same alternating rounds; how busy the machine
    was meanwhile (optimize.json records it, the command warns when it was busy)."""
    from vitedge.machine_load import LoadWatch
    from vitedge.runtime.base import interleaved_latency
    from vitedge.sessions import load as load_session

    say(f"timing {len(measured)} bundles in alternating rounds at batch {batch}")
    sessions = {c["name"]: load_session(folder / c["bundle"]) for c in measured}
    try:
        with LoadWatch() as watch:
            times = interleaved_latency(sessions, batch, rounds=6, runs=5, warmup=1,
                                        on_round=lambda i, n: say(f"  round {i + 1} of {n}"))
    finally:
        for session in sessions.values():
            session.close()
    for c in measured:
        c["p50_ms"] = times[c["name"]]
    assert watch.load is not None
    return watch.load


def choose(measured: list[dict[str, Any]], meets: Callable[[dict[str, Any]], bool], timed: bool
           ) -> tuple[dict[str, Any] | None, list[str]]:
    """The fastest candidate within the budget (ties: closer to FP32), and the Pareto front of
    speed against agreement."""
    within = [c for c in measured if meets(c)]
    key = (lambda c: c["p50_ms"]) if timed else (lambda c: c["estimated_cost"])
    chosen = min(within, key=lambda c: (key(c), -c["agreement"])) if within else None
    pareto = [c["name"] for c in measured if not any(
        key(o) <= key(c) and o["agreement"] >= c["agreement"] and (key(o), o["agreement"]) != (key(c), c["agreement"])
        for o in measured)]
    return chosen, pareto


def copy_best(folder: Path, bundle: str) -> None:
    """The chosen bundle, copied to folder/best and read back as a device will read it."""
    from vitedge.artifact import read_card
    from vitedge.compile.bundle import read_bundle

    source = folder / bundle
    card = read_card(source)
    with writing(folder / BEST, OutputKind.BUNDLE, overwrite=True) as staging:
        for name in (*card.files, "card.json"):
            shutil.copy2(source / name, staging / name)
    read_bundle(folder / BEST)  # what a device will read
