"""What every export format shares: the graphs' input/output contract, a checked trace that names the
layer that cannot be exported, and the comparison of an export's outputs with PyTorch's.

``GeneratorGraph`` is what an ONNX or TorchScript file computes for G: ``z`` [B, latent_dim] float32
(and ``labels`` [B] int64 when conditional) -> ``images`` [B, C, H, W] uint8, the generator's output
mapped to pixels with the data's mean/std, rounded and clamped inside the graph, exactly as
``ganforge.data.denormalize`` does (``raw=True``: G's float output itself). ``DiscriminatorGraph`` is
the reverse for D: uint8 images (or, raw, normalised floats) -> logits [B].
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

import ganforge.models.base
from ganforge.data.core import channel_stats
from ganforge.errors import ExportError

# The model interface's own checks (z's width, the labels' dtype and shape) compare shapes while tracing;
# for a fixed layout they are constants, so the tracer's warnings about them are expected, not a problem.
_INTERFACE_CHECKS = Path(ganforge.models.base.__file__).resolve()


def without_parametrizations(module: nn.Module) -> nn.Module:
    """``module``, or an eval-mode copy of it whose parametrized weights (spectral norm) are plain tensors.

    In eval mode spectral norm divides each weight by sigma from its stored power-iteration vectors, the
    same value at every forward; baking it in gives the same outputs and a graph without the parametrization
    (whose ``aten::vdot`` has no ONNX form), and the plain ``weight`` keys an original script expects.
    """
    if not any(parametrize.is_parametrized(m) for m in module.modules()):
        return module
    plain = copy.deepcopy(module).eval()
    with torch.no_grad():
        for layer in list(plain.modules()):
            if parametrize.is_parametrized(layer):
                values = {name: getattr(layer, name).detach().clone() for name in layer.parametrizations}
                # not parametrize.remove_parametrizations: it edits the Parametrized* class, which the copy
                # shares with the original module; this changes the copy alone
                layer.__class__ = layer.__class__.__bases__[0]
                del layer._modules["parametrizations"]
                for name, value in values.items():
                    layer.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return plain


class GeneratorGraph(nn.Module):
    """z [B, latent_dim] (+ labels [B] int64) -> uint8 images [B, C, H, W]; ``raw``: G's float output."""

    def __init__(self, generator: nn.Module, mean: Sequence[float], std: Sequence[float], raw: bool) -> None:
        super().__init__()
        self.generator = without_parametrizations(generator)
        self.raw = raw
        channels = generator.channels
        self.register_buffer("mean", channel_stats(mean, channels, "mean").view(1, -1, 1, 1).float())  # [1, C, 1, 1]
        self.register_buffer("std", channel_stats(std, channels, "std").view(1, -1, 1, 1).float())  # [1, C, 1, 1]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.generator(z, labels)  # [B, C, H, W], the data's normalisation
        if self.raw:
            return x
        pixels = (x.float() * self.std + self.mean) * 255.0  # the same arithmetic as data.denormalize
        return pixels.clamp(0.0, 255.0).round().to(torch.uint8)  # [B, C, H, W] uint8


class DiscriminatorGraph(nn.Module):
    """uint8 images [B, C, H, W] (+ labels) -> logits [B]; ``raw``: images already normalised floats."""

    def __init__(self, discriminator: nn.Module, mean: Sequence[float], std: Sequence[float], raw: bool) -> None:
        super().__init__()
        self.discriminator = without_parametrizations(discriminator)
        self.raw = raw
        channels = discriminator.channels
        self.register_buffer("mean", channel_stats(mean, channels, "mean").view(1, -1, 1, 1).float())  # [1, C, 1, 1]
        self.register_buffer("std", channel_stats(std, channels, "std").view(1, -1, 1, 1).float())  # [1, C, 1, 1]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = images if self.raw else (images.float() / 255 - self.mean) / self.std  # [B, C, H, W]
        return self.discriminator(x, labels)  # [B]


