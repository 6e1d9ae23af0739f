"""`vitedge prune`: compensated structured pruning (optionally distilled), and/or token merging."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from vitedge.cli.shared import (
    Overwrite,
    Quiet,
    Verbose,
    console,
    err_console,
    floats,
    progress_printer,
    takes_source_options,
    user_errors,
)
from vitedge.prune.plan import Allocation, Device, Importance, Method

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions


@takes_source_options()
def prune(
    source: Annotated[str, typer.Argument(help="A ViT: timm:NAME -w CKPT, torchvision:NAME -w CKPT, a Hugging Face ViT/DeiT folder, builtin:digits-vit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    heads: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of attention heads to remove per block.")] = 0.0,
    mlp: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of MLP hidden units to remove.")] = 0.0,
    embed: Annotated[float, typer.Option(callback=floats(0, 1, high_open=True), help="Share of the embedding width to remove.")] = 0.0,
    target_macs: Annotated[Optional[float], typer.Option(callback=floats(0, 1, low_open=True, high_open=True),
        help="Instead of ratios: keep this share of MACs (heads and MLP pruned equally).")] = None,
    method: Annotated[Method, typer.Option(
        help="compensate: choose heads and MLP units from --data's statistics and refit the next layer so the "
             "rest stands in for them (no labels); plain: Torch-Pruning drops the units --importance ranks lowest; "
             "auto: compensate when --data is given (and no --embed / --importance), else plain.")] = Method.AUTO,
    max_drop: Annotated[Optional[float], typer.Option(callback=floats(0, 100),
        help="Instead of a cut: the largest MAC cut whose top-1 (labeled --data) or agreement with the original "
             "(cosine for feature models) drops at most this many points on the held-out images, e.g. 1.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(callback=floats(0, 1, low_open=True),
        help="Instead of a cut (or with --max-drop): the largest MAC cut keeping this top-1 agreement with the "
             "original (cosine for feature models) on the held-out images, e.g. 0.95.")] = None,
    importance: Annotated[Optional[Importance], typer.Option(
        help="How --method plain ranks units: taylor (needs --data; the default with it) or l2.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Unlabeled (or labeled) images for importance, distillation and metrics.")] = None,
    distill_steps: Annotated[int, typer.Option(min=0, max=10_000_000, help="Distillation steps from the original after pruning.")] = 0,
    tome: Annotated[int, typer.Option(min=0, help="Token merging: tokens merged per block (training-free).")] = 0,
    tome_from: Annotated[Optional[int], typer.Option(min=0,
        help="First block that merges (from 0; default: a sixth of the depth, 2 of 12).")] = None,
    round_to: Annotated[int, typer.Option(min=1, help="Round kept widths to a multiple of this.")] = 8,
    allocation: Annotated[Allocation, typer.Option(
        help="uniform: every block loses the same share; global: heads and MLP units ranked across blocks (timm).")] = Allocation.UNIFORM,
    samples: Annotated[Optional[int], typer.Option(min=1, help="Use a seeded subset of --data.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=65_536, help="Distillation batch size.")] = 32,
    lr: Annotated[float, typer.Option(callback=floats(0, 10, low_open=True), help="Distillation peak learning rate.")] = 5e-4,
    distill_features: Annotated[float, typer.Option(callback=floats(0, 1e6),
        help="Weight of a token-feature term (MSE of the final-norm tokens) next to the logit KL; 0 = logits only.")] = 0.0,
    distill_blocks: Annotated[float, typer.Option(callback=floats(0, 1e6),
        help="Block-wise recovery: weight of every block's output tokens matched to the original's (the embedding "
             "width must be kept); images are also blended pairwise and early stopping follows the held-out KL. "
             "E.g. --distill-steps 300 --lr 1e-5 --distill-blocks 1.")] = 0.0,
    mirror: Annotated[bool, typer.Option(
        help="Compensation's statistics also from the --data images mirrored left-right (twice the tokens); "
             "--no-mirror where a mirror image is not an image of your domain (text, digits, dials).")] = True,
    device: Annotated[Device, typer.Option(
        help="Where statistics, compensation and distillation run: auto picks cuda when PyTorch sees a GPU; "
             "the card records where it ran.")] = Device.AUTO,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    *, options: SourceOptions,
) -> None:
    """Structured pruning (heads, MLP units) compensated from unlabeled images, or token merging.

    Example: vitedge prune builtin:digits-vit --target-macs 0.7 --data calibration/digits/train
    -o demo-out/digits-pruned

    Within a budget: vitedge prune SRC --data IMAGES --max-drop 1 -o OUT
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from vitedge.prune.distill import DistillConfig
    from vitedge.prune.pipeline import prune as run_prune
    from vitedge.prune.plan import PrunePlan, PruneRatios

    with user_errors(verbose), Progress(TextColumn("distilling"), BarColumn(), TextColumn("{task.description}"),
                                        TimeRemainingColumn(), console=err_console, disable=quiet,
                                        transient=True) as bar:
        task = bar.add_task("", total=max(distill_steps, 1))

        def tick(step: int, total: int, agreement: float | None) -> None:
            bar.update(task, completed=step, description=f"agreement {100 * (agreement or 0):.1f}%")

        plan = PrunePlan(ratios=PruneRatios(heads=heads, mlp=mlp, embed=embed), target_macs=target_macs,
                         max_drop=max_drop, min_agreement=min_agreement, importance=importance, method=method,
                         allocation=allocation, round_to=round_to, tome=tome, tome_from=tome_from, mirror=mirror)
        metrics = run_prune(source, out, plan, data=data, samples=samples,
                            distill=DistillConfig(steps=distill_steps, batch_size=batch_size, lr=lr,
                                                  features=distill_features, blocks=distill_blocks,
                                                  mixup=distill_blocks > 0,
                                                  criterion="kl" if distill_blocks > 0 else "agreement"),
                            options=options, device=device,
                            overwrite=overwrite, progress=progress_printer(quiet), tick=tick)
    print_summary(metrics, out)


def print_summary(metrics: dict[str, Any], out: Path) -> None:
    from vitedge.prune.plan import PRUNE_STAGES

    lines = [f"MACs {metrics['macs_before'] / 1e6:.1f} M -> {metrics['macs_after'] / 1e6:.1f} M "
             f"({100 * metrics['mac_share']:.0f}%), parameters {metrics['params_before'] / 1e6:.2f} M -> "
             f"{metrics['params_after'] / 1e6:.2f} M"]
    if "structure" in metrics:
        after = metrics["structure"]["after"]
        lines.append(f"kept: embed {after['embed_dim']}, heads per block {after['num_heads']}, "
                     f"MLP widths {after['mlp_hidden']}")
    for key, title in PRUNE_STAGES:
        if key in metrics:
            m = metrics[key]
            closeness = (f"feature cosine {m['cosine']:.4f}, relative error {m['rel_error']:.4f}"
                         if m.get("features") else f"agreement {100 * m['top1_agreement']:.2f}%")
            lines.append(f"{title}: {closeness} on {m['samples']} held-out"
                         + (f", top-1 {100 * m['top1_original']:.2f}% -> {100 * m['top1_pruned']:.2f}%"
                            if "top1_pruned" in m else ""))
    if metrics.get("device", "cpu") != "cpu":
        lines.append(f"ran on {metrics['device']}")
    if "tome" in metrics:
        info = metrics["tome"]
        lines.append(f"token merging: {info['tokens_in']} -> {info['tokens_out']} tokens ({info['schedule']})")
    console.print("\n".join(lines) + f"\nwrote {out}", highlight=False)
