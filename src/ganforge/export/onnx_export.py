"""ONNX export: opset 17, a dynamic batch axis, checked by ``onnx.checker`` and run by onnxruntime.

Exported with PyTorch's TorchScript-based exporter (``dynamo=False``): it handles every registered
architecture, takes well under a second per model, and needs no onnxscript (the torch.export-based
exporter also handles them all here, measured on torch 2.14, at 3-10x the time). Before anything is
written, the model goes through ``onnx.checker`` and onnxruntime runs it on fresh inputs of another
batch size against PyTorch (``core.compare_outputs``).
"""

from __future__ import annotations

import io
import warnings
from types import ModuleType

import numpy as np
import torch
from torch import nn

from ganforge import extras
from ganforge.errors import ExportError
from ganforge.export.core import (
    DiscriminatorGraph,
    checked_trace,
    compare_outputs,
    example_inputs,
    input_names,
    op_error,
    output_name,
)

OPSET = 17


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """(onnx, onnxruntime), or a one-line ``ExportError`` naming the extra that installs them."""
    onnx, onnxruntime = extras.require("export", "ONNX export", ExportError, load=True)
    return onnx, onnxruntime


def _output_axis(graph: nn.Module) -> str:
    """A PacGAN D gives one logit per pack of images, so its output's batch is a dimension of its own."""
    return "packs" if isinstance(graph, DiscriminatorGraph) and graph.discriminator.pack > 1 else "batch"


def export_onnx(graph: nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX model of ``graph`` (a ``GeneratorGraph`` or ``DiscriminatorGraph`` in eval mode), as bytes.

    Inputs ``z`` [batch, latent_dim] float32 (or ``images``) and, conditional, ``labels`` [batch] int64;
    output ``images`` (or ``logits``). ``metadata`` goes into the model's ``metadata_props``.
    """
    onnx, _ = require_onnx()
    graph = graph.eval()
    inputs = example_inputs(graph, batch=2, seed=0)
    names, output = input_names(graph), output_name(graph)
    traced = checked_trace(graph, inputs)  # names a layer that leaves the graph, which the exporter would hide
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices; tracing was checked above
            torch.onnx.export(
                graph,
                inputs,
                buffer,
                input_names=names,
                output_names=[output],
                opset_version=OPSET,
                dynamic_axes={**{name: {0: "batch"} for name in names}, output: {0: _output_axis(graph)}},
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # an operator without an ONNX form: name the layer that runs it
        raise op_error(graph, traced, "ONNX", exc) from None
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    payload = model.SerializeToString()
    check_with_onnxruntime(payload, graph, batch=3, seed=1)
    return payload


def run_onnxruntime(payload: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model's single output for ``inputs`` (name -> array), on onnxruntime's CPU provider."""
    _, ort = require_onnx()
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def check_with_onnxruntime(payload: bytes, graph: nn.Module, batch: int, seed: int) -> None:
    """onnxruntime and PyTorch must agree on fresh inputs (``compare_outputs``), else ``ExportError``."""
    inputs = example_inputs(graph, batch, seed)
    with torch.no_grad():
        expected = graph(*inputs)
    feeds = {name: tensor.numpy() for name, tensor in zip(input_names(graph), inputs, strict=True)}
    actual = torch.from_numpy(run_onnxruntime(payload, feeds))
    compare_outputs(expected, actual, "ONNX")
