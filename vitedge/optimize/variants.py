"""The models `vitedge optimize` builds bundles of: pruned by a share of the MACs (or as far as
the budget holds), token-merged, exported, quantized; each an ordinary artifact under
OUT/candidates/, written by the same steps a user would run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.data import DataSet
from vitedge.errors import InputError
from vitedge.targets import Target

CANDIDATES = "candidates"


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


def candidate_path(folder: Path, name: str) -> Path:
    return folder / CANDIDATES / name


def usable(path: Path) -> bool:
    """An artifact a previous run finished (its files verify)."""
    from vitedge.artifact import is_artifact, read_card, verify_files

    if not is_artifact(path):
        return False
    try:
        verify_files(path, read_card(path))
    except InputError:
        return False
    return True


class Builder:
    """Builds (or, on resume, reuses) each variant's models in `folder`/candidates."""

    def __init__(self, folder: Path, loaded: Any, base: Any, target: Target, calibration: DataSet,
                 say: Callable[[str], None], *, max_drop: float, min_agreement: float | None,
                 distill_steps: int) -> None:
        self.folder, self.loaded, self.base, self.target = folder, loaded, base, target
        self.calibration, self.say = calibration, say
        self.max_drop, self.min_agreement, self.distill_steps = max_drop, min_agreement, distill_steps
        self.mac_counts: dict[Variant, int] = {}

    def path(self, name: str) -> Path:
        return candidate_path(self.folder, name)

    def onnx_dir(self, variant: Variant) -> Any:
        return self.base if variant == Variant(0.0, 0) else self.path(variant.name("onnx"))

    def model(self, variant: Variant, int8: bool) -> Any:
        """The model the bundles of this variant compile (FP32 ONNX, or its INT8 QDQ artifact)."""
        from vitedge.export import export_onnx

        r = variant.tome
        onnx_dir = self.onnx_dir(variant)
        if (r or variant.pruned) and self.loaded.module is None:
            raise InputError(("pruning" if variant.pruned else "token merging") + " needs the PyTorch model; "
                             "the source is an ONNX graph",
                             "optimize the torch source (timm:NAME --weights ..., a vitedge torch artifact)")
        if onnx_dir is not self.base and not usable(onnx_dir):
            from vitedge.prune.pipeline import prune
            from vitedge.prune.plan import PrunePlan

            model = self.pruned(variant) if variant.pruned else self.loaded
            if r:
                self.say(f"merging {r} tokens per block (ToMe)")
                prune(model, self.path(variant.name("tome")), PrunePlan(tome=r), overwrite=True)
                model = self.path(variant.name("tome"))
            export_onnx(model, onnx_dir, overwrite=True)
        if not int8:
            return onnx_dir
        int8_dir = self.path(variant.name("int8"))
        if not usable(int8_dir):
            from vitedge.quantize.ptq import BudgetMissed, quantize

            self.say(f"quantizing {variant.name('')[:-1]} for {self.target.name} ({self.target.int8_scheme})")
            try:
                quantize(onnx_dir, self.calibration, int8_dir, target=self.target,
                         max_drop=self.max_drop, min_agreement=self.min_agreement, overwrite=True,
                         progress=lambda m: self.say(f"  {m}"))
            except BudgetMissed:
                pass  # the best model quantize found was written; it is measured like the others
        return int8_dir

    def pruned(self, variant: Variant) -> Path:
        """The source pruned as `vitedge prune --data CALIB` would with its default method
        (compensated where the family allows): to 1 - `variant.prune` of the MACs, or as far as
        the budget holds on the calibration images' held-out slice; then `--distill-steps` (the
        held-out data never trains or judges it)."""
        from vitedge.prune.distill import DistillConfig
        from vitedge.prune.pipeline import prune
        from vitedge.prune.plan import PrunePlan

        path = self.path(variant.prefix + "pruned")
        if not usable(path):
            plan = PrunePlan(max_drop=self.max_drop, min_agreement=self.min_agreement) if variant.budget else \
                PrunePlan(target_macs=round(1 - variant.prune, 4))
            self.say("pruning " + ("as far as the budget holds on the calibration images" if variant.budget else
                                   f"{variant.prune:.0%} of the MACs")
                     + (f", distilling {self.distill_steps} steps" if self.distill_steps else ""))
            prune(self.loaded, path, plan, data=self.calibration, distill=DistillConfig(steps=self.distill_steps),
                  overwrite=True, progress=lambda m: self.say(f"  {m}"))
        return path

    def pruned_share(self, variant: Variant) -> float:
        """The share of the MACs pruning removed (what the pruned card measured; 0: not pruned)."""
        from vitedge.artifact import read_card

        path = self.path(variant.prefix + "pruned")
        if not variant.pruned or not usable(path):
            return variant.prune
        share = read_card(path).metrics.get("prune", {}).get("mac_share")
        return round(1 - share, 4) if share else variant.prune

    def macs(self, variant: Variant) -> int:
        """MACs of one image in the float graph of the variant (MatMul/Gemm/Conv, ToMe's matching
        included), counted on the ONNX graph the same way for every variant (once per variant:
        each of its bundles has them)."""
        if variant not in self.mac_counts:
            import onnx

            from vitedge.quantize.qdq import compute_nodes

            onnx_dir = self.onnx_dir(variant)
            path = self.loaded.onnx_path if not isinstance(onnx_dir, Path) else onnx_dir / "model.onnx"
            graph = onnx.load(str(path), load_external_data=False)
            self.mac_counts[variant] = int(sum(n.macs for n in compute_nodes(graph)))
        return self.mac_counts[variant]
