"""`vitedge prune`: make a ViT do less work — fewer heads, narrower MLPs/embedding, fewer tokens.

Structured pruning (Torch-Pruning, see structured.py) removes whole heads, MLP units and
embedding channels of timm, torchvision and Hugging Face ViTs; a short label-free distillation
from the original (distill.py) recovers agreement; token merging (tome.py, timm only) can be
added on top, training-free. The result is a torch artifact whose card records the pruned shapes
and the merge schedule, so loading it rebuilds the same model, and export, quantize, compile and
run take it like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.artifact import artifact_hash, derive_card, write_card
from vitedge.card import ModelCard
from vitedge.data import DataSet
from vitedge.errors import InputError
from vitedge.locks import releasing
from vitedge.models.loaded import LoadedModel
from vitedge.models.options import SourceOptions
from vitedge.prune.distill import DistillConfig
from vitedge.prune.layouts import FAMILIES
from vitedge.prune.plan import Device, Importance, Method, PrunePlan, PruneRatios, choice


@releasing
def prune(model: LoadedModel | str | Path, out: str | Path, plan: PrunePlan | None = None, *,
          data: str | Path | DataSet | None = None, samples: int | None = None,
          distill: DistillConfig | None = None, options: SourceOptions | None = None,
          device: Device | str = Device.AUTO, overwrite: bool = False, progress: Callable[[str], None] | None = None,
          tick: Callable[[int, int, float | None], None] | None = None) -> dict[str, Any]:
    """Prune, distill and/or merge tokens as `plan` says; write the artifact at `out`; return
    its metrics. `model` is loaded, or a source read with `options`; `data` (images) feeds
    Taylor importance, distillation and the held-out agreement. `device`: where statistics,
    compensation, distillation and the held-out figures run (auto: cuda when PyTorch sees a GPU)."""
    say = progress or (lambda _message: None)
    distill = distill or DistillConfig(steps=0)
    asked = plan or PrunePlan()
    plan = _check(asked, distill, data)
    where = torch_device(device)
    from vitedge.models.load import as_loaded
    from vitedge.outputs import OutputKind, check_output, input_paths, writing

    loaded = as_loaded(model, options)
    inputs = [*loaded.origin, *input_paths(data.origin if isinstance(data, DataSet) else data)]
    out = check_output(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs)
    checkpoint = Path(str(out) + ".distill.pt")
    if distill.steps:
        from vitedge.prune.distill import read_checkpoint

        read_checkpoint(checkpoint)  # a file in the way is refused before any work
    teacher = _teacher(loaded, plan)
    if plan.structured and plan.method is Method.COMPENSATE:
        plan = _compensable(teacher, plan, asked.method, say)
    run = _Run(loaded, teacher, plan, say, where)
    if data is not None:
        run.split(data, samples)
    if plan.structured:
        run.prune_structure()
        if distill.steps:
            run.distill(distill, checkpoint, tick, data)
    run.student.to("cpu")
    plain_state = {k: v.contiguous() for k, v in run.student.state_dict().items()}
    if plan.tome:
        run.merge_tokens()
    card = _card(loaded, run.student, run.finish(), plan)
    from safetensors.torch import save_file

    with writing(out, OutputKind.ARTIFACT, overwrite=overwrite, inputs=inputs) as staging:
        save_file(plain_state, str(staging / "model.safetensors"))
        write_card(staging, card)
    if distill.steps:
        checkpoint.unlink(missing_ok=True)  # finished: no resume needed
    return run.metrics


def _check(plan: PrunePlan, distill: DistillConfig, data: str | Path | None) -> PrunePlan:
    if distill.steps and data is None:
        raise InputError("--distill-steps needs --data: distillation trains the pruned model to match "
                         "the original on unlabeled images", "pass --data with a folder of images")
    if distill.steps < 0:
        raise InputError("--distill-steps must be >= 0")
    if distill.features < 0 or (distill.features and not distill.steps):
        raise InputError(f"--distill-features {distill.features} needs to be >= 0 and comes with --distill-steps",
                         "e.g. --distill-steps 1000 --distill-features 1.0")
    if distill.blocks < 0 or (distill.blocks and not distill.steps):
        raise InputError(f"--distill-blocks {distill.blocks} needs to be >= 0 and comes with --distill-steps",
                         "e.g. --distill-steps 300 --lr 1e-5 --distill-blocks 1")
    if distill.blocks and plan.ratios.embed:
        raise InputError("--distill-blocks matches every block's tokens, which needs the embedding width kept",
                         "drop --embed, or use --distill-features (it maps the final tokens)")
    return plan.resolved(data is not None)


def torch_device(asked: Device | str) -> str:
    """'cpu' or 'cuda' for --device; cuda asked for where PyTorch sees no GPU is a one-line refusal."""
    import torch

    asked = choice(Device, asked, "--device")
    available = torch.cuda.is_available()
    if asked is Device.CUDA and not available:
        raise InputError("--device cuda: PyTorch sees no CUDA GPU here "
                         f"(torch {torch.__version__}, built {'with CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU only'})",
                         "pass --device cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA build of torch")
    return "cuda" if asked is Device.CUDA or (asked is Device.AUTO and available) else "cpu"


def device_name(device: str) -> str:
    """What the card records: 'cpu', or 'cuda (NVIDIA H100 80GB HBM3)'."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if device == "cuda" else "cpu"


