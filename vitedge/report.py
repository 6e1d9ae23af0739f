"""`vitedge report`: one self-contained HTML file (plots embedded), plus Markdown and JSON.

Reads a RUN_DIR (`vitedge run`: summary.json, frames.jsonl, events.jsonl, disagreements/), an
EVAL_DIR (`vitedge eval`: eval.json, logits.npz) or a `vitedge prune` artifact (card.json: what
was removed per block, MACs, agreement after pruning / distillation / merging, distillation
curve). Plots are drawn with matplotlib (Agg, no display) and embedded as PNG data URIs, so the
file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.artifact import CARD_NAME, atomic_write_text, is_artifact, read_card
from vitedge.card import ModelCard
from vitedge.errors import InputError


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _figure().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_uri(path: Path, max_side: int = 160) -> str | None:
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        return None
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None


def _flip_matrix(plt: Any, pairs: list[tuple[str, str]], title: str) -> str | None:
    if not pairs:
        return None
    classes = sorted({c for pair in pairs for c in pair}, key=lambda c: (len(c), c))[:25]
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), int)
    for ref, dep in pairs:
        if ref in index and dep in index:
            matrix[index[ref], index[dep]] += 1
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    shown = ax.imshow(np.log1p(matrix), cmap="viridis")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("deployed / this model's top-1")
    ax.set_ylabel("reference / first model's top-1")
    for (r, c), count in np.ndenumerate(matrix):
        if count:
            ax.text(c, r, str(count), ha="center", va="center", fontsize=6,
                    color="white" if r != c else "black")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, label="log(1 + count)")
    return _png(fig)


def _html(title: str, headline: list[tuple[str, str]], tables: list[tuple[str, list[str], list[list[str]]]],
          plots: list[tuple[str, str | None]], gallery: list[tuple[str, str]]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;"
             "padding:0 1rem}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem "
             ".6rem;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
             "{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:.75rem}figure{margin:0}"
             "figcaption{font-size:.8rem}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><table>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline]
    parts.append("</table>")
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for caption, uri in plots:
        if uri:
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='{uri}'>")
    if gallery:
        parts.append("<h2>Where they disagree</h2><div class='grid'>")
        parts += [f"<figure><img src='{uri}' alt='{html.escape(text)}'><figcaption>{html.escape(text)}"
                  "</figcaption></figure>" for uri, text in gallery]
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _markdown(title: str, headline: list[tuple[str, str]],
              tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    lines = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in headline] + [""]
    for caption, header, rows in tables:
        lines += [f"## {caption}", "", "| " + " | ".join(header) + " |",
                  "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def build_report(directory: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `out` (.html) and its .md / .json siblings; return the JSON content."""
    directory, out = Path(directory), Path(out)
    if (directory / "summary.json").is_file():
        title, headline, tables, plots, gallery, data = _run_sections(directory)
    elif (directory / "eval.json").is_file():
        title, headline, tables, plots, gallery, data = _eval_sections(directory)
    elif (card := _pruned_card(directory)) is not None:
        title, headline, tables, plots, gallery, data = _prune_sections(directory, card)
    else:
        raise InputError(f"{directory} is neither a run directory (summary.json), an eval directory "
                         "(eval.json) nor a pruned artifact (card.json from vitedge prune)",
                         "pass what vitedge run --out, vitedge eval -o or vitedge prune -o wrote")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, _html(title, headline, tables, plots, gallery))
    atomic_write_text(out.with_suffix(".md"), _markdown(title, headline, tables))
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    return data


