"""Rendering a report: HTML and Markdown pages (every user string escaped), plots as data URIs,
and the checks every reader makes on what a folder recorded."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vitedge.artifact import sha256_file
from vitedge.documents import confined
from vitedge.errors import InputError


@dataclass(frozen=True)
class Thumb:
    """A table cell that shows an image in the HTML page (its `text` in the Markdown)."""

    uri: str
    text: str

    def __str__(self) -> str:
        return self.text


Cell = str | Thumb


@dataclass(frozen=True)
class Sections:
    """What a report shows: rendered as HTML and Markdown, `data` written as its JSON."""

    title: str
    headline: list[tuple[str, str]]
    tables: list[tuple[str, list[str], list[list[Cell]]]]
    plots: list[tuple[str, str | None]]
    gallery: list[tuple[str, str]]
    data: dict[str, Any]


def figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    figure().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_uri(path: Path, max_side: int = 160) -> str | None:
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


T = TypeVar("T")
MATRIX_CLASSES = 20  # more classes than this: the flips as a ranked table instead of a matrix
SHOWN_ROWS = 15  # per-class tables: the worst rows, the rest folded into one


def flips(plt: Any, pairs: list[tuple[str, str]], names: tuple[str, str], caption: str,
          examples: dict[tuple[str, str], Thumb] | None = None
          ) -> tuple[list[tuple[str, list[str], list[list[Cell]]]], list[tuple[str, str | None]]]:
    """The flips of (first, second) top-1 pairs: a ranked table (most frequent first) always, so
    a 1000-class run shows its real flips, and the matrix too when few classes are involved.
    `examples`: an image of a flip, by pair (the frames or images the folder kept), shown in
    its row."""
    counted: dict[tuple[str, str], int] = {}
    for first, second in pairs:
        if first != second:
            counted[first, second] = counted.get((first, second), 0) + 1
    ranked = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = examples is not None and any(pair in examples for pair, _n in ranked)
    extra: Callable[[tuple[str, str]], list[Cell]] = (
        (lambda pair: [examples.get(pair, "")]) if shown and examples is not None else (lambda pair: []))
    rows = folded(ranked, 2 * SHOWN_ROWS, lambda kv: [*kv[0], str(kv[1]), *extra(kv[0])],
                  lambda rest: [f"… {len(rest)} more kinds of flip", "", str(sum(n for _, n in rest)),
                                *([""] if shown else [])])
    header = [*names, "count", *(["example"] if shown else [])]
    tables = [(f"{caption}, most frequent first", header, rows or [["(none)", "", "0"]])]
    classes = {c for pair in pairs for c in pair}
    plots = [(caption, flip_matrix(plt, pairs, " → ".join(names)))] if pairs and len(classes) <= MATRIX_CLASSES \
        else []
    return tables, plots


def folded(items: list[T], limit: int, row: Callable[[T], list[str]],
           rest: Callable[[list[T]], list[str]]) -> list[list[str]]:
    """Table rows for `items` (already sorted, the ones to see first first): the first `limit`,
    then one row summing up the rest (all of them when that would fold a single one)."""
    if len(items) <= limit + 1:
        return [row(item) for item in items]
    return [row(item) for item in items[:limit]] + [rest(items[limit:])]


def flip_matrix(plt: Any, pairs: list[tuple[str, str]], title: str) -> str | None:
    if not pairs:
        return None
    often: dict[str, int] = {}  # the classes of the flips first, then the rest
    for first, second in pairs:
        for c in (first, second):
            often[c] = often.get(c, 0) + (first != second) * 1000 + 1
    classes = sorted(often, key=lambda c: (-often[c], c))[:MATRIX_CLASSES]
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
    return png(fig)


def html_page(sections: Sections) -> str:
    title, headline, tables = sections.title, sections.headline, sections.tables
    plots, gallery = sections.plots, sections.gallery
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;"
             "padding:0 1rem}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem "
             ".6rem;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
             "{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:.75rem}figure{margin:0;max-width:220px}"
             "figcaption{font-size:.8rem}table{display:block;max-width:100%;overflow-x:auto}"
             "td{overflow-wrap:anywhere}img{max-width:100%;height:auto}img.thumb{height:56px;width:auto}"
             "</style></head><body>",
             f"<h1>{html.escape(title)}</h1><table>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline]
    parts.append("</table>")
    if gallery:  # the most useful part first: what the models disagreed on, as it looked
        parts.append("<h2>Where they disagree</h2><div class='grid'>")
        parts += [f"<figure><img src='{uri}' alt='{html.escape(text)}'><figcaption>{html.escape(text)}"
                  "</figcaption></figure>" for uri, text in gallery]
        parts.append("</div>")
    for caption, header, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for caption, uri in plots:
        if uri:
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='{uri}'>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _cell(cell: Cell) -> str:
    if isinstance(cell, Thumb):  # the URI is a data URI vitedge made; the text is escaped
        return (f"<td><img class='thumb' src='{html.escape(cell.uri)}' alt='{html.escape(cell.text)}' "
                f"title='{html.escape(cell.text)}'></td>")
    return f"<td>{html.escape(cell)}</td>"


def markdown_page(sections: Sections) -> str:
    title, headline, tables = sections.title, sections.headline, sections.tables
    e = md_escape
    lines = [f"# {e(title)}", ""] + [f"- {e(k)}: {e(v)}" for k, v in headline] + [""]
    for caption, header, rows in tables:
        lines += [f"## {e(caption)}", "", "| " + " | ".join(map(e, header)) + " |",
                  "|" + " --- |" * len(header)] + ["| " + " | ".join(map(e, r)) + " |" for r in rows] + [""]
    return "\n".join(lines)


def verified(directory: Path, files: dict[str, str], what: str) -> None:
    """Every file the folder's manifest hashed is still the one it hashed."""
    for name, digest in files.items():
        path = confined(directory, name, what=what)
        if path.is_symlink() or not path.is_file() or sha256_file(path) != digest:
            raise InputError(f"{path} was changed or removed after {what} was written",
                             "reports are made from what vitedge recorded; re-run to get a new one")


def jsonl_lines(path: Path, schema: Any) -> list[dict[str, Any]]:
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
