"""Optional dependencies, in one place: which extra installs what, and the one-line error when it is missing.

Each feature that needs an extra calls :func:`require` before it starts its work, so a missing package is
a clear message naming the ``pip install`` that fixes it, never a traceback half-way and never a silent
fallback. Nothing here imports the optional packages unless asked to.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ganforge.errors import GanforgeError

# extra (as pyproject.toml's [project.optional-dependencies] names it) -> the modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "export": ("onnx", "onnxruntime"),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (found without importing them)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(
    extra: str, purpose: str, error: type[GanforgeError] = GanforgeError, *, load: bool = False
) -> tuple[ModuleType, ...]:
    """Raise ``error`` naming the extra when one of its modules is missing; with ``load``, import and return them."""
    absent = missing(extra)
    if absent:
        raise error(f"{purpose} needs {' and '.join(absent)}, not installed here: pip install 'ganforge[{extra}]'")
    return tuple(importlib.import_module(name) for name in EXTRAS[extra]) if load else ()