def _run_sections(directory: Path) -> tuple:
    plt = _figure()
    summary = json.loads((directory / "summary.json").read_text())
    frames = [json.loads(line) for line in (directory / "frames.jsonl").read_text().splitlines() if line]
    events_path = directory / "events.jsonl"
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line] \
        if events_path.is_file() else []
    shadowed = sorted((f for f in frames if "shadow" in f), key=lambda f: f["index"])
    drift = summary["drift"]
    counts = summary["frames"]
    latency = summary["deployed"]["latency_ms"]
    headline = [("source", summary["source"]), ("stopped", summary["stop_reason"]),
                ("frames", f"{counts['logged']} logged, {counts['dropped']} dropped, "
                           f"{counts['corrupt']} corrupt, {counts['reconnects']} reconnects"),
                ("speed", f"{summary['fps']:.1f} FPS; inference p50 {_num(latency['p50_ms'], 2)} ms, "
                          f"p95 {_num(latency['p95_ms'], 2)} ms; loop overhead p50 "
                          f"{_num(summary['loop_overhead_ms']['p50'], 2)} ms"),
                ("deployed", f"{summary['deployed']['backend']} ({summary['deployed']['precision']})"),
                ("drift verdict", f"{drift['verdict']} on {drift['samples']} shadowed frames: agreement "
                                  f"{_pct(drift['top1_agreement'])}, KL {_num(drift['kl'])}, JS "
                                  f"{_num(drift['js'])}, cosine {_num(drift['cosine'])}")]
    if summary.get("shadow"):
        headline.append(("shadow", f"every {summary['shadow']['every']} frames via "
                                   f"{summary['shadow']['reference']}; "
                                   f"{summary['shadow']['skipped_reference_behind']} skipped (reference behind)"))
    tables = [("Events", ["frame", "event", "details"],
               [[str(e.get("frame", "")), e["event"],
                 ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("frame", "event", "time"))]
                for e in events])] if events else []
    flips = [(f["shadow"]["reference_top1"], f["top"][0][1]) for f in shadowed]
    per_class: dict[str, list[float]] = {}
    for f in shadowed:
        per_class.setdefault(f["shadow"]["reference_top1"], []).append(f["shadow"]["agree"])
    tables.append(("Agreement by reference class", ["class", "shadowed frames", "agreement"],
                   [[c, str(len(v)), _pct(float(np.mean(v)))]
                    for c, v in sorted(per_class.items(), key=lambda kv: np.mean(kv[1]))]))
    plots: list[tuple[str, str | None]] = []
    if shadowed:
        window = summary.get("rolling_window", 50)
        agree = np.array([f["shadow"]["agree"] for f in shadowed])
        kl = np.array([f["shadow"]["kl"] for f in shadowed])
        rolling = np.convolve(agree, np.ones(window), "full")[:len(agree)] / np.minimum(
            np.arange(1, len(agree) + 1), window)
        fig, ax = plt.subplots(figsize=(9, 3.2))
        x = [f["index"] for f in shadowed]
        ax.plot(x, rolling, label=f"rolling agreement ({window} shadowed frames)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("frame")
        ax.set_ylabel("top-1 agreement")
        twin = ax.twinx()
        twin.plot(x, kl, color="tab:orange", alpha=0.5, lw=0.8, label="KL per frame")
        twin.set_ylabel("KL")
        fig.legend(loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.1), frameon=False)
        plots.append(("Agreement over time", _png(fig)))
        deployed_conf = np.array([f["top"][0][2] for f in shadowed])
        reference_conf = deployed_conf - np.array([f["shadow"]["confidence_shift"] for f in shadowed])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bins = np.linspace(0, 1, 26)
        ax.hist(reference_conf, bins=bins, alpha=0.6, label="reference")
        ax.hist(deployed_conf, bins=bins, alpha=0.6, label="deployed")
        ax.set_xlabel("top-1 confidence")
        ax.legend()
        plots.append(("Confidence, reference vs deployed", _png(fig)))
        plots.append(("Class flips (shadowed frames)", _flip_matrix(plt, flips, "reference → deployed")))
    latencies = [f["latency_ms"] for f in frames if "latency_ms" in f]
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(latencies, bins=40, alpha=0.7, label="deployed inference")
        loop = [f["loop_ms"] for f in frames if "loop_ms" in f]
        ax.hist(loop, bins=40, alpha=0.5, label="loop overhead")
        ax.set_xlabel("ms per frame")
        ax.legend()
        plots.append(("Latency", _png(fig)))
    gallery = []
    for f in shadowed:
        if "saved" in f and (uri := _image_uri(directory / f["saved"])):
            gallery.append((uri, f"frame {f['index']}: reference {f['shadow']['reference_top1']}, "
                                 f"deployed {f['top'][0][1]} (KL {f['shadow']['kl']:.3f})"))
    data = {"kind": "run", "summary": summary, "events": events,
            "per_class_agreement": {c: float(np.mean(v)) for c, v in per_class.items()},
            "flips": [list(p) for p in flips if p[0] != p[1]]}
    return f"vitedge run — {summary['source']}", headline, tables, plots, gallery, data


