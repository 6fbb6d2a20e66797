"""The import layers of docs/architecture.md: no module imports from a layer above its own.

Every import counts, also those inside functions, since a lazy import is still a dependency. A new
top-level module must be given a layer here, so its place is decided, not drifted into.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ganforge"

# top-level component of ganforge -> layer (lower layers never import higher ones)
LAYERS = {
    "errors": 0,
    "extras": 0,
    "registry": 0,
    "config": 0,
    "checkpoint": 1,
    "device": 1,
    "rundir": 1,
    "recipes": 1,
    "cliargs": 1,
    "data": 2,
    "models": 2,
    "losses": 2,
    "augment": 2,
    "plots": 2,
    "objectives": 3,
    "sampling": 4,
    "metrics": 4,
    "report": 5,
    "tensorboard": 5,
    "export": 5,
    "training": 6,
    "cli": 7,
    "__main__": 7,
}


def component(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def is_component(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()


def imported_components(path: Path) -> set[str]:
    """The ganforge components ``path`` imports, however it imports them."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "ganforge":  # from ganforge import checkpoint (modules, not attributes)
                names = [f"ganforge.{alias.name}" for alias in node.names if is_component(alias.name)]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ganforge" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_higher_layer(path):
    own = component(path)
    assert own in LAYERS, f"{own} has no layer: add it to LAYERS and docs/architecture.md"
    for other in imported_components(path):
        assert other in LAYERS, f"{path.name} imports ganforge.{other}, which has no layer"
        assert other == own or LAYERS[other] <= LAYERS[own], (
            f"{path.relative_to(PACKAGE)} (layer {LAYERS[own]}, {own}) imports ganforge.{other} (layer {LAYERS[other]})"
        )


def test_the_rules_the_issue_names_are_covered():
    """sampling, metrics, data, models and losses sit below training; nothing but the entry point sits above cli."""
    for name in ("sampling", "metrics", "data", "models", "losses"):
        assert LAYERS[name] < LAYERS["training"]
    assert all(LAYERS[name] < LAYERS["cli"] for name in LAYERS if name not in ("cli", "__main__"))


def test_the_checker_sees_lazy_and_relative_forms(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from ganforge.training.loop import train\n    import ganforge.cli\nfrom ganforge import data\n"
    )
    assert imported_components(source) == {"training", "cli", "data"}
