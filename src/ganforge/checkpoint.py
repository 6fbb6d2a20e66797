"""Pickle-free, atomically written checkpoints.

A checkpoint is ONE safetensors file: every tensor (network weights and buffers,
optimiser moments, RNG states, the fixed sampling noise) is a named tensor, and
everything else (config, counters, versions, Python/NumPy RNG state, optimiser
hyper-parameters) is JSON in the safetensors header's metadata. Loading it runs
no code, unlike a pickle, and it does not depend on where our classes live.

Writes go to a temporary file in the same directory, are flushed and fsynced,
then ``os.replace``d over the target (and the directory fsynced), so a crash or
SIGKILL at any instant leaves either the old or the new file, never a torn one.
``atomic_write`` is that mechanism for every file ganforge writes (checkpoints,
caches, plots, logs), not only checkpoints.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ganforge.errors import CheckpointError

FORMAT = "ganforge-checkpoint"
FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"  # temporary files of atomic writes: .NAME.XXXX.tmp beside their target


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path`` appear whole or not at all: ``write(tmp)`` fills a temporary file beside it, which is
    fsynced and renamed over ``path`` (then the directory is fsynced, so the rename is durable too).

    A crash, SIGKILL or full disk at any instant leaves the old file or the new one, never a mix; on any
    failure the temporary file is removed and the error propagates. The one writer every module uses.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], kind: str) -> None:
    """Save named tensors plus JSON ``meta`` as one safetensors file, atomically."""
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "meta": json.dumps(meta),
    }
    # safetensors refuses shared or non-contiguous storage: give each tensor its own contiguous copy on CPU.
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write_bytes(Path(path), st_save(flat, metadata=header))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read a file written by ``save_tensors``: (tensors on CPU, meta, kind). Errors say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .safetensors file")
    payload = path.read_bytes()
    header = _read_header(path, payload)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a ganforge checkpoint (no ganforge header)")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path} has a malformed format_version header") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, newer than this ganforge reads ({FORMAT_VERSION}); "
            "upgrade ganforge (pip install -U ganforge)"
        )
    try:
        tensors = st_load(payload)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); use another checkpoint") from None
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has an unreadable metadata header; use another checkpoint") from None
    return tensors, meta, header.get("kind", "")


def load_meta(path: Path) -> tuple[dict[str, Any], str]:
    """(meta, kind) of a file written by ``save_tensors``, from its header alone (no tensor is read)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            header = json.loads(handle.read(min(length, 100_000_000)))
        fields = header.get("__metadata__", {}) or {}
        return json.loads(fields["meta"]), fields.get("kind", "")
    except (OSError, KeyError, AttributeError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has no readable ganforge header; use another checkpoint") from None


def _read_header(path: Path, payload: bytes) -> dict[str, str]:
    """Parse the safetensors header (8-byte little-endian length, then JSON) without loading tensors."""
    truncated = CheckpointError(f"{path} is truncated or not a checkpoint file; use another checkpoint")
    if len(payload) < 8:
        raise truncated
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > len(payload) - 8 or header_len > 100_000_000:
        raise truncated
    try:
        header = json.loads(payload[8 : 8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise truncated from None
    if not isinstance(header, dict):
        raise truncated
    end = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets", [0, 0]) if isinstance(info, dict) else [0, 0]
        if end + offsets[1] > len(payload):
            raise truncated
    return header.get("__metadata__", {}) or {}


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in a nested dict/list into ``tensors`` under dotted names.

    Returns a JSON-able skeleton in which each tensor is replaced by
    ``{"__tensor__": name}``; ``unflatten_state`` reverses it. Used for optimiser
    state dicts, whose moments are tensors and whose hyper-parameters are numbers.
    """
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[k, flatten_state(f"{prefix}.{k}", v, tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        # keys keep their type (optimiser state is keyed by int parameter index)
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``prefix.*`` tensors into ``module``; a different architecture is a clear error."""
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        detail = (missing or unexpected or mismatched)[:3]
        raise CheckpointError(
            f"{source} holds a {prefix} of another architecture (differs at {', '.join(detail)}); "
            "use the recipe/config it was trained with"
        )
    module.load_state_dict(state)
