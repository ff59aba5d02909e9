"""The house plan, checked from the source with ``ast``: no import circle among speechxfer's
modules (imports inside functions count: a lazy import is still a dependency; ``TYPE_CHECKING``
blocks do not, they never run), and every import runs down through the layers below.

A new module must be placed in ``LAYERS``; it may import only modules of lower layers (and of
its own package, for a package's private parts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import speechxfer

PACKAGE = Path(__file__).resolve().parents[1] / "speechxfer"

# lowest first; a module may import from its own package and from lower layers only
LAYERS: list[tuple[str, ...]] = [
    ("log", "store", "audio", "evaluate", "heads", "versions"),  # no speechxfer imports but audio
    ("data", "augment", "encoders"),
    ("vocab",),
    ("openset",),
    ("recognizer",),  # the contract and load(): imports no system
    ("model", "classic"),
    ("decoder",),  # the combined system holds a CommandClassifier head
    ("ensemble",),  # systems of any kind, opened through recognizer.load
    ("train",),  # every training loop
    ("multitask",),
    ("jobs",),  # one table of strategies -> jobs
    ("stream", "synth", "info", "export", "voiceprint"),
    ("detect",),
    ("streameval", "serve"),
    ("cli",),  # argument parsing only
    ("__main__",),
]
ROOT_MODULE = "speechxfer"  # __init__: the public names, loaded lazily from any layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, source: str | None = None) -> set[str]:
    """speechxfer modules ``path`` imports anywhere (functions included, TYPE_CHECKING not);
    ``source``: the text to read instead of the file's."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT_MODULE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == ROOT_MODULE:
                for alias in node.names:  # ``from . import model`` names a module
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        found.add(sub)
                    elif target == ROOT_MODULE:  # a public name: where the root loads it from
                        home = PUBLIC_HOMES.get(alias.name, "")
                        if home is not None:  # __version__ needs nothing but the root
                            found.add(f"{ROOT_MODULE}.{home}" if home else target)
                    else:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8") if source is None else source))
    found.discard(name)
    return found


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
PUBLIC_HOMES = {**speechxfer._HOMES, "__version__": None}  # None: defined in the root itself


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, top-level unit) of a module: ``speechxfer.decoder.scoring`` -> decoder's."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else ROOT_MODULE
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i, unit
    raise AssertionError(f"{module}: not in any layer of tests/test_architecture.py: add it")


def test_every_module_has_a_layer():
    for module in MODULES - {ROOT_MODULE}:
        layer_of(module)


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt in edges and not state.get(nxt):
                walk(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if not state.get(module):
            walk(module, [module])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_imports_only_run_down_the_layers():
    upward = []
    for module, targets in graph().items():
        if module == ROOT_MODULE:
            continue
        level, unit = layer_of(module)
        for target in targets:
            if target == ROOT_MODULE:
                upward.append(f"{module} imports the package root (import the module instead)")
                continue
            t_level, t_unit = layer_of(target)
            if t_level > level or (t_level == level and t_unit != unit):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run downwards:\n" + "\n".join(sorted(upward))


def test_the_checker_sees_lazy_imports_and_skips_type_checking():
    """The walk must find an import inside a function and ignore a TYPE_CHECKING one."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import cli\n"
              "def f():\n    from .train import fit\n")
    assert imports(PACKAGE / "probe.py", source) == {"speechxfer.train"}
    nested = "def f():\n    from ..jobs import train_job\n    from . import scoring\n"
    assert imports(PACKAGE / "decoder" / "probe.py", nested) == {
        "speechxfer.jobs", "speechxfer.decoder.scoring" if "speechxfer.decoder.scoring" in MODULES
        else "speechxfer.decoder"}
