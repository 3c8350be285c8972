"""The rooms of ``src/heartgpt`` import one way (``docs/architecture.md``): read from the source
with ``ast``, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"

# bottom to top: a module may import its own room and the rooms below it
ROOMS = ("ground", "data", "heads", "model", "inference", "training", "commands", "app")
GROUND = {"heartgpt", "heartgpt.errors", "heartgpt.files", "heartgpt.batching", "heartgpt.conf"}
MAX_LINES = 550  # a longer module says why in its docstring ("long because ...")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "heartgpt").rglob("*.py"))}
ENTRY_POINTS = {name for name, path in MODULES.items()
                if name.count(".") == 1 and 'if __name__ == "__main__":' in path.read_text()}


def room_of(module: str) -> str:
    """The room of a heartgpt module: ground, a package of its own, or the commands."""
    if module in GROUND:
        return "ground"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ROOMS:
        return parts[1]
    return "commands"  # heartgpt/<command>.py and cli.py, the single-file tools' shared parser


def _owner(name: str) -> str | None:
    """The heartgpt module that ``name`` (a module or ``module.attribute``) lives in."""
    while name:
        if name in MODULES or name == "heartgpt.conf":
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The heartgpt modules ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found |= {_owner(n) for n in names if n.startswith("heartgpt")} - {None, module}
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_no_room_imports_a_room_above_it():
    upward = [f"{m} ({room_of(m)}) imports {t} ({room_of(t)})"
              for m, targets in GRAPH.items() for t in sorted(targets)
              if ROOMS.index(room_of(t)) > ROOMS.index(room_of(m))]
    assert not upward, "\n".join(upward)


def test_no_entry_point_imports_another():
    crossing = [f"{m} imports {t}" for m in sorted(ENTRY_POINTS) for t in sorted(GRAPH[m])
                if t in ENTRY_POINTS]
    assert {"heartgpt.train", "heartgpt.eval", "heartgpt.predict"} <= ENTRY_POINTS
    assert not crossing, "\n".join(crossing)


def test_errors_imports_no_other_heartgpt_module():
    assert GRAPH["heartgpt.errors"] == set()


def test_no_import_circle():
    """Modules in a circle through package ``__init__`` files count: those re-export lazily."""
    graph = {m: {t for t in targets if t in MODULES and MODULES[t].name != "__init__.py"}
             for m, targets in GRAPH.items() if MODULES[m].name != "__init__.py"}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            pytest.fail(" -> ".join(circle))


def test_the_room_rules_see_a_violation(tmp_path, monkeypatch):
    """The checks above are not vacuous: an upward import and a circle are found."""
    fake = {"heartgpt.data.a": {"heartgpt.training.run"}, "heartgpt.training.run": set()}
    assert [m for m, ts in fake.items() for t in ts
            if ROOMS.index(room_of(t)) > ROOMS.index(room_of(m))] == ["heartgpt.data.a"]
    source = tmp_path / "heartgpt" / "model" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from heartgpt.training.run import train\n")
    monkeypatch.setitem(MODULES, "heartgpt.model.x", source)
    assert imports_of("heartgpt.model.x") == {"heartgpt.training.run"}


def test_modules_are_short_or_say_why():
    long = [f"{m}: {n} lines" for m, p in MODULES.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES
            and "long because" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not long, "\n".join(long)


def test_train_py_is_thin():
    assert len(MODULES["heartgpt.train"].read_text().splitlines()) <= 200
