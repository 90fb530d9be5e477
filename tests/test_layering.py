"""Imports point one way (DESIGN.md): lower layers never import higher ones; peft and huggingface_hub stay in one
module each."""

import ast
import re
from importlib.util import resolve_name
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "motion_adapter"

# Lower number = lower layer. A module may import only modules of a lower or equal layer.
LAYERS = {
    "errors": 0, "constants": 0, "files": 0, "video": 0,
    "targets": 1, "format": 1,
    "adapter": 2, "hub": 2,
    "pipeline": 3, "testing": 4,
    "training": 5, "toyworld": 6,
    "cli": 7, "__init__": 7,
}
ONLY_IMPORTER = {"peft": "adapter", "huggingface_hub": "hub"}


def _module_key(path: Path) -> str:
    """The layer name of a file: its top-level module or sub-package inside motion_adapter."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(path: Path):
    """Absolute names of everything a file imports (relative imports resolved; `from . import x` gives pkg.x)."""
    package = ".".join(("motion_adapter",) + path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            if node.module is None:
                yield from (f"{module}.{alias.name}" for alias in node.names)
            else:
                yield module


def test_imports_point_down():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        own = _module_key(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ONLY_IMPORTER and ONLY_IMPORTER[top] != own:
                problems.append(f"{path.name} imports {top}: only {ONLY_IMPORTER[top]}.py may")
            if top == "motion_adapter" and "." in name:
                target = name.split(".")[1]
                if target in LAYERS and LAYERS[target] > LAYERS[own]:
                    problems.append(
                        f"{path.relative_to(PACKAGE)} (layer {LAYERS[own]}) imports {target} (layer {LAYERS[target]})"
                    )
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    assert {_module_key(p) for p in PACKAGE.rglob("*.py")} <= set(LAYERS)


def test_the_import_reader_sees_relative_imports():
    names = set(_imports(PACKAGE / "pipeline.py"))
    assert {"motion_adapter.adapter", "motion_adapter.hub", "motion_adapter.targets", "torch"} <= names


def test_every_declared_dependency_is_imported():
    """A requirement nothing imports only slows every install (imageio was one)."""
    from motion_adapter.training.config import tomllib

    import_names = {"pillow": "PIL"}  # distributions whose import name differs
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\s<>=!~;\[]", requirement)[0].lower() for requirement in project["dependencies"]}
    imported = {name.split(".")[0] for path in PACKAGE.rglob("*.py") for name in _imports(path)}
    assert {import_names.get(name, name) for name in declared} <= imported
