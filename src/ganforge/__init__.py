"""ganforge: train, evaluate and sample GANs, from the classic recipes up.

    import ganforge
    cfg = ganforge.get_recipe("digits-quick")
    result = ganforge.train(cfg, out="runs/quickstart")
    G = ganforge.load_generator("runs/quickstart")      # a run directory, a checkpoint or generator.safetensors
    images = G.sample(16, seed=0)                       # uint8 [16, C, H, W]

Importing the package touches no GPU and no network, and imports no torch; the public names below load
their modules on first use. User errors are ``ganforge.GanforgeError`` (one-line messages), see
``ganforge.errors``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "train": ("ganforge.training.loop", "train"),
    "TrainResult": ("ganforge.training.loop", "TrainResult"),
    "get_recipe": ("ganforge.recipes", "get_recipe"),
    "RunConfig": ("ganforge.config", "RunConfig"),
    "apply_overrides": ("ganforge.config", "apply_overrides"),
    "load_generator": ("ganforge.sampling", "load_generator"),
    "TrainedGenerator": ("ganforge.sampling", "TrainedGenerator"),
    "GanforgeError": ("ganforge.errors", "GanforgeError"),
    "CheckpointError": ("ganforge.errors", "CheckpointError"),
    "ConfigError": ("ganforge.errors", "ConfigError"),
    "ExportError": ("ganforge.errors", "ExportError"),
    "load_reference_state_dict": ("ganforge.export.reference", "load_reference_state_dict"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ganforge' has no attribute {name!r}")
    import importlib

    module, attr = _PUBLIC[name]
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
