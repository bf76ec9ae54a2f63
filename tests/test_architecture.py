"""The package's shape: no import circles, dependencies in one direction, every public name right.

The import graph is read from the source with ``ast``: every ``import`` counts, at the top of a
module, inside a function (a lazy import) or under ``if TYPE_CHECKING:``, since each of them is a
dependency a reader must follow. Importing ``a.b.c`` is an edge to ``a.b.c`` only: Python runs the
packages' ``__init__`` on the way, but those only re-export their own modules.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

import lightning_tricks

PACKAGE = Path(lightning_tricks.__file__).resolve().parent

# Dependency direction, top to bottom (README, "Architecture"). A module may import its own layer and
# the layers below it, never one above. `utilities.arguments` imports nothing of ours, so everything
# may use it; the other helpers sit above the math they draw or apply.
LAYERS = [
    ("entry", ["lightning_tricks", "lightning_tricks.__main__", "lightning_tricks.testing"]),
    ("commands", ["lightning_tricks.commands"]),
    ("drivers", ["lightning_tricks.preflight", "lightning_tricks.tuning"]),
    (
        "callbacks",
        [
            "lightning_tricks.callbacks",
            "lightning_tricks.inspection",
            "lightning_tricks.ensembling",
            "lightning_tricks.data",
            "lightning_tricks.models",
            "lightning_tricks.schedules",
        ],
    ),
    ("utilities", ["lightning_tricks.utilities"]),
    ("functional", ["lightning_tricks.functional"]),
    ("arguments", ["lightning_tricks.utilities.arguments"]),
]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (a package's ``__init__`` is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from the source of every module under ``root``."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from . import x` inside `name`
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` imports the module `pkg.mod`; `from mod import name`, the module `mod`.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                # `import a.b.c` of a module: the deepest known module of that dotted path.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a closed path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_closed_path(graph, group) for group in groups]


def _closed_path(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A path ``a -> b -> ... -> a`` inside one cycle group, for the failure message."""
    start, members = group[0], set(group)
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & members)
        back = [d for d in nxt if d == start]
        if back and len(path) > 1:
            return [*path, start]
        step = next((d for d in nxt if d not in seen), None)
        if step is None:
            return [*path, start]
        path.append(step)
        seen.add(step)


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix that names ``module`` (lower index = higher layer)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer of LAYERS: add it there and to the README's Architecture"
    return best


GRAPH = import_graph(PACKAGE, "lightning_tricks")


def test_graph_sees_lazy_and_type_checking_imports() -> None:
    # A lazy import inside a method and one under TYPE_CHECKING: both are dependencies.
    assert "lightning_tricks.functional.bias_init" in GRAPH["lightning_tricks.utilities.protocol"]
    assert "lightning_tricks.inspection.figures" in GRAPH["lightning_tricks.inspection.report"]
    assert "lightning_tricks.callbacks.lr_range_test" in GRAPH["lightning_tricks"]


def test_no_import_circles_in_the_package() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_a_planted_circle_is_found(tmp_path: Path) -> None:
    # The check above can fail: the same code on a package with a circle through a lazy import.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("from pkg import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from .sub.a import f\n    return f\n")
    (pkg / "c.py").write_text("import pkg.b\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.c"] == {"pkg.b"}
    assert find_cycles(graph) == [["pkg.b", "pkg.sub.a", "pkg.b"]]


def test_dependencies_point_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for module, deps in GRAPH.items()
        for dep in sorted(deps)
        if layer_of(dep) < layer_of(module)
    ]
    assert not upward, "imports against the direction commands -> callbacks -> functional:\n" + "\n".join(upward)


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        layer_of(module)


# ------------------------------------------------------------------------------------------ public API
# What each public name must be. Classes by their name; these are functions; `schedules` is a module.
FUNCTIONS = {
    "assert_preflight",
    "inspect_data",
    "log_image",
    "log_scalars",
    "log_table",
    "lr_range_test",
    "run_preflight",
}
MODULES = {"schedules"}


@pytest.mark.parametrize("name", sorted(lightning_tricks.__all__))
def test_public_name_is_the_documented_object(name: str) -> None:
    obj = getattr(lightning_tricks, name)
    namespace: dict = {}
    exec(f"from lightning_tricks import {name} as imported", namespace)  # the README's way
    assert namespace["imported"] is obj
    if name == "__version__":
        assert isinstance(obj, str)
    elif name in MODULES:
        assert isinstance(obj, types.ModuleType) and obj.__name__ == f"lightning_tricks.{name}"
    elif name in FUNCTIONS:
        assert inspect.isfunction(obj), f"lightning_tricks.{name} is {obj!r}, not a function"
    else:
        assert inspect.isclass(obj), f"lightning_tricks.{name} is {obj!r}, not a class"
        assert obj.__name__ == name


def test_public_names_are_all_classified() -> None:
    names = set(lightning_tricks.__all__) - {"__version__"}
    classes = {n for n in names if n[0].isupper()}
    assert names == classes | FUNCTIONS | MODULES


def test_lr_range_test_is_the_function_the_readme_calls() -> None:
    from lightning_tricks import lr_range_test

    assert lr_range_test is importlib.import_module("lightning_tricks.callbacks.lr_range_test").lr_range_test
    assert "model" in inspect.signature(lr_range_test).parameters


def test_every_command_is_a_module_of_commands_with_a_main() -> None:
    from lightning_tricks.commands.cli import COMMANDS

    modules = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "cli"}
    # the run summary that `train` prints (and `tune` reads); how every command ends on a user's mistake;
    # what every command prints (noise filtered) and how its log file gets it; how train names its W&B
    # runs; a multirun's overview; how `train ckpt_path=` continues a run; the report.html every command
    # writes, and what `train` records for its own
    helpers = {"summary", "usage_errors", "console", "wandb_runs", "multirun_overview", "run_log", "resume"}
    helpers |= {"html_report", "run_report"}
    assert {module for module, _ in COMMANDS.values()} == modules - helpers
    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(f"lightning_tricks.commands.{module}").main)