def _teacher(loaded: LoadedModel, plan: PrunePlan) -> Any:
    """The original module, once the source is known to be one this plan can prune."""
    from vitedge.prune.layouts import check_prunable

    source = loaded.card.source
    kind = source.get("kind")
    if kind not in FAMILIES or source.get("pruned") or source.get("tome"):
        pruned = " and is already pruned" if source.get("pruned") or source.get("tome") else ""
        raise InputError(f"vitedge prunes timm, torchvision and Hugging Face ViTs that are not pruned yet; "
                         f"{loaded.card.architecture} comes from {kind!r}{pruned}",
                         "load it as timm:NAME -w CKPT, torchvision:NAME -w CKPT, a Hugging Face folder "
                         "or builtin:digits-vit")
    if plan.tome and kind != "timm":
        raise InputError(f"--tome (token merging) supports timm ViTs; {loaded.card.architecture} comes "
                         f"from {kind!r}", "drop --tome, or load the model with timm")
    teacher = loaded.torch_module("pruning").eval()
    if plan.structured:  # refuse what this family cannot do before any work
        check_prunable(teacher, plan.ratios)
    return teacher


def _compensable(teacher: Any, plan: PrunePlan, asked: Method | str, say: Callable[[str], None]) -> PrunePlan:
    """The plan, or under --method auto plain pruning where this model cannot be compensated."""
    from vitedge.prune.compensate import check_method

    try:
        check_method(teacher, plan.ratios)
    except InputError as exc:
        if str(asked) != Method.AUTO:
            raise
        say(f"plain pruning ({plan.importance} importance): {exc.message}")
        return replace(plan, method=Method.PLAIN)
    return plan


BUDGET_SHARES = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)  # MAC shares a budget search tries, in order


def _within(measured: dict[str, Any], plan: PrunePlan) -> tuple[bool, float | None]:
    """Whether a probe holds the budget, and its drop in points (top-1 when the held-out images
    are labeled, else agreement with the original; 1 - cosine for feature outputs)."""
    if measured.get("features"):
        drop = 100 * (1 - measured["cosine"]) if measured.get("cosine") is not None else None
    elif "top1_pruned" in measured:
        drop = 100 * (measured["top1_original"] - measured["top1_pruned"])
    else:
        drop = 100 * (1 - measured["top1_agreement"])
    met = True
    if plan.max_drop is not None:
        met = drop is not None and drop <= plan.max_drop + 1e-9
    if plan.min_agreement is not None:
        agreement = measured["cosine"] if measured.get("features") else measured["top1_agreement"]
        met = met and agreement is not None and agreement >= plan.min_agreement - 1e-9
    return met, drop


