"""Import rules (issue 22): no circle inside ``app/ml``, ``app/services`` or ``workers`` (function-level
and ``TYPE_CHECKING`` imports count: a deferred import is still a dependency a reader must follow),
and ``app`` never imports ``workers.unlearning`` (it enqueues by task name)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("app.ml", "app.services", "workers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("app", "workers") for p in (ROOT / top).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # ``from pkg import module``
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def within(floor: str, edges: dict[str, set[str]]) -> dict[str, set[str]]:
    inside = lambda m: m == floor or m.startswith(floor + ".")  # noqa: E731
    return {m: {t for t in ts if inside(t)} for m, ts in edges.items() if inside(m)}


@pytest.mark.parametrize("floor", FLOORS)
def test_no_import_circle_inside(floor: str) -> None:
    found = circles(within(floor, graph()))
    assert found == [], f"import circles inside {floor}: {found}"


def test_app_never_imports_the_unlearning_methods() -> None:
    offenders = {m: sorted(t for t in ts if t.startswith("workers.unlearning"))
                 for m, ts in graph().items() if m.startswith("app")}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_checker_sees_a_circle_through_a_deferred_import(tmp_path: Path) -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from app.ml import train\n")
    assert imports_of(source, "app.ml.m", {"app.ml", "app.ml.train"}) == {"app.ml", "app.ml.train"}
