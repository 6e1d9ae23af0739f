"""What `vitedge prune` removes, and how units are ranked: light (no torch), the CLI takes it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from vitedge.errors import InputError


class Importance(StrEnum):
    """How units are ranked: Taylor (gradient x weight, needs images) or L2 magnitude."""

    TAYLOR = "taylor"
    L2 = "l2"


class Method(StrEnum):
    """compensate: units chosen from calibration statistics and folded into the next layer (needs
    --data, keeps the embedding width); plain: Torch-Pruning removes the units --importance ranks
    lowest; auto: compensate where it can, plain otherwise."""

    AUTO = "auto"
    COMPENSATE = "compensate"
    PLAIN = "plain"


class Device(StrEnum):
    """Where statistics, compensation and distillation run: cuda when PyTorch sees a GPU (auto)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Allocation(StrEnum):
    """uniform: every block loses the same share; global: units ranked across blocks (timm)."""

    UNIFORM = "uniform"
    GLOBAL = "global"


E = TypeVar("E", bound=StrEnum)


def choice(enum: type[E], value: E | str, flag: str) -> E:
    """`value` as a member of `enum`, or a one-line refusal naming `flag` and the choices."""
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"{flag} {str(value)!r} is not one of {', '.join(e.value for e in enum)}") from None


@dataclass(frozen=True)
class PruneRatios:
    heads: float = 0.0  # share of attention heads removed per block (whole heads)
    mlp: float = 0.0  # share of MLP hidden units removed
    embed: float = 0.0  # share of the embedding width removed (whole model)

    def check(self) -> None:
        for name, value in (("--heads", self.heads), ("--mlp", self.mlp), ("--embed", self.embed)):
            if not 0.0 <= value < 1.0:
                raise InputError(f"{name} {value} is outside [0, 1)",
                                 "give the share to remove, e.g. 0.25 removes a quarter")


@dataclass(frozen=True)
class PrunePlan:
    """What to remove: structured ratios (or a MAC target), how units are ranked, token merging."""

    ratios: PruneRatios = field(default_factory=PruneRatios)
    target_macs: float | None = None  # instead of ratios: keep this share of the MACs
    max_drop: float | None = None  # instead: the largest cut within this many points (top-1 or agreement)
    min_agreement: float | None = None  # instead (or with --max-drop): the largest cut keeping this agreement
    importance: Importance | None = None  # default: taylor with data, else l2 (plain pruning)
    method: Method = Method.AUTO
    allocation: Allocation = Allocation.UNIFORM
    round_to: int = 8  # kept widths are multiples of this
    mirror: bool = True  # compensation's statistics also from the images mirrored left-right
    tome: int = 0  # tokens merged per block (training-free)
    tome_from: int | None = None  # first merging block (default: a sixth of the depth)

    @property
    def structured(self) -> bool:
        return any((self.ratios.heads, self.ratios.mlp, self.ratios.embed)) or self.target_macs is not None \
            or self.budgeted

    @property
    def budgeted(self) -> bool:
        return self.max_drop is not None or self.min_agreement is not None

    def resolved(self, has_data: bool) -> PrunePlan:
        """The plan checked, with its default importance and enums filled in; or a one-line refusal."""
        self.ratios.check()
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise InputError(f"--target-macs {self.target_macs} is outside (0, 1)",
                             "give the share of MACs to keep, e.g. 0.6")
        if self.budgeted:
            if self.target_macs is not None or any((self.ratios.heads, self.ratios.mlp, self.ratios.embed)):
                raise InputError("--max-drop / --min-agreement choose the cut themselves: they do not go with "
                                 "--target-macs, --heads, --mlp or --embed", "give either a budget or a cut")
            if not has_data:
                raise InputError("--max-drop / --min-agreement need --data: the cut is judged on held-out images",
                                 "pass --data DIR")
            if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
                raise InputError(f"--max-drop {self.max_drop} is outside [0, 100]", "give points, e.g. 1")
            if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
                raise InputError(f"--min-agreement {self.min_agreement} is outside (0, 1]", "e.g. 0.95")
        if not self.structured and not self.tome:
            raise InputError("nothing to prune: no --heads/--mlp/--embed/--target-macs/--max-drop and no --tome",
                             "e.g. --heads 0.25 --mlp 0.25, or --target-macs 0.6, or --max-drop 1, or --tome 8")
        if self.round_to < 1:
            raise InputError(f"--round-to {self.round_to} must be >= 1")
        method = choice(Method, self.method, "--method")
        if method is Method.AUTO:  # an explicit --importance asks for plain pruning
            method = Method.COMPENSATE if has_data and not self.ratios.embed and self.importance is None \
                else Method.PLAIN
        if method is Method.COMPENSATE and self.structured:
            if not has_data:
                raise InputError("--method compensate needs --data: it chooses units and refits the next "
                                 "layer from the images' statistics", "pass --data DIR, or --method plain")
            if self.ratios.embed:
                raise InputError("--method compensate keeps the embedding width: --embed needs --method plain",
                                 "drop --embed, or pass --method plain")
            if self.importance is not None:
                raise InputError("--importance ranks units for --method plain; compensated pruning ranks them "
                                 "by the error left after compensation", "drop --importance, or pass --method plain")
        importance = choice(Importance, self.importance or ("taylor" if has_data else "l2"), "--importance")
        if importance is Importance.TAYLOR and not has_data and self.structured:
            raise InputError("--importance taylor needs --data (gradients on images)",
                             "pass --data DIR, or --importance l2")
        return replace(self, importance=importance, method=method,
                       allocation=choice(Allocation, self.allocation, "--allocation"))


# What the prune metrics on a card hold at each stage, and how the CLI and the report name it.
PRUNE_STAGES = (("uncompensated", "the same cut without compensation"), ("before_distill", "after pruning"), ("after_distill", "after distillation"),
                ("final", "with token merging"))
