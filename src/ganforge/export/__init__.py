"""Exports of a trained GAN: ONNX, TorchScript, and the five original scripts' own state-dict format.

    from ganforge.export import export_model, load_reference_state_dict
    export_model("runs/quickstart", "digits.onnx", "onnx")            # + digits.onnx.json, the model card
    load_reference_state_dict("G.pth", generator, "mnist-cgan", "g")  # an original script's weights

Modules: ``core`` (the graphs' contract, checked tracing, parity), ``onnx_export``, ``torchscript``,
``reference`` (key maps to and from the originals), ``card`` (the model card), ``pipeline``
(``export_model``), ``commands`` (the CLI). Importing this package imports no torch; the names below
load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_model": "ganforge.export.pipeline",
    "ExportResult": "ganforge.export.pipeline",
    "FORMATS": "ganforge.export.pipeline",
    "load_reference_state_dict": "ganforge.export.reference",
    "reference_state_dict": "ganforge.export.reference",
    "KEY_RULES": "ganforge.export.reference",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ganforge.export' has no attribute {name!r}")
