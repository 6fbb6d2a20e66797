"""The five original scripts' own weight format, both ways.

ganforge names a layer by where it sits in its module (``net.0.weight``, ``fc.weight``); each original
script names it by its own ``nn.Sequential`` (``0.weight``, ``main.0.weight``), as the plain classes
in ``benchmarks/reference.py`` declare them. ``reference_state_dict`` renames a ganforge network's
state dict to the original's keys (``ganforge export --format reference``); ``load_reference_state_dict``
reads such a ``.pth`` (``torch.load(weights_only=True)``, so nothing in it is executed), renames it
back and loads it, and accepts ganforge's own safetensors files as well.

Layer by layer, per architecture (G, D):
  mlp (mnist-mlp), mlp-bn (mnist-mlp-bn): G ``net.i`` -> ``i``; D ``net.i`` -> ``i+1`` (the
      original's ``nn.Flatten`` is its layer 0). mnist-mlp-bn's original is Keras; its PyTorch
      equivalent in benchmarks/reference.py is the same ``nn.Sequential`` layout.
  conv (mnist-conv): G ``fc`` -> ``0``, ``net.i`` -> ``i+2`` (a View is layer 1); D ``features.i`` -> ``i``,
      ``head.i`` -> ``i+7`` (Flatten is layer 6).
  cdcgan (mnist-cgan): ``net.i`` -> ``main.i`` in both (``CondG`` / ``CondD``).
  dcgan96 (anime-dcgan): ``net.i`` -> ``i`` in both.
The originals end D in a Sigmoid (no weights): their output is the sigmoid of ganforge's logit, or
ganforge's D output itself where the recipe keeps that sigmoid in D (mnist-mlp-bn, model.d_output_sigmoid).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ganforge.errors import CheckpointError, ConfigError

# (ganforge container, original prefix, index offset): ganforge's "<container>.<i>.<rest>" is the
# original's "<prefix><i + offset>.<rest>"; offset None renames the container itself ("fc" -> "0").
Rule = tuple[str, str, int | None]
KEY_RULES: dict[str, dict[str, tuple[Rule, ...]]] = {
    "mlp": {"g": (("net", "", 0),), "d": (("net", "", 1),)},
    "mlp-bn": {"g": (("net", "", 0),), "d": (("net", "", 1),)},
    "conv": {"g": (("fc", "0", None), ("net", "", 2)), "d": (("features", "", 0), ("head", "", 7))},
    "cdcgan": {"g": (("net", "main.", 0),), "d": (("net", "main.", 0),)},
    "dcgan96": {"g": (("net", "", 0),), "d": (("net", "", 0),)},
}
ORIGINAL_SCRIPT = {
    "mlp": "mnist-mlp",
    "mlp-bn": "mnist-mlp-bn",
    "conv": "mnist-conv",
    "cdcgan": "mnist-cgan",
    "dcgan96": "anime-dcgan",
}
WHICH = {"g": "generator", "d": "discriminator"}


def reference_arch(recipe_or_arch: str) -> str:
    """The architecture key of ``KEY_RULES`` for a recipe name (e.g. ``mnist-cgan``) or an arch name (``cdcgan``)."""
    if recipe_or_arch in KEY_RULES:
        return recipe_or_arch
    from ganforge.recipes import RECIPES, get_recipe

    arch = get_recipe(recipe_or_arch).model.arch if recipe_or_arch in RECIPES.names() else recipe_or_arch
    if arch not in KEY_RULES:
        known = ", ".join(f"{a} ({ORIGINAL_SCRIPT[a]})" for a in KEY_RULES)
        what = f"arch {arch}" if arch == recipe_or_arch else f"recipe {recipe_or_arch} (arch {arch})"
        raise ConfigError(f"{what} has no original script to match; the reference format exists for {known}")
    return arch


def _check_which(which: str) -> str:
    if which not in WHICH:
        raise ConfigError(f"which={which!r}: use 'g' (the generator) or 'd' (the discriminator)")
    return which


def _original_module(name: str, rules: tuple[Rule, ...]) -> str | None:
    for container, prefix, offset in rules:
        if offset is None and name == container:
            return prefix
        if offset is not None and name.startswith(container + "."):
            index, _, rest = name[len(container) + 1 :].partition(".")
            if index.isdigit():
                return f"{prefix}{int(index) + offset}" + (f".{rest}" if rest else "")
    return None


def key_map(module: nn.Module, recipe_or_arch: str, which: str) -> dict[str, str]:
    """ganforge state-dict key -> the original script's key, for every tensor of ``module``."""
    arch = reference_arch(recipe_or_arch)
    rules = KEY_RULES[arch][_check_which(which)]
    mapping = {}
    for key in module.state_dict():
        owner, _, tensor = key.rpartition(".")
        original = _original_module(owner, rules)
        if original is None:
            raise ConfigError(
                f"{key} of this {WHICH[which]} has no counterpart in {ORIGINAL_SCRIPT[arch]}'s "
                "original network; is it the recipe's architecture?"
            )
        mapping[key] = f"{original}.{tensor}"
    return mapping


