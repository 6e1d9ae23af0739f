"""Model commands: inspect (the card), export (ONNX, checked against PyTorch), relabel."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from vitedge.cli.shared import (
    Overwrite,
    Quiet,
    Source,
    Verbose,
    console,
    floats,
    print_warnings,
    styled,
    takes_source_options,
    user_errors,
)
from vitedge.formatting import count

if TYPE_CHECKING:
    from vitedge.models.options import SourceOptions


def _kind(s: Any) -> str:
    """What the model is, in a few words: transformer family and token layout, or a CNN."""
    if not s.is_vit:
        return "no (no attention layers)" if s.token_layout == "none" else "no"
    details = [d for d in (s.family, s.token_layout) if d]
    if s.hierarchical:
        details.append("patch = first stage's stride, embed = first attention stage's width")
    return "yes" + (f" ({', '.join(details)})" if details else "")


def _stages(s: Any) -> str:
    def row(values: list[Any]) -> str:
        return "/".join("-" if v is None else str(v) for v in values)

    text = f"widths {row(s.stage_widths)} · blocks {row(s.stage_depths)}"
    if s.stage_attention is not None:
        text += f" · attention {row(s.stage_attention)}"
    if s.stage_heads is not None and any(s.stage_heads):
        text += f" · heads {row(s.stage_heads)}"
    return text


def render_card(card: Any) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    s, p = card.structure, card.preprocessing
    rows = [
        ("architecture", card.architecture),
        ("format", card.format),
        ("ViT", _kind(s)),
        ("params", count(card.params)),
        ("MACs", count(card.macs, "MAC") + f" at {p.input_size[0]}x{p.input_size[1]}"),
        ("patch / embed / depth / heads",
         " / ".join(str(v) if v is not None else "?" for v in
                    (s.patch_size, s.embed_dim, s.depth, s.num_heads))),
        *([("stages", _stages(s))] if s.stage_widths else []),
        ("MLP hidden", str(s.mlp_hidden) if s.mlp_hidden else "?"),
        ("prefix tokens", f"{s.num_prefix_tokens if s.num_prefix_tokens is not None else '?'}"
                          f" (class token: {s.class_token}, distillation token: {s.distillation_token}, "
                          f"registers: {s.register_tokens})"),
        ("pooling", str(s.global_pool)),
        ("hybrid CNN stem", "yes" if s.hybrid_stem else "no"),
        ("classes", str(card.num_classes) if card.num_classes else "none (features)"),
        ("labels", (", ".join(card.labels[:5]) + (" …" if len(card.labels) > 5 else ""))
         if card.labels else "unknown"),
        ("preprocessing",
         f"{p.resize_mode} {p.input_size[0]}x{p.input_size[1]}, crop {p.crop_pct:g}, "
         f"{p.interpolation}, mean {tuple(round(v, 4) for v in p.mean)}, "
         f"std {tuple(round(v, 4) for v in p.std)}, {p.channel_order}"),
    ]
    metrics = card.metrics
    if "heldout_top1" in metrics:
        rows.append(("held-out top-1", f"{100 * metrics['heldout_top1']:.2f}% "
                                        f"({metrics.get('heldout_images', '?')} images)"))
    if "parity" in metrics:
        parity = metrics["parity"]
        rows.append(("export parity", f"{'passed' if parity['passed'] else 'FAILED'}: max abs "
                                       f"diff {parity['max_abs_diff']:.2e} on {parity['samples']} images"))
    if "quantization" in metrics:
        quant = metrics["quantization"]
        drift = quant["drift"]
        closeness = (f"feature cosine to FP32 {drift['cosine']:.4f}" if drift.get("features") else
                     f"agreement with FP32 {100 * drift['top1_agreement']:.2f}%")
        rows.append(("INT8", f"{100 * quant['int8_linear_mac_share']:.0f}% of Linear/Conv MACs; "
                             f"{closeness} on {drift['samples']} samples"
                             + ("" if drift.get("features") else f", KL {drift['kl']:.4f}")
                             + f"; budget {'met' if quant['budget']['met'] else 'MISSED'}"))
    for key, value in rows:
        table.add_row(key, value)
    return table



@takes_source_options()
def inspect(source: Source,            as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
            verbose: Verbose = False, *, options: SourceOptions) -> None:
    """Load a model and print its card: structure, size, MACs, preprocessing, labels.

    Example: vitedge inspect timm:deit_tiny_patch16_224 --weights deit_tiny.safetensors
    """
    from vitedge.models.load import load

    with user_errors(verbose):
        loaded = load(source, **options.kwargs())
    if as_json:
        typer.echo(loaded.card.to_json(), nl=False)
        return
    console.print(render_card(loaded.card))
    print_warnings(loaded.card.warnings)


@takes_source_options()
def export(source: Source,
           out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
           opset: Annotated[int, typer.Option(min=17, help="ONNX opset (>= 17 keeps LayerNorm one node).")] = 18,
           dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension.")] = True,
           simplify: Annotated[bool, typer.Option(help="Simplify the graph with onnxslim.")] = True,
           data: Annotated[Optional[str], typer.Option(
               help="Images for the parity check (folder, ImageFolder or glob); default: shipped samples.")] = None,
           parity_samples: Annotated[int, typer.Option(min=1, max=100_000, help="How many images the parity check uses.")] = 16,
           atol: Annotated[float, typer.Option(callback=floats(0), help="Parity absolute tolerance on logits.")] = 1e-3,
           rtol: Annotated[float, typer.Option(callback=floats(0), help="Parity relative tolerance on logits.")] = 1e-3,
           overwrite: Overwrite = False, quiet: Quiet = False,
           verbose: Verbose = False, *, options: SourceOptions) -> None:
    """Export to ONNX (opset >= 17, dynamic batch, onnxslim) and check it against PyTorch.

    Example: vitedge export builtin:digits-vit -o artifacts/digits-onnx
    """
    from vitedge.export import export_onnx

    with user_errors(verbose):
        result = export_onnx(source, out, opset=opset, dynamic_batch=dynamic_batch,
                             simplify=simplify, parity_data=data, parity_samples=parity_samples,
                             atol=atol, rtol=rtol, overwrite=overwrite,
                             options=options)
    parity = result.parity
    if not quiet:
        print_warnings(result.card.warnings)
        fused = (result.card.lineage[-1].get("params") or {}).get("reparameterized_modules") if result.card.lineage else None
        if fused:
            console.print(f"fused {fused} re-parameterizable module(s) for inference first (timm's "
                          "reparameterize_model); parity compares with the unfused model", highlight=False)
        agreement = "n/a" if parity.top1_agreement is None else f"{100 * parity.top1_agreement:.1f}%"
        console.print(styled("parity passed", "green",
            f"on {parity.samples} images ({parity.data}): max abs diff "
            f"{parity.max_abs_diff:.2e}, max rel diff {parity.max_rel_diff:.2e}, top-1 agreement "
            f"{agreement} (atol {parity.atol:g}, rtol {parity.rtol:g})"))
    batch = "dynamic" if result.card.source["onnx"]["dynamic_batch"] else "fixed"
    console.print(f"wrote {result.out_dir}/model.onnx (opset {opset}, {batch} batch, "
                  f"{result.exporter} exporter) in {result.seconds:.1f} s", highlight=False)


def relabel(source: Annotated[Path, typer.Argument(help="An artifact or bundle folder.")],
            labels: Annotated[Path, typer.Option(exists=True, dir_okay=False,
                                                 help="Class names: a text file (one per line) or a JSON list.")],
            out: Annotated[Path, typer.Option("--out", "-o", help="The new artifact folder.")],
            overwrite: Overwrite = False,
            verbose: Verbose = False) -> None:
    """Write a copy of an artifact or bundle with other class names (a new sealed card).

    Cards are sealed, so editing labels by hand is refused; this records the change in the lineage.
    Example: vitedge relabel artifacts/digits-onnx --labels names.txt -o artifacts/digits-named
    """
    from vitedge.artifact import relabel as run_relabel

    with user_errors(verbose):
        card = run_relabel(source, labels, out, overwrite=overwrite)
    shown = ", ".join(card.labels[:5]) + (" …" if len(card.labels or []) > 5 else "")
    console.print(f"wrote {out} ({card.format}) with labels {shown}")
