"""``export_model``: one trained run -> one ONNX, TorchScript or reference file, plus its model card."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganforge.checkpoint import atomic_write_bytes, atomic_write_text
from ganforge.errors import CheckpointError, ConfigError
from ganforge.sampling import TrainedGenerator, load_generator

FORMATS = ("onnx", "torchscript", "reference")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "reference"}


@dataclass
class ExportResult:
    path: Path  # the exported file
    card_path: Path  # FILE.json beside it
    readme_path: Path | None  # README.md beside it (with card=True)
    sha256: str
    card: dict[str, Any]


def infer_format(out: Path) -> str:
    """The format an output name implies: .onnx, .pt/.ts (TorchScript) or .pth (reference state dict)."""
    fmt = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {out}: name the format with --format {'|'.join(FORMATS)} (or use .onnx, .pt, .pth)")
    return fmt


def export_model(
    source: str | Path,
    out: str | Path,
    fmt: str,
    which: str = "g",
    raw: bool = False,
    ema: bool = True,
    readme: bool = False,
) -> ExportResult:
    """Export a run directory or checkpoint's generator (``which="g"``, the EMA weights when kept and
    ``ema``) or discriminator (``"d"``) as ``fmt``; write ``out``, ``out`` + ``.json`` (the model card) and,
    with ``readme``, ``README.md`` beside them. Networks are in eval mode (BatchNorm running statistics).
    Raises ``ConfigError``/``CheckpointError``/``ExportError`` (one-line messages); writes nothing then.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if which not in ("g", "d"):
        raise ConfigError(f"--which {which!r}: use g (the generator) or d (the discriminator)")
    if raw and fmt == "reference":
        raise ConfigError("--raw applies to onnx and torchscript; a reference export is the weights themselves")
    card_path = out.with_name(out.name + ".json")
    readme_path = out.parent / "README.md" if readme else None
    _check_targets(out, readme_path)
    generator = load_generator(source, "cpu", ema=ema)
    network = generator.network if which == "g" else generator.discriminator
    if network is None:
        raise CheckpointError(
            f"{generator.source} holds no discriminator (a generator-only export); export from the run directory"
        )
    payload, details = _payload(generator, network, fmt, which, raw)
    atomic_write_bytes(out, payload)
    sha256 = hashlib.sha256(payload).hexdigest()
    from ganforge.export.card import build_card, render_readme

    export = {
        "file": out.name,
        "format": fmt,
        "network": "generator" if which == "g" else "discriminator",
        "weights": generator.weights if which == "g" else "discriminator",
        "raw": raw,
        "sha256": sha256,
        "bytes": len(payload),
        **details,
    }
    card = build_card(generator, export, fmt, which, raw)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    if readme_path is not None:
        atomic_write_text(readme_path, render_readme(card, out.name))
    return ExportResult(out, card_path, readme_path, sha256, card)


def _payload(generator: TrainedGenerator, network, fmt: str, which: str, raw: bool) -> tuple[bytes, dict[str, Any]]:
    """The exported file's bytes and what the card says about how it was made."""
    cfg = generator.config
    if fmt == "reference":
        from ganforge.export.reference import ORIGINAL_SCRIPT, reference_arch, reference_bytes

        arch = reference_arch(cfg.model.arch)
        return reference_bytes(network, arch, which), {
            "original_script": ORIGINAL_SCRIPT[arch],
            "key_names": "original",
        }
    from ganforge.export.card import contract
    from ganforge.export.core import DiscriminatorGraph, GeneratorGraph

    graph_type = GeneratorGraph if which == "g" else DiscriminatorGraph
    graph = graph_type(network, cfg.data.mean, cfg.data.std, raw).eval()
    terms = contract(generator, fmt, which, raw)
    if fmt == "onnx":
        from ganforge.export.onnx_export import OPSET, export_onnx

        metadata = {
            "ganforge_version": _version(),
            "recipe": cfg.recipe,
            "latent_dim": str(generator.latent_dim),
            "num_classes": str(generator.num_classes),
            "noise_mean": str(cfg.sample.noise_mean),
            "noise_std": str(cfg.sample.noise_std),
            "data_mean": json.dumps(list(cfg.data.mean)),
            "data_std": json.dumps(list(cfg.data.std)),
            "contract": json.dumps(terms),
        }
        return export_onnx(graph, metadata), {"opset": OPSET, "exporter": "torch.onnx.export(dynamo=False)"}
    from ganforge.export.torchscript import EXTRA_FILE, export_torchscript

    return export_torchscript(graph, json.dumps(terms)), {"exporter": "torch.jit.trace", "extra_file": EXTRA_FILE}


def _version() -> str:
    import ganforge

    return ganforge.__version__


def _check_targets(out: Path, readme: Path | None) -> None:
    """Refuse (before any work) an output that is a directory, or a README.md that ganforge did not write."""
    from ganforge.export.card import README_MARK

    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {out / 'generator.onnx'}")
    if readme is not None and readme.is_file() and not readme.read_text(errors="replace").startswith(README_MARK):
        raise ConfigError(f"{readme} exists and is not a ganforge model card; export --card into its own directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out.parent} ({exc.strerror}); choose another --out") from None
