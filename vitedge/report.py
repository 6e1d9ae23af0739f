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
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.artifact import CARD_NAME, is_artifact, read_card, sha256_file
from vitedge.card import ModelCard
from vitedge.documents import confined, read_document, sealed_json, validate
from vitedge.errors import InputError
from vitedge.formatting import number, percent
from vitedge.locks import json_object
from vitedge.outputs import REPORT_GENERATOR, is_report_document, write_files

if TYPE_CHECKING:
    from vitedge.schemas.results import RunSummary


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
    """A small JPEG data URI of an image inside the folder being reported (None if unreadable)."""
    from vitedge.preprocess import UnreadableImageError, load_image

    try:
        image = load_image(path)
    except UnreadableImageError:
        return None
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def md_escape(text: object) -> str:
    """A user string (label, path, architecture) as inert Markdown: no HTML, no table breaks."""
    value = " ".join(str(text).split())
    value = html.escape(value, quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", value)


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
    e = md_escape
    lines = [f"# {e(title)}", ""] + [f"- {e(k)}: {e(v)}" for k, v in headline] + [""]
    for caption, header, rows in tables:
        lines += [f"## {e(caption)}", "", "| " + " | ".join(map(e, header)) + " |",
                  "|" + " --- |" * len(header)] + ["| " + " | ".join(map(e, r)) + " |" for r in rows] + [""]
    return "\n".join(lines)


def write_report(directory: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `out` (.html) and its .md / .json siblings; return the JSON content.

    The three files replace only an earlier report set (one whose .json says vitedge report
    wrote it); anything else at those paths is refused.
    """
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory", "pass a run or eval directory, or a pruned artifact")
    if out.suffix.lower() != ".html":
        raise InputError(f"-o {out} is not an .html file name", f"e.g. -o {out.with_suffix('.html')}")
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
    md, index = out.with_suffix(".md"), out.with_suffix(".json")
    data = {"generator": REPORT_GENERATOR, "html": out.name, "md": md.name, **data}

    def owned(path: Path) -> bool:  # the set's .json says vitedge report wrote the set
        report = json_object(index)
        if path.name == index.name:
            return is_report_document(report)
        return is_report_document(report) and path.name in (report.get("html"), report.get("md"))

    write_files({out: _html(title, headline, tables, plots, gallery).encode(),
                 md: _markdown(title, headline, tables).encode(), index: sealed_json(data).encode()},
                owned=owned, what="report")
    return data


def _verified(directory: Path, files: dict[str, str], what: str) -> None:
    """Every file the folder's manifest hashed is still the one it hashed."""
    for name, digest in files.items():
        path = confined(directory, name, what=what)
        if path.is_symlink() or not path.is_file() or sha256_file(path) != digest:
            raise InputError(f"{path} was changed or removed after {what} was written",
                             "reports are made from what vitedge recorded; re-run to get a new one")


def _lines(path: Path, schema: Any) -> list[dict[str, Any]]:
    """A JSONL file, each line validated."""
    from pydantic import ValidationError

    rows = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            schema.model_validate_json(line)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "(line)"
            raise InputError(f"{path} line {line_number}: {where}: {error['msg']}",
                             "re-run to get a new run directory") from None
        rows.append(json.loads(line))
    return rows


def _read_run(directory: Path) -> RunSummary:
    from vitedge.schemas.results import RunSummary, RunSummaryDoc

    path = directory / "summary.json"
    summary = read_document(path, RunSummaryDoc, hint="re-run to get a new run directory")
    if summary["state"] != "finished":
        from vitedge.locks import busy

        raise InputError(f"{directory} is a run that " + (
            f"is still going (pid {summary.get('pid')})" if busy(directory) else
            "did not finish (its process stopped before writing the summary)"),
            "its frames.jsonl is readable as it is; a report needs a finished run")
    finished = validate(RunSummary, summary, what=str(path), hint="re-run to get a new run directory")
    _verified(directory, finished.files, str(path))
    return finished


def _run_sections(directory: Path) -> tuple:
    from vitedge.schemas.results import EventLine, FrameLine

    summary = _read_run(directory)
    plt = _figure()
    frames = _lines(confined(directory, "frames.jsonl", what=str(directory)), FrameLine) \
        if "frames.jsonl" in summary.files else []
    events = _lines(confined(directory, "events.jsonl", what=str(directory)), EventLine) \
        if "events.jsonl" in summary.files else []
    drift = summary.drift
    features = drift.features  # a feature extractor: compared by cosine, no classes
    shadowed = sorted((f for f in frames if f.get("shadow")
                       and (f["shadow"].get("rel_error") is not None) == features), key=lambda f: f["index"])
    counts, latency = summary.frames, summary.deployed.latency_ms
    headline = [("source", summary.source), ("stopped", summary.stop_reason),
                ("frames", f"{counts.logged} logged, {counts.dropped} dropped, "
                           f"{counts.corrupt} corrupt, {counts.reconnects} reconnects"),
                ("speed", f"{summary.fps or 0:.1f} FPS; inference p50 {number(latency.p50_ms, 2)} ms, "
                          f"p95 {number(latency.p95_ms, 2)} ms; loop overhead p50 "
                          f"{number(summary.loop_overhead_ms.p50, 2)} ms"),
                ("deployed", f"{summary.deployed.backend} ({summary.deployed.precision})"),
                ("drift verdict", f"{drift.verdict} on {drift.samples} shadowed frames: " + (
                    f"feature cosine {number(drift.cosine)} (worst {number(drift.min_cosine)}), "
                    f"relative error {number(drift.rel_error)}" if features else
                    f"agreement {percent(drift.top1_agreement)}, KL {number(drift.kl)}, JS "
                    f"{number(drift.js)}, cosine {number(drift.cosine)}"))]
    if summary.shadow:
        headline.append(("shadow", f"every {summary.shadow.every} frames via {summary.shadow.reference}; "
                                   f"{summary.shadow.skipped_reference_behind} skipped (reference behind)"))
    tables = [("Events", ["frame", "event", "details"],
               [[str(e.get("frame", "")), e["event"],
                 ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("frame", "event", "time"))]
                for e in events])] if events else []
    if features:
        return _feature_run_sections(directory, summary, frames, shadowed, events, headline, tables, plt)
    flips = [(f["shadow"]["reference_top1"], f["top"][0][1]) for f in shadowed]
    per_class: dict[str, list[float]] = {}
    for f in shadowed:
        per_class.setdefault(f["shadow"]["reference_top1"], []).append(f["shadow"]["agree"])
    tables.append(("Agreement by reference class", ["class", "shadowed frames", "agreement"],
                   [[c, str(len(v)), percent(float(np.mean(v)))]
                    for c, v in sorted(per_class.items(), key=lambda kv: np.mean(kv[1]))]))
    plots: list[tuple[str, str | None]] = []
    if shadowed:
        plots.append(("Agreement over time", _over_time(plt, shadowed, summary.rolling_window,
                                                        ("agree", "agreement", "top-1 agreement"),
                                                        ("kl", "KL"), (-0.02, 1.02))))
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
    plots += _latency_plot(plt, frames)
    gallery = []
    for f in shadowed:
        if f.get("saved") in summary.files and (uri := _image_uri(directory / f["saved"])):
            gallery.append((uri, f"frame {f['index']}: reference {f['shadow']['reference_top1']}, "
                                 f"deployed {f['top'][0][1]} (KL {f['shadow']['kl']:.3f})"))
    data = {"kind": "run", "summary": summary.to_dict(), "events": events,
            "per_class_agreement": {c: float(np.mean(v)) for c, v in per_class.items()},
            "flips": [list(p) for p in flips if p[0] != p[1]]}
    return f"vitedge run — {summary.source}", headline, tables, plots, gallery, data


def _over_time(plt: Any, shadowed: list[dict[str, Any]], window: int, rolled: tuple[str, str, str],
               per_frame: tuple[str, str], limits: tuple[float, float] | None = None) -> str:
    """The rolling mean of one shadow metric and another metric per frame, against the frame index."""
    key, name, axis = rolled
    values = np.array([f["shadow"][key] for f in shadowed])
    rolling = np.convolve(values, np.ones(window), "full")[:len(values)] / np.minimum(
        np.arange(1, len(values) + 1), window)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = [f["index"] for f in shadowed]
    ax.plot(x, rolling, label=f"rolling {name} ({window} shadowed frames)")
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("frame")
    ax.set_ylabel(axis)
    twin = ax.twinx()
    twin.plot(x, [f["shadow"][per_frame[0]] for f in shadowed], color="tab:orange", alpha=0.5, lw=0.8,
              label=f"{per_frame[1]} per frame")
    twin.set_ylabel(per_frame[1])
    fig.legend(loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.1), frameon=False)
    return _png(fig)