def example_inputs(graph: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's contract: noise (or images) for ``batch`` items, plus labels if conditional."""
    rng = torch.Generator().manual_seed(seed)
    if isinstance(graph, GeneratorGraph):
        network = graph.generator
        first = torch.randn(batch, network.latent_dim, generator=rng)  # [B, latent_dim]
    else:
        network = graph.discriminator
        batch *= network.pack  # a PacGAN D takes whole packs: ``batch`` logits
        shape = (batch, network.channels, network.resolution, network.resolution)
        if graph.raw:
            first = torch.randn(*shape, generator=rng).clamp(-1, 1)  # [B, C, H, W] normalised floats
        else:
            first = torch.randint(0, 256, shape, generator=rng, dtype=torch.uint8)  # [B, C, H, W] pixels
    if network.num_classes > 0:
        labels = torch.randint(network.num_classes, (batch,), generator=rng)  # [B] int64
        return first, labels
    return (first,)


def input_names(graph: nn.Module) -> list[str]:
    network = graph.generator if isinstance(graph, GeneratorGraph) else graph.discriminator
    first = "z" if isinstance(graph, GeneratorGraph) else "images"
    return [first, "labels"] if network.num_classes > 0 else [first]


def output_name(graph: nn.Module) -> str:
    return "images" if isinstance(graph, GeneratorGraph) else "logits"


# --------------------------------------------------------------------------------------------- tracing
def layer_label(root: nn.Module, name: str) -> str:
    """``'net.3' (Conv2d)``: a layer as the user's network names it (without the export wrapper's prefix)."""
    modules = dict(root.named_modules())
    module = modules.get(name)
    shown = name.split(".", 1)[1] if "." in name else (name or "<the network itself>")
    return f"'{shown}' ({type(module).__name__})" if module is not None else f"'{shown}'"


@contextmanager
def _module_stack(root: nn.Module) -> Iterator[list[str]]:
    """Track which layer is running: the innermost module's qualified name is the list's last entry."""
    stack: list[str] = []
    handles = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append(name)

        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    for name, module in root.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def checked_trace(graph: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` that refuses to record a graph that would be wrong for other inputs.

    A layer that leaves the tensor graph (a NumPy call, ``.item()``, a data-dependent Python branch)
    makes the tracer warn and bake in a constant; such a warning, or a failure inside a layer, becomes an
    ``ExportError`` naming that layer.
    """
    problems: list[tuple[str, str]] = []
    with _module_stack(graph) as stack, warnings.catch_warnings():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.trace's deprecation notice

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, torch.jit.TracerWarning) and Path(filename).resolve() != _INTERFACE_CHECKS:
                problems.append((stack[-1] if stack else "", f"{str(message).splitlines()[0]} ({filename}:{lineno})"))

        warnings.showwarning = record
        try:
            with torch.no_grad():
                traced = torch.jit.trace(graph, inputs, check_trace=False)
        except Exception as exc:  # any failure inside a layer: name the layer, keep the reason
            where = layer_label(graph, stack[-1]) if stack else "the network"
            raise ExportError(f"layer {where} cannot be traced: {_first_line(exc)}") from None
    if problems:
        name, reason = problems[0]
        raise ExportError(
            f"layer {layer_label(graph, name)} cannot be exported: it computes outside the tensor graph, so the "
            f"export would freeze one input's values ({reason}); write it with torch operations"
        )
    return traced


def _scope_layer(scope: str) -> str:
    """The qualified module name in a traced node's scope, e.g. ``__module.a/__module.a.b`` -> ``a.b``."""
    last = scope.split("/")[-1]
    return last.removeprefix("__module.").removeprefix("__module")


def layers_running(traced: torch.jit.ScriptModule, kind: str) -> list[str]:
    """Qualified names of the layers whose traced nodes have ``kind`` (e.g. ``aten::cummax``)."""
    return [_scope_layer(node.scopeName()) for node in traced.inlined_graph.nodes() if node.kind() == kind]


def python_calls(traced: torch.jit.ScriptModule) -> list[tuple[str, str]]:
    """(layer, function) for every Python call the trace recorded (a ``torch.autograd.Function``)."""
    calls = []
    for node in traced.inlined_graph.nodes():
        if node.kind() == "prim::PythonOp":
            calls.append((_scope_layer(node.scopeName()), node.pyname()))
    return calls


def op_error(graph: nn.Module, traced: torch.jit.ScriptModule, target: str, exc: Exception) -> ExportError:
    """An exporter's failure as one line naming the layer that runs the offending operator (when it says one)."""
    reason = _first_line(exc)
    match = re.search(r"'((?:aten|prim|onnx)::\w+)'", reason)
    layers = layers_running(traced, match.group(1)) if match else []
    if layers:
        return ExportError(f"layer {layer_label(graph, layers[0])} cannot be exported to {target}: {reason}")
    return ExportError(f"the network cannot be exported to {target}: {reason}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= 240 else line[:237] + "..."


# --------------------------------------------------------------------------------------------- parity
def compare_outputs(expected: torch.Tensor, actual: torch.Tensor, target: str) -> None:
    """Refuse an export whose outputs differ from PyTorch's beyond float rounding.

    Float outputs: max |difference| <= 1e-4 (relative to the output's scale when it exceeds 1). uint8
    images: at most 1 level apart, where a value sits at a rounding boundary, on at most 1% of the pixels.
    """
    if tuple(expected.shape) != tuple(actual.shape) or expected.dtype != actual.dtype:
        raise ExportError(
            f"the {target} export gives {actual.dtype} {list(actual.shape)} where PyTorch gives "
            f"{expected.dtype} {list(expected.shape)}"
        )
    if expected.dtype == torch.uint8:
        diff = (expected.int() - actual.int()).abs()
        off = int((diff > 0).sum())
        if int(diff.max()) > 1 or off > 0.01 * diff.numel():
            raise ExportError(
                f"the {target} export does not reproduce PyTorch: {off} of {diff.numel()} pixels differ, by up to "
                f"{int(diff.max())}; a layer may compute outside the tensor graph"
            )
        return
    scale = max(1.0, float(expected.abs().max()))
    worst = float((expected.float() - actual.float()).abs().max())
    if not worst <= 1e-4 * scale:
        raise ExportError(
            f"the {target} export does not reproduce PyTorch: max |difference| {worst:.3g} "
            f"(allowed {1e-4 * scale:.3g}); "
            "a layer may compute outside the tensor graph"
        )