def _eval_sections(directory: Path) -> tuple:
    plt = _figure()
    report = json.loads((directory / "eval.json").read_text())
    arrays = np.load(directory / "logits.npz")
    models = report["models"]
    labeled = report["labeled"]
    headline = [("data", f"{report['data']} ({report['samples']} images"
                         + (f", {len(report['skipped'])} unreadable skipped" if report["skipped"] else "") + ")"),
                ("reference", models[0]["model"])]
    header = ["model", "backend", "precision"] + (["top-1", "top-5"] if labeled else []) + [
        "agreement with first", "KL", "cosine", "verdict", "p50 ms"]
    rows = []
    for row in models:
        vs = row.get("vs_first") or {}
        rows.append([row["model"], row["backend"], row["precision"]]
                    + ([_pct(row["top1"]), _pct(row["top5"])] if labeled else [])
                    + [_pct(vs.get("top1_agreement", 1.0 if row is models[0] else None)),
                       _num(vs.get("kl")), _num(vs.get("cosine")), vs.get("verdict", "reference"),
                       _num(row["latency_ms"]["p50_ms"], 2)])
    tables = [("Models", header, rows)]
    plots: list[tuple[str, str | None]] = []
    gallery = []
    class_names = report["class_names"]
    for i, row in enumerate(models[1:], start=1):
        first, this = arrays["model0"], arrays[f"model{i}"]
        pairs = [(class_names[a], class_names[b]) for a, b in zip(first.argmax(1), this.argmax(1))]
        plots.append((f"Class flips: {row['model']}", _flip_matrix(plt, pairs, "first → this")))
        if labeled and row.get("per_class_delta"):
            deltas = row["per_class_delta"]
            tables.append((f"Per-class top-1, {row['model']} vs first", ["class", "images", "first", "this", "delta"],
                           [[d["class"], str(d["samples"]), _pct(d["first"]), _pct(d["this"]),
                             f"{100 * d['delta']:+.2f}"] for d in deltas[:20]]))
            fig, ax = plt.subplots(figsize=(9, 3))
            shown = deltas[:15] + [d for d in deltas[-15:] if d not in deltas[:15]]
            ax.bar([d["class"][:14] for d in shown], [100 * d["delta"] for d in shown])
            ax.set_ylabel("top-1 delta (points)")
            ax.tick_params(axis="x", rotation=90, labelsize=7)
            plots.append((f"Per-class accuracy deltas: {row['model']}", _png(fig)))
        for worst in row.get("worst", []):
            if worst["path"] and (uri := _image_uri(Path(worst["path"]))):
                gallery.append((uri, f"{Path(worst['path']).name}: first {worst['first']}, "
                                     f"{Path(row['model']).name} {worst['this']} (KL {worst['kl']:.3f})"))
    confidence = arrays["confidence"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, row in enumerate(models):
        ax.hist(confidence[i], bins=np.linspace(0, 1, 26), alpha=0.5, label=Path(row["model"]).name)
    ax.set_xlabel("top-1 confidence")
    ax.legend(fontsize=7)
    plots.insert(0, ("Confidence", _png(fig)))
    return f"vitedge eval — {report['data']}", headline, tables, plots, gallery, {"kind": "eval", **report}


# What the prune metrics on a card hold at each stage, and how the CLI and the report name it.
PRUNE_STAGES = (("before_distill", "after pruning"), ("after_distill", "after distillation"),
                ("final", "with token merging"))


def _pruned_card(directory: Path) -> ModelCard | None:
    """The card of a `vitedge prune` artifact, or None when the directory is not one."""
    if not is_artifact(directory):
        return None
    card = read_card(directory)
    return card if "prune" in card.metrics else None


def _prune_sections(directory: Path, card: ModelCard) -> tuple:
    plt = _figure()
    metrics = card.metrics["prune"]
    headline = [("model", card.architecture),
                ("MACs", f"{metrics['macs_before'] / 1e6:.1f} M → {metrics['macs_after'] / 1e6:.1f} M "
                         f"({100 * metrics['mac_share']:.0f} % kept)"),
                ("parameters", f"{metrics['params_before'] / 1e6:.3f} M → {metrics['params_after'] / 1e6:.3f} M")]
    if "ratios" in metrics:
        ratios = metrics["ratios"]
        headline.append(("removed", f"heads {100 * ratios['heads']:.0f} %, MLP {100 * ratios['mlp']:.0f} %, "
                                    f"embedding {100 * ratios['embed']:.0f} % ({metrics.get('importance')} "
                                    f"importance, {metrics.get('allocation', 'uniform')} allocation, "
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
        plots.append(("Kept heads and MLP width per block", _png(fig)))
    stages = [(title, metrics[key]) for key, title in PRUNE_STAGES if key in metrics]
    if stages:
        labeled = all("top1_pruned" in m for _, m in stages)
        tables.append((f"Agreement with the original on {stages[0][1]['samples']} held-out images",
                       ["stage", "top-1 agreement", "KL"] + (["top-1 original", "top-1 now"] if labeled else []),
                       [[title, _pct(m["top1_agreement"]), _num(m.get("kl"))]
                        + ([_pct(m["top1_original"]), _pct(m["top1_pruned"])] if labeled else [])
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
        plots.append(("Distillation", _png(fig)))
    if "tome" in metrics:
        tome = metrics["tome"]
        headline.append(("token merging", f"r = {tome['r']} from block {tome.get('start', 0)}: "
                                          f"{tome['tokens_in']} → {tome['tokens_out']} tokens"))
        tables.append(("Tokens merged per block", ["block", "merged"],
                       [[str(i), str(r)] for i, r in enumerate(tome["schedule"])]))
    return (f"vitedge prune — {directory.name}", headline, tables, plots, [],
            {"kind": "prune", "card": str(directory / CARD_NAME), **metrics})
