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

import errno
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ganforge.errors import CheckpointError, WriteError

logger = logging.getLogger("ganforge")

FORMAT = "ganforge-checkpoint"
FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"  # temporary files of atomic writes: .NAME.XXXX.tmp beside their target


# OS failures of a write that the user can fix (space, quota, permissions, read-only media, a bad disk):
# reported as one line (WriteError) instead of a traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
# Leftovers of killed writers: atomic_write's (mkstemp: 8 random characters) and those of safetensors' save_file,
# which (0.5+) writes its own temporary file (Rust tempfile: .tmp + 6 characters) and renames it onto ours.
ATOMIC_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX))
SAFETENSORS_TEMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")
STALE_AFTER_S = 600.0  # clean_stale_temporaries' default: a live writer touches its file far more often


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Make ``path`` appear whole or not at all: ``write(tmp)`` fills a temporary file beside it, which is
    fsynced and renamed over ``path`` (then the directory is fsynced, so the rename is durable too).

    A crash, SIGKILL or full disk at any instant leaves the old file or the new one, never a mix; on any
    failure the temporary file is removed and the error propagates. A full disk, quota, read-only or
    permission failure becomes a one-line ``WriteError`` naming the path and the free space (the
    ``OSError`` is its ``__cause__``). The one writer every module uses.
    """
    path = Path(path)
    existed = path.exists()
    try:
        _write_and_replace(path, write)
    except Exception as exc:
        code = os_errno(exc)
        if code in WRITE_ERRNOS:
            raise write_error(path, code, existed) from exc
        raise


def temporary_beside(path: Path) -> Path:
    """A new, empty ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder (the same filesystem, so the rename is atomic)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp_name)


def _write_and_replace(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
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


def os_errno(exc: BaseException) -> int | None:
    """The OS error code behind ``exc``: an ``OSError``'s own, or the "(os error N)" that safetensors' Rust
    writer puts in its ``SafetensorError`` message; None for anything else."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem that holds ``path`` (or would: its nearest existing folder)."""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
    try:
        return shutil.disk_usage(existing if existing is not None else ".").free
    except OSError:
        return None


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def write_error(path: Path, code: int, existed: bool = False) -> WriteError:
    """The one-line error for a failed write of ``path`` with OS error ``code``."""
    free = free_bytes(path)
    where = f"{format_bytes(free)} free there" if free is not None else "free space unknown"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some space or choose another location"
    elif code == errno.EIO:
        fix = "check the disk, or choose another location"
    else:
        fix = "choose a writable location"
    kept = "; the previous file is unchanged" if existed else ""
    message = f"cannot write {path}: {os.strerror(code)} ({where}){kept}; {fix}"
    return WriteError(message, str(path), code, free)


def check_output_space(directory: Path, expected_bytes: int = 0, what: str = "output") -> None:
    """Fail before the work, not after it: ``directory`` (or, if it does not exist yet, the folder that will
    hold it) must be writable, and its filesystem must have ``expected_bytes`` free plus a little headroom.

    Creates nothing that is not already there (a probe file in an existing folder is removed at once).
    Raises a one-line ``WriteError`` naming ``what`` (e.g. "run directory", "dataset cache").
    """
    directory = Path(directory)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise WriteError(
            f"cannot write the {what} {directory}: {existing} is a file, not a folder; choose another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".ganforge-probe.", suffix=TMP_SUFFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        code = exc.errno if exc.errno in WRITE_ERRNOS else errno.EACCES
        raise write_error(directory, code) from exc
    free = free_bytes(existing)
    needed = int(expected_bytes * 1.05) + (16 << 20) if expected_bytes > 0 else 0
    if free is not None and free < needed:
        raise WriteError(
            f"not enough space for the {what} {directory}: it needs about {format_bytes(expected_bytes)}, "
            f"{format_bytes(free)} is free there; free some space or choose another location",
            str(directory),
            errno.ENOSPC,
            free,
        )


def clean_stale_temporaries(
    directory: Path,
    min_age: float = STALE_AFTER_S,
    patterns: tuple[re.Pattern[str], ...] = (ATOMIC_TEMP_NAME, SAFETENSORS_TEMP_NAME),
) -> list[Path]:
    """Delete the temporary files that killed writers left in ``directory`` (not recursive): ``atomic_write``'s
    ``.NAME.XXXXXXXX.tmp`` and safetensors' own ``.tmpXXXXXX``, if last modified ``min_age`` seconds ago or more.

    The age protects a writer in another process that is still at work (its file changes as it writes); use
    ``min_age=0`` only where no one else can be writing, such as a run directory whose lock you hold. Best
    effort: a missing folder, or a file that vanished or cannot be removed, is skipped. Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not any(pattern.fullmatch(entry.name) for pattern in patterns):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    if removed:
        total = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        logger.info("removed %d temporary file(s) left by killed writers in %s: %s", len(removed), directory, total)
    return removed


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


def read_metadata(path: Path) -> tuple[dict[str, Any], str]:
    """(meta, kind) of a ganforge safetensors file from its header alone: no tensor bytes are read, so listing
    a run's 76 MB checkpoints costs a few kilobytes each. Errors as ``load_tensors``'s."""
    path = Path(path)
    truncated = CheckpointError(f"{path} is truncated or not a checkpoint file; use another checkpoint")
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise truncated
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > 100_000_000:
                raise truncated
            header_bytes = handle.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if len(header_bytes) < header_len:
        raise truncated
    try:
        header = json.loads(header_bytes)
        metadata = header.get("__metadata__", {}) or {}
        meta = json.loads(metadata["meta"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        raise truncated from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a ganforge checkpoint (no ganforge header)")
    return meta, metadata.get("kind", "")


load_meta = read_metadata  # the name the training code reads checkpoint headers by


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
