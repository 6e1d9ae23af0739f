"""`predict` (top-k per image) and `bench` (one table across formats, precisions and batches)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.data import BatchStats, ImageRecord, iter_batches, open_images
from vitedge.drift import compare, softmax, topk_accuracy
from vitedge.errors import InputError
from vitedge.machine_load import LoadWatch
from vitedge.models.options import SourceOptions
from vitedge.runtime.base import Session
from vitedge.schemas.base import LoadDoc
from vitedge.targets import Backend


@dataclass
class Prediction:
    path: str
    top: list[dict[str, Any]]  # {"index", "label", "probability"}, best first; [] for features
    latency_ms: float
    embedding: dict[str, Any] | None = None  # feature extractors: size, norm, mean, std, first values


@dataclass(frozen=True)
class PredictResult:
    model: str
    backend: str  # the session's description
    precision: str
    predictions: list[Prediction]
    skipped: list[str]  # "path: reason" of each unreadable image
    latency_ms: dict[str, Any]  # the session's timing summary (batch 1, host to host)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "skipped": self.skipped,
                "predictions": [asdict(p) for p in self.predictions]}


def predict(model: Session | str | Path, sources: list[str | Path], top_k: int = 5, *,
            rebuild: bool = False, backend: Backend | str | None = None,
            options: SourceOptions | None = None) -> PredictResult:
    """Top-k for every image under `sources` (files, folders, globs); unreadable ones are listed.

    `model` is a session, or a bundle / artifact / source loaded with `options`."""
    from vitedge.sessions import load

    if top_k < 1:
        raise InputError(f"--top-k {top_k} must be at least 1")
    if isinstance(model, Session):
        session = model
        predictions, skipped = _predict(session, sources, top_k)
    else:
        with load(model, options, rebuild=rebuild, backend=backend) as session:
            predictions, skipped = _predict(session, sources, top_k)
    return PredictResult(str(model) if not isinstance(model, Session) else session.description,
                         session.description, session.precision_label,
                         predictions, skipped, session.timing.summary())


def _predict(session: Session, sources: list[str | Path], top_k: int) -> tuple[list[Prediction], list[str]]:
    records: list[ImageRecord] = []
    for source in sources:
        records += open_images(source).records
    card = session.card
    labels = card.labels if card is not None else None
    stats = BatchStats()
    predictions = []
    features = card.num_classes is None  # no classifier head: a vector, never softmax "confidences"
    for batch, kept in iter_batches(records, card.preprocessing, batch_size=1, stats=stats,
                                    pixels=session.pixels):
        output = session.infer_native(batch)[0]
        if features:
            vector = np.asarray(output, dtype=np.float64).ravel()
            predictions.append(Prediction(str(kept[0].path), [], session.timing.calls_ms[-1], {
                "size": int(vector.size), "norm": float(np.linalg.norm(vector)), "mean": float(vector.mean()),
                "std": float(vector.std()), "first": [float(v) for v in vector[:4]]}))
            continue
        probabilities = softmax(output[None])[0]
        order = np.argsort(-probabilities)[:top_k]
        predictions.append(Prediction(str(kept[0].path), [
            {"index": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)),
             "probability": float(probabilities[i])} for i in order],
            session.timing.calls_ms[-1]))
    if not predictions:
        raise InputError(f"none of the {len(records)} image(s) could be read",
                         f"first problem: {stats.skipped[0] if stats.skipped else '?'}")
    return predictions, stats.skipped


@dataclass
class BenchRow:
    name: str
    backend: str
    precision: str
    size_mib: float | None
    batch: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    images_per_s: float | None = None
    top1: float | None = None
    agreement: float | None = None  # top-1 agreement with the first model's predictions
    cosine: float | None = None  # mean output cosine to the first model (feature extractors too)
    samples: int = 0
    int8_mac_share: float | None = None  # INT8 models: share of the weight-layer MACs in INT8
    status: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    rows: list[BenchRow] = field(default_factory=list)
    data: str | None = None
    reference: str | None = None
    skipped: list[str] = field(default_factory=list)
    load: LoadDoc | None = None  # how busy the cores were while the rows were timed

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "reference": self.reference, "skipped": self.skipped,
                "rows": [row.to_dict() for row in self.rows],
                "load": self.load.to_dict() if self.load is not None else None}


BENCH_GENERATOR = "vitedge bench"


def _owned_bench(target: Path) -> bool:
    from vitedge.locks import json_object

    return (json_object(target) or {}).get("generator") == BENCH_GENERATOR


def write_json(result: BenchResult, path: str | Path) -> None:
    """`bench --json FILE`: the table as JSON, with the CPU it ran on; replaces only an earlier
    bench table."""
    import json

    from vitedge.documents import json_safe
    from vitedge.outputs import write_files
    from vitedge.versions import cpu_feature_names

    data = json_safe({"generator": BENCH_GENERATOR, **result.to_dict(), "cpu_features": cpu_feature_names()})
    write_files({Path(path): (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()},
                owned=_owned_bench, what="bench table")


def model_size_mib(source: str | Path, session: Session) -> float | None:
    """Bytes of what the runtime loads: the engine, ONNX with its external data, OpenVINO IR with
    its weights (model.xml + model.bin), or torch weights."""
    path = Path(str(source))
    model = session.model_path
    if model is not None and model.is_file():  # the verified file the session runs
        beside = [model.with_name(model.name + ".data")] + ([model.with_suffix(".bin")] if model.suffix == ".xml" else [])
        return (model.stat().st_size + sum(f.stat().st_size for f in beside if f.is_file())) / 2**20
    module = getattr(session, "module", None)
    if module is not None:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    return path.stat().st_size / 2**20 if path.is_file() else None  # e.g. a .onnx file


def bench(sources: list[str], *, batches: tuple[int, ...] | str = (1,), data: str | Path | None = None,
          samples: int | None = None, runs: int = 50, warmup: int = 5, rebuild: bool = False,
          backend: Backend | str | None = None, json_out: str | Path | None = None,
          options: SourceOptions | None = None,
          progress: Callable[[str], None] = lambda _m: None) -> BenchResult:
    """Latency/throughput per source and batch; with `data`, top-1 and agreement with the first.

    `json_out`: also write the table there (checked before anything runs). `progress` hears what
    is loaded, evaluated and timed. The result records how busy the machine was while timing.
    """
    from vitedge.data import model_labels, open_data
    from vitedge.outputs import check_files, input_paths
    from vitedge.sessions import load

    if json_out is not None:
        check_files([json_out], owned=_owned_bench, what="bench table", inputs=input_paths(*sources, data))
    if not sources:
        raise InputError("bench needs at least one bundle, artifact or model source")
    if isinstance(batches, str):
        try:
            batches = tuple(int(b) for b in batches.split(","))
        except ValueError:
            raise InputError(f"--batch {batches!r} is not a comma-separated list of integers",
                             "e.g. --batch 1,8") from None
    if runs < 1 or warmup < 0 or any(not 1 <= b <= 4096 for b in batches):
        raise InputError("--runs must be >= 1, --warmup >= 0 and every --batch 1..4096")
    result = BenchResult(data=str(data) if data else None, reference=sources[0])
    timed: list[LoadDoc] = []
    reference_logits: np.ndarray | None = None
    dataset = labels = None
    for source in sources:
        name = Path(str(source)).name or str(source)
        progress(f"loading {name}")
        session = load(source, (options or SourceOptions()).for_source(source), rebuild=rebuild,
                       backend=backend)
        with session:
            if data is not None and dataset is None:
                dataset = open_data(data, session.card.preprocessing, samples=samples, role="bench")
                labels = model_labels(session.card, dataset)
                result.skipped = list(dataset.skipped)
            elif dataset is not None and session.card.preprocessing != dataset.pre:
                raise InputError(f"{source} preprocesses images differently from {sources[0]}",
                                 "bench models made from the same source model")
            top1 = agreement = cosine = None
            features = session.card.num_classes is None
            if dataset is not None:
                progress(f"evaluating {name} on {len(dataset)} images")
                logits = session.infer_all(dataset)
                top1 = topk_accuracy(logits, labels) if labels is not None and not features else None
                if reference_logits is None:
                    reference_logits = logits
                drift = compare(reference_logits, logits, features=features)
                agreement, cosine = drift.top1_agreement, drift.cosine
            for batch in batches:
                row = BenchRow(name, session.backend, session.precision,
                               model_size_mib(source, session), batch, top1=top1,
                               agreement=agreement, cosine=cosine, samples=len(dataset) if dataset else 0,
                               int8_mac_share=session.int8_share)
                if session.max_batch is not None and not session.min_batch <= batch <= session.max_batch:
                    row.status = f"batch {batch} outside {session.min_batch}..{session.max_batch}"
                else:
                    progress(f"timing {name} ({session.backend}) at batch {batch}: {runs} runs")
                    with LoadWatch() as watch:
                        timings = session.latency(batch, runs, warmup)
                    for key, value in timings.items():
                        setattr(row, key, value)
                    assert watch.load is not None
                    timed.append(watch.load)
                result.rows.append(row)
    if timed:  # the busiest moment speaks for the table
        result.load = max(timed, key=lambda load: load.others)
    if json_out is not None:
        write_json(result, json_out)
    return result


