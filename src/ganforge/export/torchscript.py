"""TorchScript export: a traced graph that ``torch.jit.load`` runs without ganforge installed.

The file also carries the contract as ``ganforge.json`` (``torch.jit.load(path, _extra_files=...)``).
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from ganforge.errors import ExportError
from ganforge.export.core import checked_trace, compare_outputs, example_inputs, layer_label, python_calls

EXTRA_FILE = "ganforge.json"


def export_torchscript(graph: nn.Module, contract_json: str = "{}") -> bytes:
    """The traced ``graph`` (eval mode) as ``torch.jit.save`` bytes, checked against PyTorch on another batch size."""
    graph = graph.eval()
    traced = checked_trace(graph, example_inputs(graph, batch=2, seed=0))
    calls = python_calls(traced)
    if calls:
        layer, function = calls[0]
        raise ExportError(
            f"layer {layer_label(graph, layer)} cannot be exported to TorchScript: it calls the Python function "
            f"{function!r} (a torch.autograd.Function), which a TorchScript file cannot hold; use torch operations"
        )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notices
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: contract_json})
        payload = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(payload), map_location="cpu")
    inputs = example_inputs(graph, batch=3, seed=1)
    with torch.no_grad():
        compare_outputs(graph(*inputs), loaded(*inputs), "TorchScript")
    return payload