def reference_state_dict(module: nn.Module, recipe_or_arch: str, which: str) -> OrderedDict[str, torch.Tensor]:
    """``module``'s state dict under the original script's key names (CPU tensors, detached copies); a
    spectral-normalised D gives its effective (normalised) weights, as plain ``weight`` tensors."""
    from ganforge.export.core import without_parametrizations

    module = without_parametrizations(module)
    mapping = key_map(module, recipe_or_arch, which)
    state = module.state_dict()
    return OrderedDict((mapping[key], tensor.detach().cpu().clone()) for key, tensor in state.items())


def reference_bytes(module: nn.Module, recipe_or_arch: str, which: str) -> bytes:
    """``torch.save`` of ``reference_state_dict``: a plain dict of tensors, loadable with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(reference_state_dict(module, recipe_or_arch, which), buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- loading
def load_reference_state_dict(
    path: str | Path, module: nn.Module, recipe_or_arch: str, which: str = "g", ema: bool = False
) -> nn.Module:
    """Load weights into ``module`` (a ganforge generator, ``which="g"``, or discriminator, ``"d"``).

    ``path`` may be an original script's ``.pth`` state dict (its own key names, read with
    ``torch.load(weights_only=True)``; a ``module.`` prefix from DataParallel is dropped), the
    ``--format reference`` export of ganforge, a plain safetensors state dict, or a ganforge checkpoint or
    export (``.safetensors``: its ``generator.*`` tensors, ``ema.*`` with ``ema=True`` when present, or
    ``discriminator.*``). ``recipe_or_arch`` names the original whose key names to expect (needed only
    for files in those names). Raises ``CheckpointError`` (one line) for a file that is not a plain state
    dict, or naming the first tensor that does not fit ``module``. Returns ``module``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; pass a .pth state dict or a .safetensors file")
    which = _check_which(which)
    state = _read_state(path, which, ema)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): tensor for key, tensor in state.items()}
    expected = module.state_dict()
    mapping = None  # ganforge -> original key names, when the file uses the original's
    if not set(state) <= set(expected):
        mapping = key_map(module, recipe_or_arch, which)
        original_to_ganforge = {original: key for key, original in mapping.items()}
        state = {original_to_ganforge.get(key, f"<{key}>"): tensor for key, tensor in state.items()}
    _check_fit(path, state, expected, mapping)
    module.load_state_dict(state, strict=True)
    return module


def _read_state(path: Path, which: str, ema: bool) -> dict[str, torch.Tensor]:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then JSON
        return _read_safetensors(path, which, ema)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module, a damaged or foreign file
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
        reason = reason.split(" was not an allowed")[0].removeprefix("WeightsUnpickler error: ") or type(exc).__name__
        raise CheckpointError(
            f"{path} is not a plain state dict: torch.load(weights_only=True) refuses it ({reason}); "
            "save the network's state_dict() instead of the module"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [k for k, v in state.items() if isinstance(v, dict)] if isinstance(state, dict) else []
        hint = f"; it holds dicts under {', '.join(map(repr, inner[:4]))}: save one of them alone" if inner else ""
        raise CheckpointError(f"{path} is not a plain state dict (name -> tensor) but a {type(state).__name__}{hint}")
    return dict(state)


def _read_safetensors(path: Path, which: str, ema: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    from ganforge.checkpoint import FORMAT, load_tensors

    try:
        with safe_open(str(path), framework="pt") as handle:
            is_ganforge = (handle.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is a damaged safetensors file ({exc}); use another file") from None
    if not is_ganforge:
        from safetensors.torch import load_file

        return load_file(str(path))
    tensors, _, kind = load_tensors(path)
    prefix = WHICH[which]
    if which == "g" and ema and any(k.startswith("ema.") for k in tensors):
        prefix = "ema"
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    if not state:
        raise CheckpointError(f"{path} (a ganforge {kind or 'file'}) holds no {WHICH[which]} weights")
    return state


def _check_fit(
    path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], mapping: dict[str, str] | None
) -> None:
    """One line naming the first tensor (in ganforge's order) that is missing, unexpected or of another shape."""
    for key, tensor in expected.items():
        name = key if mapping is None else f"{mapping[key]} (ganforge {key})"
        if key not in state:
            raise CheckpointError(f"{path} does not fit: it has no tensor {name}; is it this recipe's network?")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path} does not fit: {name} is {list(state[key].shape)} in the file but {list(tensor.shape)} "
                "here; use the recipe/config the weights were trained with"
            )
    extra = [key.strip("<>") for key in state if key not in expected]
    if extra:
        raise CheckpointError(f"{path} does not fit: it has a tensor {extra[0]} this network does not have")
