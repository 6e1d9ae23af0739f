"""The report of a `vitedge prune` artifact: what was removed per block, agreement per stage,
the distillation curve, token merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitedge.artifact import CARD_NAME, is_artifact, read_card
from vitedge.card import ModelCard
from vitedge.formatting import number, percent
from vitedge.prune.plan import PRUNE_STAGES
from vitedge.report.page import Sections, figure, png


def pruned_card(directory: Path) -> ModelCard | None:
    """The card of a `vitedge prune` artifact, or None when the directory is not one."""
    if not is_artifact(directory):
        return None
    card = read_card(directory)
    return card if "prune" in card.metrics else None


def prune_sections(directory: Path, card: ModelCard) -> Sections:
    plt = figure()
    metrics = card.metrics["prune"]
    headline = [("model", card.architecture),
                ("MACs", f"{metrics['macs_before'] / 1e6:.1f} M → {metrics['macs_after'] / 1e6:.1f} M "
                         f"({100 * metrics['mac_share']:.0f} % kept)"),
                ("parameters", f"{metrics['params_before'] / 1e6:.3f} M → {metrics['params_after'] / 1e6:.3f} M")]
    if "ratios" in metrics:
        ratios = metrics["ratios"]
        headline.append(("removed", f"heads {100 * ratios['heads']:.0f} %, MLP {100 * ratios['mlp']:.0f} %, "
                                    f"embedding {100 * ratios['embed']:.0f} % ({metrics.get('importance')} "
                                    f"{'pruning' if metrics.get('method') == 'compensate' else 'importance'}, "
                                    f"{metrics.get('allocation', 'uniform')} allocation, "
                                    f"widths rounded to {metrics.get('round_to')})"))
    tables, plots = [], []
    structure = metrics.get("structure")
    if structure:
        before, after = structure["before"], structure["after"]
        rows = [[str(i), f"{b} → {a}", f"{bd} → {ad}", f"{bm} → {am}"]
                for i, (b, a, bd, ad, bm, am) in enumerate(zip(
                    before["num_heads"], after["num_heads"], before["head_dim"], after["head_dim"],
                    before["mlp_hidden"], after["mlp_hidden"]))]
        tables.append((f"Kept per block (embedding width {before['embed_dim']} → {after['embed_dim']})",
                       ["block", "heads", "head width", "MLP width"], rows))
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        blocks = np.arange(len(before["num_heads"]))
        for ax, key, label in ((axes[0], "num_heads", "heads"), (axes[1], "mlp_hidden", "MLP width")):
            ax.bar(blocks - 0.2, before[key], width=0.4, label="before", color="#bbb")
            ax.bar(blocks + 0.2, after[key], width=0.4, label="after", color="#2a6")
            ax.set_xlabel("block")
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        plots.append(("Kept heads and MLP width per block", png(fig)))
    search = metrics.get("budget_search")
    if search:
        budget = " and ".join(part for part in (
            f"drop ≤ {search['max_drop']:g} points" if search.get("max_drop") is not None else "",
            f"agreement ≥ {percent(search['min_agreement'])}" if search.get("min_agreement") is not None else "")
            if part)
        headline.append(("budget", f"{budget} on {search['samples']} held-out images: "
                                   f"{100 * (1 - search['chosen_mac_share']):.0f} % fewer MACs chosen"))
        def drop(value: float | None) -> str:
            return "–" if value is None else f"{value:.2f}"

        probes = search["probes"]
        tables.append((f"Budget search ({budget}; the images that judge it also give the figures above)",
                       ["MACs cut", "drop (points)", "agreement", "holds", "without compensation: drop, agreement"],
                       [[f"{100 * (1 - p['mac_share']):.0f} %", drop(p.get("drop")), percent(p["top1_agreement"]),
                         "yes" if p["met"] else "no",
                         f"{drop(p['uncompensated']['drop'])}, {percent(p['uncompensated']['top1_agreement'])}"
                         if p.get("uncompensated") else "–"] for p in probes]))
        plots.append(("Budget search: the cut against what it costs on the held-out images",
                      _curve(plt, probes, search.get("chosen_mac_share"), metrics)))
    compensation = metrics.get("compensation")
    if compensation:
        def cell(entry: dict | None) -> str:
            if not entry:
                return "–"
            refit = entry.get("teacher_error")
            return (f"{percent(entry['error_uncompensated'])} → {percent(entry['error'])}"
                    + (f"; its distance to the unpruned block's output, refitted: "
                       f"{percent(entry['teacher_error_before'])} → {percent(refit)}" if refit is not None else ""))

        tables.append(("Compensation per block: output error the removed units leave, without → with "
                       "compensation (share of the layer's output energy on the calibration images)",
                       ["block", "heads removed", "heads", "MLP units removed", "MLP"],
                       [[str(b["block"]), str(len(b["heads"]["removed"])) if "heads" in b else "0",
                         cell(b.get("heads")), str(b["mlp"]["removed"]) if "mlp" in b else "0", cell(b.get("mlp"))]
                        for b in compensation]))
    stages = [(title, metrics[key]) for key, title in PRUNE_STAGES if key in metrics]
    if stages:
        labeled = all("top1_pruned" in m for _, m in stages)
        if all(m.get("features") for _, m in stages):
            tables.append((f"Closeness to the original's features on {stages[0][1]['samples']} held-out images",
                           ["stage", "cosine", "relative error"],
                           [[title, number(m.get("cosine")), number(m.get("rel_error"))] for title, m in stages]))
            stages = []
    if stages:
        tables.append((f"Agreement with the original on {stages[0][1]['samples']} held-out images",
                       ["stage", "top-1 agreement", "KL"] + (["top-1 original", "top-1 now"] if labeled else []),
                       [[title, percent(m["top1_agreement"]), number(m.get("kl"))]
                        + ([percent(m["top1_original"]), percent(m["top1_pruned"])] if labeled else [])
                        for title, m in stages]))
    history = metrics.get("distill")
    if history and history.get("evaluations"):
        evaluations = history["evaluations"]
        headline.append(("distillation", f"{history['steps_run']} steps on {history.get('train_samples')} images"
                         + (f", stopped early at {history['early_stop_at']}" if history.get("early_stop_at") else "")
                         + (f", resumed from {history['resumed_from']}" if history.get("resumed_from") else "")))
        fig, ax = plt.subplots(figsize=(7, 3))
        steps = [e["step"] for e in evaluations]
        ax.plot(steps, [100 * e["agreement"] for e in evaluations], marker="o", label="held-out agreement %")
        ax.set_xlabel("step")
        ax.set_ylabel("agreement %")
        other = ax.twinx()
        other.plot(steps, [e["loss"] for e in evaluations], color="#c63", label="loss")
        other.set_ylabel("loss")
        fig.tight_layout()
        plots.append(("Distillation", png(fig)))
    if "tome" in metrics:
        tome = metrics["tome"]
        headline.append(("token merging", f"r = {tome['r']} from block {tome.get('start', 0)}: "
                                          f"{tome['tokens_in']} → {tome['tokens_out']} tokens"))
        tables.append(("Tokens merged per block", ["block", "merged"],
                       [[str(i), str(r)] for i, r in enumerate(tome["schedule"])]))
    return Sections(f"vitedge prune — {directory.name}", headline, tables, plots, [],
            {**metrics, "kind": "prune", "card": str(directory / CARD_NAME)})


def _curve(plt: object, probes: list[dict], chosen: float | None, metrics: dict) -> str:
    """Agreement (and top-1 where labeled; cosine for feature outputs) against the MAC cut, with
    and without compensation, the chosen cut marked and where distillation took it."""
    features = bool(metrics.get("before_distill", {}).get("features"))
    order = sorted(probes, key=lambda p: p["mac_share"])
    cut = [100 * (1 - p["mac_share"]) for p in order]
    fig, ax = plt.subplots(figsize=(7, 3.2))  # type: ignore[attr-defined]
    key, label = ("cosine", "cosine × 100") if features else ("top1_agreement", "top-1 agreement %")
    series = [("compensated", [p.get(key) for p in order], "#2a6", "-")]
    if any(p.get("uncompensated") for p in order):
        series.append(("without compensation", [(p.get("uncompensated") or {}).get(key) for p in order], "#999", "--"))
    if not features and all(p.get("top1_pruned") is not None for p in order):
        series.append(("top-1 (compensated)", [p["top1_pruned"] for p in order], "#26a", ":"))
    for name, values, color, style in series:
        points = [(x, 100 * v) for x, v in zip(cut, values) if v is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", color=color, linestyle=style, label=name)
    if chosen is not None:
        ax.axvline(100 * (1 - chosen), color="#c63", linewidth=1, label="chosen")
    after = metrics.get("after_distill")
    if chosen is not None and after and after.get(key) is not None:
        ax.plot([100 * (1 - chosen)], [100 * after[key]], marker="*", markersize=12, color="#c63",
                linestyle="none", label="after distillation")
    ax.set_xlabel("MACs cut %")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)
