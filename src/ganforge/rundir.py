"""The run directory: what a training run leaves for the user to look at.

runs/<recipe>-<time>/
  config.json            resolved config (updated when a resume overrides fields)
  metrics.jsonl          one JSON object per line; "kind" is step | epoch | eval | resume | stop
  loss_curves.png        D/G loss, D(x)/D(G(z)) and the quality metric against epoch
  samples/real.png       a grid of real training images
  samples/epoch_NNNN.png samples from a fixed noise (conditional: one row per class)
  checkpoints/latest.safetensors, epoch_NNNN.safetensors, best.safetensors
  generator.safetensors, discriminator.safetensors   weights-only exports at the end
  .lock                  while a process trains into it: that process's PID (see RunLock)

One process at a time writes a run directory: it takes ``RunDir.lock()`` before it reads or
changes anything there, and a second ``train``, ``--resume`` or ``--overwrite`` is refused with the
holder's PID. The lock is an OS file lock (``flock``), which the kernel drops when its process
ends however it ends, so a crash or ``kill -9`` never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ganforge.checkpoint import (
    ATOMIC_TEMP_NAME,
    WRITE_ERRNOS,
    atomic_write_text,
    clean_stale_temporaries,
    write_error,
)
from ganforge.errors import ConfigError, GanforgeError, RunInUseError

LOCK_NAME = ".lock"
_HELD: dict[str, RunLock] = {}  # locks this process holds, by resolved directory


class RunLock:
    """The exclusive OS lock (``flock``) on ``RUN/.lock`` of the one process that writes a run directory.

    ``acquire`` creates the directory if needed and takes the lock without waiting; a live holder makes it
    raise ``RunInUseError`` naming that holder's PID, which the holder wrote into the file. The kernel drops
    the lock when the holder's process ends in any way, so there is no stale lock to clean up. ``release``
    (or leaving the ``with`` block) deletes the file while still holding it, then removes the directory if
    this lock created it and nothing else was written there. A process that opened the file just before it
    was deleted notices (the path no longer names the file it locked) and retries on the new one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders acquire() made, deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        for _ in range(100):  # each retry means a holder released (and deleted) the file we had just opened
            self._created += [p for p in (self.directory, *self.directory.parents) if not p.exists()]
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise GanforgeError(
                    f"cannot write the run directory {self.directory} ({exc.strerror}); choose a writable --out"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
                os.close(fd)
                if holder is None:
                    raise GanforgeError(f"cannot lock the run directory {self.directory} ({exc.strerror})") from None
                raise RunInUseError(
                    f"run directory {self.directory} is in use by another ganforge process ({holder}): "
                    "wait for it to finish or stop it, or choose another --out"
                ) from None
            if _names_file(self.path, fd):
                break
            os.close(fd)
        else:  # pragma: no cover - a hundred releases in a row while we try
            raise GanforgeError(f"cannot lock the run directory {self.directory}: its lock keeps changing")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        _HELD[_key(self.directory)] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.pop(_key(self.directory), None)
        try:
            os.unlink(self.path)  # still locked: whoever opened this file meanwhile sees it is gone and retries
        except OSError:
            pass
        for folder in self._created:  # a run that failed before writing anything leaves nothing behind
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _key(directory: Path) -> str:
    return os.path.realpath(directory)


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (a releasing holder may have deleted it)."""
    try:
        on_disk, opened = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _read_holder(fd: int) -> str:
    """ "PID 1234" (and the host, if not this one) from a lock file; the holder may be writing it right now."""
    text = ""
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            break
        time.sleep(0.01)
    pid, _, host = text.partition(" ")
    if not pid.isdigit():
        return "PID unknown"
    return f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # --- layout -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.safetensors"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def loss_curves(self) -> Path:
        return self.path / "loss_curves.png"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.safetensors"

    def prune_epoch_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` numbered checkpoints (latest and best are not numbered)."""
        numbered = self.checkpoints.glob("epoch_[0-9][0-9][0-9][0-9]*.safetensors")
        numbered = sorted(numbered, key=lambda path: int(path.stem.removeprefix("epoch_")))  # epoch 10000 > 9999
        removed = numbered[:-keep] if keep > 0 else []
        for path in removed:
            path.unlink()
        return removed

    def epoch_samples(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:04d}.png"

    # --- locking ------------------------------------------------------------------------------------
    def lock(self) -> RunLock:
        """Take this run directory for the calling process, first thing, before anything in it is read or
        changed (``--overwrite`` included); held until ``release()`` (or the ``with`` block ends, or the
        process exits). Then removes the temporary files of writers that were killed here. Raises
        ``RunInUseError`` naming the holder's PID if another process has it. Under torchrun only rank 0 calls it.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; choose a directory path")
        lock = RunLock(self.path).acquire()
        self.clean_temporaries()
        return lock

    def locked_by_us(self) -> bool:
        return _key(self.path) in _HELD

    def clean_temporaries(self) -> list[Path]:
        """Remove ``atomic_write``'s leftovers from a killed run; only under the lock (no one else writes here)."""
        if not (self.config.is_file() or self.checkpoints.is_dir()):
            return []  # not (yet) a run directory: leave its files alone
        removed = []
        for folder in (self.path, self.checkpoints, self.samples):
            # only atomic_write's own names (run directories have no safetensors save_file temporaries)
            removed += clean_stale_temporaries(folder, min_age=0, patterns=(ATOMIC_TEMP_NAME,))
        return removed

    # --- creation -----------------------------------------------------------------------------------
    @staticmethod
    def default_path(recipe: str) -> Path:
        return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _entries(self) -> list[Path]:
        """What the directory holds, apart from its lock file."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name != LOCK_NAME)

    def check_new(self, overwrite: bool) -> None:
        """Fail early (before any data is loaded) if ``create`` would refuse."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; choose a directory path")
        if self._entries() and not overwrite:
            raise ConfigError(
                f"run directory {self.path} already exists; continue it with --resume {self.path}, "
                "start over with --overwrite, or choose another --out"
            )
        parent = next((p for p in self.path.parents if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise GanforgeError(
                f"cannot write the run directory {self.path} (no writable parent); choose another --out"
            )

    def create(self, overwrite: bool) -> None:
        """Make a fresh run directory; an existing non-empty one is kept unless ``overwrite``, which empties it
        (all but the lock file, so the lock stays the one that other processes see)."""
        self.check_new(overwrite)
        entries = self._entries()
        if entries and not self.locked_by_us():
            raise RuntimeError(f"RunDir.create(overwrite=True) deletes files: take RunDir({self.path}).lock() first")
        for entry in entries:
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                raise GanforgeError(
                    f"cannot clear {entry} for --overwrite ({exc.strerror}); remove it by hand"
                ) from None
        try:
            self.samples.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise GanforgeError(
                f"cannot write the run directory {self.path} ({exc.strerror}); choose a writable --out"
            ) from None

    # --- metrics.jsonl ------------------------------------------------------------------------------
    def write_config(self, text: str) -> None:
        """config.json, atomically (a run killed mid-write keeps the previous one)."""
        atomic_write_text(self.config, text)

    def append(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (a kill mid-line tears only that line, which ``read_records`` skips)."""
        try:
            with self.metrics.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise write_error(self.metrics, exc.errno, existed=True) from exc
            raise

    def read_records(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (written after the checkpoint we resume from), so
        a resumed run appends its own records instead of duplicating those."""
        kept = [r for r in self.read_records() if r.get("step", 0) <= step or r.get("kind") == "resume"]
        payload = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_text(self.metrics, payload)
