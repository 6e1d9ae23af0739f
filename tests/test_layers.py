"""The package's shape: no import circles, and stages import only the stages below them.

Imports are read with `ast` (no module is executed): module-level and function-level imports
both count (a deferred import is still a dependency). `if TYPE_CHECKING:` imports count for
circles (a type that needs the module that uses it is a circle a reader must untangle) but not
for layers.
Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` first, so every import also
depends on the parents' *module-level* imports; a parent's function-level imports run only
when called (e.g. `vitedge.live.run`, resolved lazily), so they are not part of that edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitedge"

# Bottom to top: load -> prune -> export -> quantize -> compile -> sessions -> measure -> live -> cli.
# A module may import its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("vitedge.errors", "vitedge.formatting", "vitedge.versions", "vitedge.card", "vitedge.locks", "vitedge.limits", "vitedge.outputs",
     "vitedge.documents", "vitedge.schemas", "vitedge.targets", "vitedge.preprocess",
     "vitedge.artifact", "vitedge.data", "vitedge.drift", "vitedge.machine_load", "vitedge.example_data"),
    ("vitedge.runtime",),
    ("vitedge.models",),
    ("vitedge.prune",),
    ("vitedge.export",),
    ("vitedge.quantize",),
    ("vitedge.compile",),
    ("vitedge.sessions",),
    ("vitedge.evaluate", "vitedge.bench", "vitedge.report", "vitedge.optimize", "vitedge.package"),
    ("vitedge.live",),
    ("vitedge.cli",),
]
# The one import that runs upward, because it is the honest dependency: loading a pruned or
# token-merged artifact needs pruning's rebuild (vitedge/prune/rebuild.py says why).
ALLOWED_UPWARD = {("vitedge.models.load", "vitedge.prune.rebuild")}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, types: bool = False) -> tuple[set[str], set[str]]:
    """(every vitedge module `name` imports, the ones imported at module level); `types`: with
    the ones imported for type checking only."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    every: set[str] = set()
    top: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parts = name.split(".") if is_package else name.split(".")[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]

    def visit(node: ast.AST, depth: int) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not types:
            for child in node.orelse:
                visit(child, depth)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in targets(node):
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target.startswith("vitedge") and target != name:
                    every.add(target)
                    if depth == 0:
                        top.add(target)
        inside = depth + isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), 0)
    return every, top


IMPORTS = {name: _imports(name) for name in MODULES}
TYPED_IMPORTS = {name: _imports(name, types=True) for name in MODULES}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph(imports: dict[str, tuple[set[str], set[str]]] = IMPORTS) -> dict[str, set[str]]:
    """Nodes: every module, plus "P@init" for each package P (what importing a child of P runs)."""
    graph: dict[str, set[str]] = {}
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}

    def with_parents(targets: set[str]) -> set[str]:
        return targets | {f"{p}@init" for t in targets for p in _parents(t)}

    for name, (every, top) in imports.items():
        graph[name] = with_parents(every) | {f"{p}@init" for p in _parents(name)}
        if name in packages:
            graph[f"{name}@init"] = with_parents(top) | {f"{p}@init" for p in _parents(name)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _layer(name: str) -> int | None:
    for number, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return number
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert _cycles(_graph()) == []
    typed = _graph({name: (every, set()) for name, (every, _top) in TYPED_IMPORTS.items()})
    assert _cycles(typed) == [], "a circle through imports for type checking"


def test_every_module_has_a_layer():
    assert [name for name in MODULES if name != "vitedge" and _layer(name) is None] == []


def test_stages_import_only_downward():
    upward = sorted((name, target) for name, (every, _top) in IMPORTS.items() for target in every
                    if name != "vitedge" and target != "vitedge"
                    and (_layer(target) or 0) > (_layer(name) or 0))
    assert set(upward) <= ALLOWED_UPWARD, f"upward imports: {sorted(set(upward) - ALLOWED_UPWARD)}"
    assert len(ALLOWED_UPWARD) <= 1


def test_package_inits_import_nothing_at_load_time():
    """`import vitedge.x.y` must not drag in siblings: parents' __init__ files stay empty of imports."""
    heavy = {name: sorted(IMPORTS[name][1]) for name, path in MODULES.items()
             if path.name == "__init__.py" and IMPORTS[name][1]}
    assert heavy == {}


# Each runtime's library is imported in its backend package only (loader.py beside runner.py);
# `vitedge doctor` asks ONNX Runtime for its providers, and TensorRT 11's FP16 graph is written
# by ONNX Runtime's float16 converter (a graph tool shipped in the onnxruntime wheel).
BACKEND_LIBRARIES = {"onnxruntime": "vitedge.runtime.onnxrt", "openvino": "vitedge.runtime.openvino",
                     "tensorrt": "vitedge.runtime.tensorrt"}
LIBRARY_ELSEWHERE = {("vitedge.versions", "onnxruntime"), ("vitedge.runtime.tensorrt.loader", "onnxruntime")}


def test_each_backend_keeps_its_loader_beside_its_runner():
    for package in BACKEND_LIBRARIES.values():
        assert {f"{package}.loader", f"{package}.runner"} <= set(MODULES), package


def test_runtime_libraries_are_imported_by_their_backend_only():
    outside = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for root in (r.split(".")[0] for r in roots):
                home = BACKEND_LIBRARIES.get(root)
                if home and not (name == home or name.startswith(home + ".")):
                    outside.add((name, root))
    assert outside <= LIBRARY_ELSEWHERE, sorted(outside - LIBRARY_ELSEWHERE)


def test_the_card_is_defined_once():
    """card.json's schema reads the card's own Preprocessing and VitStructure (with their
    constraints), and the working ModelCard has exactly the schema's fields."""
    import dataclasses

    from vitedge.card import ModelCard, Preprocessing, VitStructure
    from vitedge.schemas.card import CardDoc

    fields = CardDoc.model_fields
    assert fields["preprocessing"].annotation is Preprocessing and fields["structure"].annotation is VitStructure
    working = {f.name for f in dataclasses.fields(ModelCard) if f.compare}
    assert working == set(fields) - {"card_version"}
    schemas = (PACKAGE / "schemas").glob("*.py")
    assert not [p.name for p in schemas if "class PreprocessingDoc" in p.read_text() or "class StructureDoc" in p.read_text()]