def _summary(measured: dict[str, Any] | None, plan: PrunePlan) -> dict[str, Any] | None:
    """A probe's comparison point: agreement, cosine, top-1 and drop of the same cut uncompensated."""
    if measured is None:
        return None
    return {"top1_agreement": measured["top1_agreement"], "cosine": measured["cosine"],
            "top1_pruned": measured.get("top1_pruned"), "drop": _within(measured, plan)[1]}


def _closeness(measured: dict[str, Any], drop: float | None) -> str:
    """'a drop of D points and A % agreement' (or the cosine, for feature outputs)."""
    agreement = measured.get("top1_agreement")
    return (f"a drop of {drop:.2f} points and " if drop is not None else "") + (
        f"{100 * agreement:.1f} % agreement" if agreement is not None else f"cosine {measured.get('cosine', 0):.4f}")


MLP_FIRST = 0.35  # compensated --target-macs removes MLP units alone up to this share of them


class _Run:
    """One pruning run, step by step; `metrics` collects what each step measured."""

    def __init__(self, loaded: LoadedModel, teacher: Any, plan: PrunePlan, say: Callable[[str], None],
                 device: str = "cpu") -> None:
        from vitedge.models.structure import count_macs

        self.loaded, self.teacher, self.plan, self.say, self.device = loaded, teacher, plan, say, device
        # the teacher stays on the CPU for the structural dry runs; its copy on `device` does the numerics
        self.reference = teacher if device == "cpu" else copy.deepcopy(teacher).to(device)
        self.size = loaded.card.preprocessing.input_size
        self.features = loaded.card.num_classes is None  # no classifier head: outputs compared as vectors
        self.student = copy.deepcopy(self.reference)
        self.train = self.holdout = self.labels = None
        self.metrics: dict[str, Any] = {"macs_before": count_macs(teacher, self.size),
                                        "params_before": _params(teacher), "device": device_name(device)}
        self.shapes: dict[str, Any] = {}

    def split(self, data: str | Path | DataSet, samples: int | None) -> None:
        self.train, self.holdout, labels = _split(self.loaded, data, samples)
        self.labels = None if self.features else labels

    def measure(self, key: str) -> None:
        if self.holdout is not None:
            self.metrics[key] = _measure(self.reference, self.student, self.holdout, self.labels, self.features)

    def prune_structure(self) -> None:
        plan = self.plan
        if plan.budgeted:  # the search leaves the chosen model in self.student
            ratios = self._search_budget(plan)
        else:
            ratios = self._target_ratios(plan) if plan.target_macs is not None else plan.ratios
            self._prune_once(plan, ratios)
        self.metrics.update({"ratios": {"heads": ratios.heads, "mlp": ratios.mlp, "embed": ratios.embed},
                             "method": str(plan.method),
                             "importance": "compensated" if plan.method is Method.COMPENSATE else str(plan.importance),
                             "round_to": plan.round_to, "allocation": str(plan.allocation),
                             **({"mirror": plan.mirror} if plan.method is Method.COMPENSATE else {}),
                             "structure": self.shapes})
        self.measure("before_distill")

    def _prune_once(self, plan: PrunePlan, ratios: PruneRatios) -> None:
        import torch

        from vitedge.prune.structured import prune_model

        if plan.method is Method.COMPENSATE:
            self._compensate(ratios)
            return
        self.say(f"pruning heads {ratios.heads:.0%}, MLP {ratios.mlp:.0%}, embedding {ratios.embed:.0%} "
                 f"({plan.importance} importance)")
        train = self.train
        batches = [torch.from_numpy(train[i:i + 16]) for i in range(0, min(len(train), 128), 16)] \
            if train is not None else []
        self.student.to("cpu")  # Torch-Pruning traces on the CPU, as the teacher is there
        self.shapes = prune_model(self.student, ratios, importance=plan.importance, batches=batches,
                                  teacher=self.teacher, round_to=plan.round_to, allocation=plan.allocation)
        self.student.to(self.device)

    def _search_budget(self, plan: PrunePlan) -> PruneRatios:
        """The largest MAC cut whose pruned model holds the budget on the held-out images: shares
        of MACs kept tried from BUDGET_SHARES down until one misses, then one between the last
        that held and the first that missed. Each probe prunes a fresh copy as the plan says."""
        assert self.holdout is not None
        probes: list[dict[str, Any]] = []
        best: tuple[float, Any, PruneRatios, dict[str, Any], dict[str, Any]] | None = None

        def probe(share: float) -> bool:
            nonlocal best
            say, self.say = self.say, lambda _message: None  # one line per probe, below
            try:
                try:
                    ratios = self._target_ratios(replace(plan, target_macs=share, max_drop=None, min_agreement=None))
                except InputError:
                    return False  # this family cannot cut that far
                self.student = copy.deepcopy(self.reference)
                self._prune_once(replace(plan, max_drop=None, min_agreement=None), ratios)
            finally:
                self.say = say
            from vitedge.models.structure import count_macs

            kept = count_macs(self.student, self.size) / self.metrics["macs_before"]
            measured = _measure(self.reference, self.student, self.holdout, self.labels, self.features)
            met, drop = _within(measured, plan)
            probes.append({"target": share, "mac_share": kept, "top1_agreement": measured["top1_agreement"],
                           "cosine": measured["cosine"], "drop": drop, "met": met,
                           "top1_pruned": measured.get("top1_pruned"),
                           "uncompensated": _summary(self.metrics.get("uncompensated"), plan)})
            self.say(f"budget search: {100 * (1 - kept):.0f} % fewer MACs -> {_closeness(measured, drop)} "
                     + ("(holds)" if met else "(misses)"))
            if met and (best is None or kept < best[0]):  # with what its compensation measured
                best = (kept, self.student, ratios, self.shapes,
                        {k: self.metrics[k] for k in ("compensation", "uncompensated") if k in self.metrics})
            return met

        held = None
        for share in BUDGET_SHARES:
            if not probe(share):
                if held is not None and held - share > 0.03:
                    probe((held + share) / 2)
                break
            held = share
        self.metrics["budget_search"] = {"max_drop": plan.max_drop, "min_agreement": plan.min_agreement,
                                         "samples": len(self.holdout), "probes": probes}
        if best is None:
            first = probes[0] if probes else None
            said = "" if first is None else (
                f": the smallest cut tried ({100 * (1 - first['mac_share']):.0f} % fewer MACs) left "
                + _closeness(first, first["drop"]))
            raise InputError(f"no cut holds the budget on the {len(self.holdout)} held-out images{said}",
                             "loosen --max-drop / --min-agreement, or prune with --target-macs and distill")
        kept, self.student, ratios, self.shapes, measured = best
        for key in ("compensation", "uncompensated"):
            self.metrics.pop(key, None)
        self.metrics.update(measured)
        self.metrics["budget_search"]["chosen_mac_share"] = kept
        self.say(f"chosen: {100 * (1 - kept):.0f} % fewer MACs")
        return ratios

    def _target_ratios(self, plan: PrunePlan) -> PruneRatios:
        """The ratios that keep --target-macs. Compensated pruning takes MLP units alone while that
        removes at most MLP_FIRST of them: a compensated head costs far more accuracy than the MLP
        units of the same MACs (real DeiT-Tiny at -15 % MACs, two folds of 250 images: 75.8 % top-1
        from MLP units alone, 72.0 % from heads and MLP units equally; at -25 %, where MLP units
        alone would be 45 % of them, heads and MLP equally did better than MLP alone without the
        refit, 68.6 % against 61.0 %)."""
        search = dict(target=plan.target_macs, macs_before=self.metrics["macs_before"], size=self.size,
                      round_to=plan.round_to, say=self.say)
        heads = self.loaded.card.source.get("kind") != "torchvision"
        if plan.method is Method.COMPENSATE and heads:
            try:
                ratios = _search_ratios(self.teacher, **{**search, "say": lambda _message: None}, heads=False)
            except InputError:
                ratios = None
            if ratios is not None and ratios.mlp <= MLP_FIRST:
                self.say(f"--target-macs {plan.target_macs}: MLP ratio {ratios.mlp:.2f}, heads kept")
                return ratios
        return _search_ratios(self.teacher, **search, heads=heads)

    def _compensate(self, ratios: PruneRatios) -> None:
        """Compensated pruning to the widths plain pruning would keep at these ratios (the same
        rounding, allocation and MAC figures; an L2 dry run on a copy gives them)."""
        import torch

        from vitedge.prune.compensate import compensated_prune
        from vitedge.prune.structured import prune_model

        plan = self.plan
        assert self.train is not None
        dry = copy.deepcopy(self.teacher)
        widths = prune_model(dry, ratios, importance=Importance.L2,
                             round_to=plan.round_to, allocation=plan.allocation)["after"]
        if self.holdout is not None:  # the same cut without compensation, for the report's comparison
            self.metrics["uncompensated"] = _measure(self.reference, dry.to(self.device), self.holdout, self.labels,
                                                     self.features)
        del dry
        images = torch.from_numpy(self.train)
        if plan.mirror:  # twice the tokens for the ridge fits (DeiT-Tiny, 200 images: +1.2 points top-1 at -15 % MACs)
            images = torch.cat([images, images.flip(-1)])
        self.say(f"pruning heads {ratios.heads:.0%}, MLP {ratios.mlp:.0%} with compensation from "
                 f"{len(self.train)} images" + (" and their mirror images" if plan.mirror else "")
                 + " (units chosen and the next layer refitted block by block)")
        result = compensated_prune(self.student, widths, images, teacher=self.reference)
        self.shapes = {"before": result["before"], "after": result["after"]}
        self.metrics["compensation"] = result["blocks"]

    def distill(self, config: DistillConfig, checkpoint: Path,
                tick: Callable[[int, int, float | None], None] | None, data: str | Path | DataSet | None) -> None:
        from vitedge.prune.compensate import blocks_of
        from vitedge.prune.distill import distill
        from vitedge.prune.layouts import final_norm

        assert self.train is not None and self.holdout is not None
        self.say(f"distilling {config.steps} steps on {len(self.train)} images "
                 f"({len(self.holdout)} held out for early stopping)")
        card = self.loaded.card
        self.metrics["distill"] = distill(
            self.student, self.reference, self.train, self.holdout, replace(config, vectors=self.features),
            feature_norms=(final_norm(self.student), final_norm(self.reference)) if config.features else None,
            block_pairs=list(zip(blocks_of(self.student), blocks_of(self.reference))) if config.blocks else None,
            checkpoint=checkpoint, tick=tick,
            identity={"structure": self.shapes["after"],
                      "data": data.origin if isinstance(data, DataSet) else str(data),
                      "parent": artifact_hash(card) if card.files else card.source})
        self.measure("after_distill")

    def merge_tokens(self) -> None:
        from vitedge.prune.tome import apply_tome

        self.metrics["tome"] = apply_tome(self.student, self.plan.tome, self.plan.tome_from)
        self.measure("final")

    def finish(self) -> dict[str, Any]:
        from vitedge.models.structure import count_macs

        metrics = self.metrics
        metrics["macs_after"] = count_macs(self.student, self.size)
        metrics["params_after"] = _params(self.student)
        metrics["mac_share"] = metrics["macs_after"] / metrics["macs_before"] if metrics["macs_before"] else None
        return metrics


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _split(loaded: LoadedModel, data: str | Path | DataSet, samples: int | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Training images and a held-out slice (20%, at most 200) for agreement and early stopping
    (`data`: a path, or images already opened with this model's preprocessing)."""
    from vitedge.data import model_labels, open_data

    dataset = data if isinstance(data, DataSet) else \
        open_data(data, loaded.card.preprocessing, samples=samples, role="prune --data")
    arrays = np.concatenate(list(dataset.batches(64)))
    labels = model_labels(loaded.card, dataset)
    order = np.random.default_rng(0).permutation(len(arrays))
    held = min(200, max(10, len(arrays) // 5))
    return (arrays[order[held:]], arrays[order[:held]],
            labels[order[:held]] if labels is not None else None)


def _measure(teacher: Any, student: Any, images: np.ndarray, labels: np.ndarray | None,
             features: bool = False) -> dict[str, Any]:
    """Agreement (and top-1) with the original; for feature outputs, cosine and relative error."""
    import torch

    from vitedge.drift import compare, topk_accuracy

    student.eval()
    with torch.inference_mode():
        tensor = torch.from_numpy(images)

        def outputs(model: Any) -> np.ndarray:  # on the model's own device
            device = next(model.parameters()).device
            return torch.cat([model(tensor[i:i + 64].to(device)).float().cpu()
                              for i in range(0, len(tensor), 64)]).numpy()

        reference, pruned = outputs(teacher), outputs(student)
    drift = compare(reference, pruned, features=features)
    result = {"samples": len(images), "top1_agreement": drift.top1_agreement, "kl": drift.kl,
              "cosine": drift.cosine, "rel_error": drift.rel_error, "features": features}
    if labels is not None:
        result["top1_original"] = topk_accuracy(reference, labels)
        result["top1_pruned"] = topk_accuracy(pruned, labels)
    return result


def _search_ratios(teacher: Any, target: float, macs_before: int, size: tuple[int, int],
                   round_to: int, say: Callable[[str], None], *, heads: bool = True) -> PruneRatios:
    """The smallest equal heads/MLP ratio whose pruned model keeps at most `target` of the MACs.

    Without `heads` (torchvision, whose heads cannot be removed) only the MLP ratio is searched.
    """
    from vitedge.models.structure import count_macs
    from vitedge.prune.structured import prune_model

    what = "heads and MLP" if heads else "MLP"
    low, high, best = 0.0, 0.95, None
    for _ in range(8):
        middle = (low + high) / 2
        trial = copy.deepcopy(teacher)
        prune_model(trial, PruneRatios(heads=middle if heads else 0.0, mlp=middle), importance=Importance.L2,
                    round_to=round_to, strict=False)
        share = count_macs(trial, size) / macs_before
        if share <= target:
            best, high = middle, middle
        else:
            low = middle
    if best is None:
        raise InputError(f"--target-macs {target} cannot be reached by pruning {what} units",
                         "raise --target-macs, or add --embed" + (" / --tome" if heads else ""))
    say(f"--target-macs {target}: {what} ratio {best:.2f}")
    return PruneRatios(heads=best if heads else 0.0, mlp=best)


def _card(loaded: LoadedModel, student: Any, metrics: dict[str, Any], plan: PrunePlan) -> ModelCard:
    structured, tome = plan.structured, plan.tome
    family_tools = {"torchvision": ("torchvision",), "huggingface": ("transformers",)}.get(
        str(loaded.card.source.get("kind")), ())
    card = derive_card(loaded.card, "prune", format="torch", card_metrics={"prune": metrics},
                       params={k: metrics[k] for k in ("ratios", "method", "importance", "round_to", "allocation")
                               if k in metrics} | ({"tome": tome} if tome else {}),
                       metrics={k: v for k, v in metrics.items() if k not in ("structure",)},
                       tools=("torch", "timm", "torch-pruning", *family_tools))
    card.macs = metrics["macs_after"]
    card.params = metrics["params_after"]
    source = {k: v for k, v in loaded.card.source.items() if k not in ("onnx", "quantization", "bundle")}
    source["weights"] = "model.safetensors"
    if structured:
        shapes = metrics["structure"]["after"]
        source["pruned"] = shapes
        card.structure = type(card.structure).from_dict({
            **card.structure.to_dict(), "embed_dim": shapes["embed_dim"],
            "num_heads": max(shapes["num_heads"]), "mlp_hidden": max(shapes["mlp_hidden"])})
        if source.get("kind") == "huggingface":  # rebuilt from the card, without the original folder
            from vitedge.models.hf import pruned_source

            source.update(pruned_source(student))
    if tome:
        source["tome"] = {"r": tome, "start": metrics["tome"]["start"]}
    card.source = source
    return card