def _latency_plot(plt: Any, frames: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    latencies = [f["latency_ms"] for f in frames if f.get("latency_ms") is not None]
    if not latencies:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(latencies, bins=40, alpha=0.7, label="deployed inference")
    loop = [f["loop_ms"] for f in frames if f.get("loop_ms") is not None]
    ax.hist(loop, bins=40, alpha=0.5, label="loop overhead")
    ax.set_xlabel("ms per frame")
    ax.legend()
    return [("Latency", _png(fig))]


def _feature_run_sections(directory: Path, summary: RunSummary, frames: list[dict[str, Any]],
                          shadowed: list[dict[str, Any]], events: list[dict[str, Any]],
                          headline: list[tuple[str, str]], tables: list, plt: Any) -> tuple:
    """A feature extractor's run: cosine and relative error to the reference over time."""
    plots: list[tuple[str, str | None]] = []
    if shadowed:
        plots.append(("Feature cosine over time", _over_time(plt, shadowed, summary.rolling_window,
                                                             ("cosine", "cosine", "cosine to the reference"),
                                                             ("rel_error", "relative error"))))
    plots += _latency_plot(plt, frames)
    gallery = [(uri, f"frame {f['index']}: cosine {f['shadow']['cosine']:.4f}, relative error "
                     f"{f['shadow']['rel_error']:.4f}") for f in shadowed
               if f.get("saved") in summary.files and (uri := _image_uri(directory / f["saved"]))]
    data = {"kind": "run", "summary": summary.to_dict(), "events": events}
    return f"vitedge run — {summary.source}", headline, tables, plots, gallery, data


def _eval_sections(directory: Path) -> tuple:
    report, arrays = _read_eval(directory)
    plt = _figure()
    models = report["models"]
    labeled = report["labeled"]
    headline = [("data", f"{report['data']} ({report['samples']} images"
                         + (f", {len(report['skipped'])} unreadable skipped" if report["skipped"] else "") + ")"),
                ("reference", models[0]["model"])]
    if report.get("features"):
        return _feature_eval_sections(directory, report, arrays, headline, plt)
    header = ["model", "backend", "precision"] + (["top-1", "top-5"] if labeled else []) + [
        "agreement with first", "KL", "cosine", "verdict", "p50 ms"]
    rows = []
    for row in models:
        vs = row.get("vs_first") or {}
        rows.append([row["model"], row["backend"], row["precision"]]
                    + ([percent(row["top1"]), percent(row["top5"])] if labeled else [])
                    + [percent(vs.get("top1_agreement", 1.0 if row is models[0] else None)),
                       number(vs.get("kl")), number(vs.get("cosine")), vs.get("verdict", "reference"),
                       number(row["latency_ms"]["p50_ms"], 2)])
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
                           [[d["class"], str(d["samples"]), percent(d["first"]), percent(d["this"]),
                             f"{100 * d['delta']:+.2f}"] for d in deltas[:20]]))
            fig, ax = plt.subplots(figsize=(9, 3))
            shown = deltas[:15] + [d for d in deltas[-15:] if d not in deltas[:15]]
            ax.bar([d["class"][:14] for d in shown], [100 * d["delta"] for d in shown])
            ax.set_ylabel("top-1 delta (points)")
            ax.tick_params(axis="x", rotation=90, labelsize=7)
            plots.append((f"Per-class accuracy deltas: {row['model']}", _png(fig)))
        for worst in row.get("worst", []):
            if worst.get("image") in report["files"] and (uri := _image_uri(directory / worst["image"])):
                gallery.append((uri, f"{Path(worst['path']).name}: first {worst['first']}, "
                                     f"{Path(row['model']).name} {worst['this']} (KL {worst['kl']:.3f})"))
    confidence = arrays["confidence"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, row in enumerate(models):
        ax.hist(confidence[i], bins=np.linspace(0, 1, 26), alpha=0.5, label=Path(row["model"]).name)
    ax.set_xlabel("top-1 confidence")
    ax.legend(fontsize=7)
    plots.insert(0, ("Confidence", _png(fig)))
    return f"vitedge eval — {report['data']}", headline, tables, plots, gallery, {**report, "kind": "eval"}


def _feature_eval_sections(directory: Path, report: dict[str, Any], arrays: dict[str, np.ndarray],
                           headline: list[tuple[str, str]], plt: Any) -> tuple:
    """Feature extractors: cosine and relative error to the first model, per model and per image."""
    from vitedge.drift import feature_metrics

    models = report["models"]
    rows = []
    for row in models:
        vs = row.get("vs_first") or {}
        rows.append([row["model"], row["backend"], row["precision"],
                     number(vs.get("cosine", 1.0 if row is models[0] else None)), number(vs.get("min_cosine")),
                     number(vs.get("rel_error")), vs.get("verdict", "reference"),
                     number(row["latency_ms"]["p50_ms"], 2)])
    tables = [("Models (feature outputs: compared as vectors)",
               ["model", "backend", "precision", "cosine to first", "worst cosine", "relative error",
                "verdict", "p50 ms"], rows)]
    plots: list[tuple[str, str | None]] = []
    gallery = []
    if len(models) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for i, row in enumerate(models[1:], start=1):
            errors = feature_metrics(arrays["model0"], arrays[f"model{i}"])["rel_error"]
            ax.hist(errors, bins=30, alpha=0.5, label=Path(row["model"]).name)
        ax.set_xlabel("relative error to the first model, per image")
        ax.legend(fontsize=7)
        plots.append(("Relative error", _png(fig)))
    for row in models[1:]:
        for worst in row.get("worst", []):
            if worst.get("image") in report["files"] and (uri := _image_uri(directory / worst["image"])):
                gallery.append((uri, f"{Path(worst['path']).name}: relative error {worst['rel_error']:.4f}, "
                                     f"cosine {worst['cosine']:.4f}"))
    return f"vitedge eval — {report['data']}", headline, tables, plots, gallery, {**report, "kind": "eval"}


def _read_eval(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from vitedge.schemas.results import EvalResult

    path = directory / "eval.json"
    hint = "re-run vitedge eval"
    report = read_document(path, EvalResult, hint=hint)
    _verified(directory, report["files"], str(path))
    if "logits.npz" not in report["files"]:
        raise InputError(f"{path} does not list logits.npz", hint)
    try:
        with np.load(directory / "logits.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}/logits.npz is unreadable ({exc})", hint) from None
    count = report["samples"]
    width = arrays["model0"].shape[1] if report.get("features") and "model0" in arrays \
        and arrays["model0"].ndim == 2 else len(report["class_names"])
    expected = {f"model{i}": (count, width) for i in range(len(report["models"]))}
    if not report.get("features"):
        expected["confidence"] = (len(report["models"]), count)
    for key, shape in expected.items():
        if key not in arrays or arrays[key].shape != shape or arrays[key].dtype.kind != "f":
            raise InputError(f"{directory}/logits.npz: {key} is not a float array of shape {shape}", hint)
    return report, arrays


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
        plots.append(("Distillation", _png(fig)))
    if "tome" in metrics:
        tome = metrics["tome"]
        headline.append(("token merging", f"r = {tome['r']} from block {tome.get('start', 0)}: "
                                          f"{tome['tokens_in']} → {tome['tokens_out']} tokens"))
        tables.append(("Tokens merged per block", ["block", "merged"],
                       [[str(i), str(r)] for i, r in enumerate(tome["schedule"])]))
    return (f"vitedge prune — {directory.name}", headline, tables, plots, [],
            {**metrics, "kind": "prune", "card": str(directory / CARD_NAME)})
