"""What a benchmark records: its tables and notes, printed as it goes and saved with the machine,
the versions and the command as benchmarks/results/<name>.json.

The docs' "Benchmark results" page is generated from those files (scripts/benchmark_pages.py;
tests/test_docs.py fails when the page and the files disagree), so a figure in the docs is the
one a benchmark wrote, with the machine that produced it.

    results = Results("export_parity", "Export parity and start-up time")
    results.table("digits-vit", ["model", "seconds"], [["digits-vit", "2.1"]])
    results.note("...")
    results.save()
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VERSIONS = ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf")


def machine() -> dict[str, Any]:
    """The CPU, its ISA extensions and core count: every benchmark's figures depend on them."""
    from vitedge.versions import cpu_feature_names, cpu_name

    return {"cpu": cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(), "isa": cpu_feature_names()}


def machine_line() -> str:
    """What every benchmark prints first: the CPU and the ISA extensions it ran with."""
    facts = machine()
    return f"machine: {facts['cpu']}, {facts['arch']}, {facts['cores']} cores; ISA: {', '.join(facts['isa'])}"


class Results:
    def __init__(self, name: str, title: str) -> None:
        self.name, self.title = name, title
        self.started = time.perf_counter()
        self.date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        print(machine_line(), flush=True)

    def table(self, caption: str, header: list[str], rows: list[list[Any]]) -> None:
        """Print a Markdown table now and keep it for the results file."""
        cells = [[str(cell) for cell in row] for row in rows]
        print(f"\n### {caption}\n\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header), flush=True)
        for row in cells:
            print("| " + " | ".join(row) + " |", flush=True)
        print(flush=True)
        self.tables.append({"caption": caption, "header": list(header), "rows": cells})

    def note(self, text: str) -> None:
        """A line of findings (a target met or missed, a time, a skip): printed and kept."""
        print(text, flush=True)
        self.notes.append(text)

    def save(self) -> Path:
        from vitedge.versions import package_version

        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        data = {"benchmark": self.name, "title": self.title, "date": self.date,
                "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
                "seconds": round(time.perf_counter() - self.started),
                "machine": machine(), "versions": {name: package_version(name) for name in VERSIONS},
                "tables": self.tables, "notes": self.notes}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"results: {path.relative_to(ROOT)}", flush=True)
        return path
