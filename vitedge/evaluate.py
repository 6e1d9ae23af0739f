"""`vitedge eval`: the same images through several models; accuracy and drift against the first.

Any mix of sources works (torch, ONNX, quantized, pruned, compiled bundles): each is loaded with
`vitedge.runtime.load`, so a bundle is verified against its passport first. Metrics come from
`vitedge.drift`, the implementation `vitedge run` uses on live frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.artifact import sha256_file
from vitedge.documents import write_document
from vitedge.drift import compare, per_sample, softmax, topk_accuracy
from vitedge.errors import InputError
from vitedge.locks import releasing
from vitedge.models.options import SourceOptions

if TYPE_CHECKING:
    from vitedge.schemas.results import EvalResult

EVAL_NAME = "eval.json"
LOGITS_NAME = "logits.npz"


@releasing
def evaluate(sources: list[str], data: str | Path, out: str | Path, *, samples: int | None = None,
             seed: int = 0, worst: int = 12, rebuild: bool = False, overwrite: bool = False,
             options: SourceOptions | None = None) -> EvalResult:
    """Write EVAL_DIR (eval.json + logits.npz) for `sources` on `data`; return what it holds."""
    from vitedge.data import model_labels, open_data
    from vitedge.outputs import OutputKind, check_output, input_paths, writing
    from vitedge.sessions import load

    if not sources:
        raise InputError("eval needs at least one model")
    inputs = input_paths(*sources, data)
    check_output(out, OutputKind.EVAL, overwrite=overwrite, inputs=inputs)
    results: list[dict[str, Any]] = []
    logits_by_model: list[np.ndarray] = []
    dataset = labels = None
    class_names: list[str] = []
    for source in sources:
        with load(source, (options or SourceOptions()).for_source(source), rebuild=rebuild) as session:
            card = session.card
            if dataset is None:
                features = card.num_classes is None  # no classifier head: compare feature vectors
                dataset = open_data(data, card.preprocessing, samples=samples, seed=seed, role="eval")
                labels = None if features else model_labels(card, dataset)
                class_names = card.labels or [str(i) for i in range(card.num_classes or 0)]
            elif card.preprocessing != dataset.pre or card.num_classes != results[0]["num_classes"]:
                raise InputError(f"{source} differs from {sources[0]} in preprocessing or classes",
                                 "evaluate models made from the same source model")
            logits = session.infer_all(dataset)
            logits_by_model.append(logits.astype(np.float32))
            row: dict[str, Any] = {"model": str(source), "backend": session.description,
                                   "precision": session.precision, "int8_mac_share": session.int8_share,
                                   "num_classes": card.num_classes,
                                   "latency_ms": session.timing.summary()}
            if labels is not None:
                row["top1"] = topk_accuracy(logits, labels)
                row["top5"] = topk_accuracy(logits, labels, 5)
            results.append(row)
    assert dataset is not None
    paths = dataset.paths()
    reference = logits_by_model[0]
    for row, logits in zip(results[1:], logits_by_model[1:]):
        row["vs_first"] = compare(reference, logits, features=features).to_dict()
        if features:
            vectors = per_sample(reference, logits, features=True)
            order = np.argsort(-vectors["rel_error"])[:worst]
            row["worst"] = [{"path": str(paths[i]) if paths[i] else None,
                             "rel_error": float(vectors["rel_error"][i]), "cosine": float(vectors["cosine"][i])}
                            for i in order if vectors["rel_error"][i] > 0]
            continue
        metrics = per_sample(reference, logits)
        order = np.argsort(-metrics["kl"])[:worst]
        row["worst"] = [{"path": str(paths[i]) if paths[i] else None, "kl": float(metrics["kl"][i]),
                         "first": class_names[int(metrics["ref_top1"][i])],
                         "this": class_names[int(metrics["cand_top1"][i])],
                         "label": class_names[int(labels[i])] if labels is not None else None}
                        for i in order if metrics["kl"][i] > 0]
        if labels is not None:
            row["per_class_delta"] = _per_class_delta(reference, logits, labels, class_names)
    report = {"kind": "eval", "data": str(data), "samples": int(len(reference)), "features": features,
              "labeled": labels is not None, "skipped": list(dataset.skipped),
              "class_names": class_names, "models": results}
    with writing(out, OutputKind.EVAL, overwrite=overwrite, inputs=inputs) as staging:
        extra = {} if features else {"confidence": np.stack([softmax(lg).max(1) for lg in logits_by_model])}
        np.savez_compressed(staging / LOGITS_NAME, labels=labels if labels is not None else np.array([]),
                            **{f"model{i}": lg for i, lg in enumerate(logits_by_model)}, **extra)
        _keep_thumbnails(staging, results)
        report["files"] = {p.relative_to(staging).as_posix(): sha256_file(p)
                           for p in sorted(staging.rglob("*")) if p.is_file() and not p.name.startswith(".")}
        written = write_document(staging / EVAL_NAME, report)
    from vitedge.schemas.results import EvalResult

    return EvalResult.from_dict(written)


def _keep_thumbnails(folder: Path, rows: list[dict[str, Any]], side: int = 160) -> None:
    """Copy small JPEGs of the most-disagreeing images into the eval folder (worst/NNN.jpg), so
    the report embeds files of the eval itself and never reads outside it."""
    from vitedge.preprocess import UnreadableImageError, load_image

    done: dict[str, str] = {}
    for row in rows:
        for worst in row.get("worst", []):
            path = worst.get("path")
            worst["image"] = None
            if not path:
                continue
            if path not in done:
                try:
                    image = load_image(path)
                except UnreadableImageError:
                    continue
                image.thumbnail((side, side))
                (folder / "worst").mkdir(exist_ok=True)
                name = f"worst/{len(done):03d}.jpg"
                image.save(folder / name, format="JPEG", quality=85)
                done[path] = name
            worst["image"] = done[path]


def _per_class_delta(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                     class_names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for cls in np.unique(labels):
        mask = labels == cls
        first = float(np.mean(reference[mask].argmax(1) == cls))
        this = float(np.mean(logits[mask].argmax(1) == cls))
        rows.append({"class": class_names[int(cls)], "samples": int(mask.sum()),
                     "first": first, "this": this, "delta": this - first})
    return sorted(rows, key=lambda r: r["delta"])
