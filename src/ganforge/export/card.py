"""The model card: what an exported file is, where it came from and how to call it.

``FILE.json`` beside every export (``--card`` adds a short ``README.md``): the recipe and resolved
config; the data's fingerprint and image count; steps, epochs, training time and device; the last and
best quality metrics with their extractor (``metrics.jsonl``'s eval records); the input/output
contract; the ganforge and torch versions; the exported file's sha256.

Training records the data's fingerprint, its image count and the device in every checkpoint
(``meta["data"]``, ``meta["device"]``). For checkpoints written before it did, the card recomputes the
fingerprint from ``data.root`` without decoding or downloading, and says so (or that the data could not
be found).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import ganforge
from ganforge.config import RunConfig, to_dict
from ganforge.errors import GanforgeError
from ganforge.export.onnx_export import require_onnx
from ganforge.rundir import RunDir
from ganforge.sampling import TrainedGenerator

CARD_FORMAT = "ganforge-model-card"
CARD_VERSION = 1
README_MARK = "<!-- ganforge model card -->"  # a README.md without it is the user's: never overwritten


def run_directory(source: Path) -> Path | None:
    """The run directory a checkpoint or export belongs to (``RUN/checkpoints/x`` or ``RUN/generator...``)."""
    for candidate in (source.parent, source.parent.parent):
        if (candidate / "metrics.jsonl").is_file() or (candidate / "config.json").is_file():
            return candidate
    return None


def _read_meta(path: Path) -> dict[str, Any]:
    """A ganforge file's JSON metadata without reading its tensors ({} if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("meta", "{}"))
    except Exception:  # a missing or damaged sibling checkpoint only leaves fields unknown
        return {}


def training_meta(generator: TrainedGenerator) -> dict[str, Any]:
    """The training checkpoint's metadata for the exported weights: the source's own when it is one,
    else (``generator.safetensors``) that of the run's ``latest.safetensors`` (the same end state)."""
    if generator.kind == "training":
        return generator.meta
    run = run_directory(generator.source)
    return _read_meta(RunDir(run).latest) if run is not None else {}


def training_record(generator: TrainedGenerator, train_meta: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    state = train_meta.get("state", {})
    stop = next((r for r in reversed(records) if r.get("kind") == "stop"), {})
    device = train_meta.get("device") or train_meta.get("rng", {}).get("noise_device")
    return {
        "steps": state.get("step", generator.meta.get("step")),
        "epochs_completed": state.get("epoch", generator.meta.get("epoch")),
        "batches_into_next_epoch": state.get("batch_in_epoch"),
        "time_s": state.get("elapsed", stop.get("time_s")),
        "device": device,
        "world_size": train_meta.get("world_size"),
        "precision": generator.config.train.precision,
        "stopped": stop.get("reason"),
        "trained_with": train_meta.get("versions"),
    }


def data_record(cfg: RunConfig, train_meta: dict[str, Any]) -> dict[str, Any]:
    """Dataset, fingerprint (the dataset-cache key) and image count.

    Read from ``train_meta["data"]`` (``{"fingerprint": str, "num_images": int}``) when training recorded
    them; otherwise recomputed from ``data.root`` (hashing the files; nothing decoded, nothing downloaded),
    the count read from the dataset cache; ``None`` with the reason when the data is not there.
    """
    data = cfg.data
    record: dict[str, Any] = {"dataset": data.dataset, "split": data.split, "root": data.root}
    record["max_images"] = data.max_images
    recorded = train_meta.get("data") if isinstance(train_meta.get("data"), dict) else {}
    if recorded.get("fingerprint"):
        return {**record, **recorded, "fingerprint_source": "recorded by training"}
    from ganforge.data import dataset_fingerprint
    from ganforge.data.core import cache_path

    try:
        fingerprint = dataset_fingerprint(
            dataclasses.replace(data, download=False), cfg.model.channels, cfg.model.resolution
        )
    except GanforgeError as exc:
        reason = f"not recorded by training, and not recomputable here: {exc}"
        return {**record, "fingerprint": None, "num_images": None, "fingerprint_source": reason}
    record.update(fingerprint=fingerprint, num_images=None)
    record["fingerprint_source"] = "recomputed at export from data.root (this checkpoint does not record it)"
    cached = cache_path(fingerprint)
    if cached.is_file():
        from safetensors import safe_open

        with safe_open(str(cached), framework="pt") as handle:
            count = handle.get_slice("images").get_shape()[0]
        record["num_images"] = min(count, data.max_images) if data.max_images > 0 else count
    return record


def quality_record(records: list[dict]) -> dict[str, Any]:
    """The last and the best evaluation of the tracked metric, with its extractor."""
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        return {"evaluations": 0, "note": "no quality metric during training (eval.every=0); see `ganforge evaluate`"}
    tracked = evals[-1].get("tracked")
    lower = evals[-1].get("tracked_lower_is_better", True)
    scored = [r for r in evals if isinstance(r.get(tracked), (int, float))]
    best = (min if lower else max)(scored, key=lambda r: r[tracked]) if scored else None
    extractor = "inception" if tracked == "fid" else (tracked or "").rpartition("_")[2] or None

    def metrics_of(record: dict | None) -> dict | None:
        if record is None:
            return None
        skip = {"kind", "tracked", "tracked_lower_is_better"}
        return {k: v for k, v in record.items() if k not in skip}

    return {
        "evaluations": len(evals),
        "tracked": tracked,
        "lower_is_better": lower,
        "extractor": extractor,
        "last": metrics_of(evals[-1]),
        "best": metrics_of(best),
    }


def contract(generator: TrainedGenerator, fmt: str, which: str, raw: bool) -> dict[str, Any]:
    """Inputs and outputs of the exported file: names, dtypes, shapes (batch first, NCHW), ranges."""
    cfg = generator.config
    c, r, k = generator.channels, generator.resolution, generator.num_classes
    labels = {"name": "labels", "dtype": "int64", "shape": ["batch"], "range": [0, k - 1]} if k else None
    pixels = {"dtype": "uint8", "shape": ["batch", c, r, r], "layout": "NCHW", "range": [0, 255]}
    normalised = {
        "dtype": "float32",
        "shape": ["batch", c, r, r],
        "layout": "NCHW",
        "range": [-1.0, 1.0],
        "to_pixels": f"clamp(round((x * std + mean) * 255), 0, 255) with mean {cfg.data.mean}, std {cfg.data.std}",
    }
    if which == "g":
        latent = {
            "name": "z",
            "dtype": "float32",
            "shape": ["batch", generator.latent_dim],
            "distribution": f"normal, mean {cfg.sample.noise_mean}, std {cfg.sample.noise_std}, each element",
            "truncation": "optional: redraw elements with |z - mean| > t * std (fewer odd samples, less variety)",
        }
        inputs = [latent] + ([labels] if labels else [])
        outputs = [{"name": "images", **(normalised if raw else pixels)}]
    else:
        inputs = [{"name": "images", **(normalised if raw else pixels)}] + ([labels] if labels else [])
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch"], "probability_real": "sigmoid(logits)"}]
    if fmt == "reference":
        return {"state_dict": "plain dict of tensors under the original script's key names", "inputs": inputs}
    return {"inputs": inputs, "outputs": outputs, "dynamic_axes": ["batch"]}


def build_card(generator: TrainedGenerator, export: dict[str, Any], fmt: str, which: str, raw: bool) -> dict[str, Any]:
    """The whole card (a JSON-able dict) for an export described by ``export`` (file, sha256, ...)."""
    cfg = generator.config
    run = run_directory(generator.source)
    records = RunDir(run).read_records() if run is not None else []
    train_meta = training_meta(generator)
    versions = {"ganforge": ganforge.__version__, "torch": torch.__version__, "python": platform.python_version()}
    if fmt == "onnx":
        onnx, onnxruntime = require_onnx()
        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export": export,
        "source": {"file": str(generator.source), "kind": generator.kind, "run_directory": str(run) if run else None},
        "recipe": cfg.recipe,
        "description": cfg.description,
        "contract": contract(generator, fmt, which, raw),
        "data": data_record(cfg, train_meta),
        "training": training_record(generator, train_meta, records),
        "quality": quality_record(records),
        "versions": versions,
        "config": to_dict(cfg),
    }


def render_readme(card: dict[str, Any], file_name: str) -> str:
    """A short human-readable README.md for the export (the JSON card holds everything)."""
    export, training, data, quality = card["export"], card["training"], card["data"], card["quality"]
    lines = [
        README_MARK,
        f"# {file_name}: a `{card['recipe']}` {export['network']} exported by ganforge",
        "",
        card["description"],
        "",
        f"- format: {export['format']}" + (f" (opset {export['opset']})" if export.get("opset") else ""),
        f"- weights: {export['weights']}; sha256 `{export['sha256']}`",
        f"- trained: {training['steps']} steps ({training['epochs_completed']} epochs) in {_seconds(training)} "
        f"on {training['device']}",
        f"- data: {data['dataset']} ({data['split']}), {data['num_images']} images, fingerprint {data['fingerprint']}",
    ]
    if quality.get("evaluations"):
        tracked, best, last = quality["tracked"], quality["best"] or {}, quality["last"]
        lines.append(
            f"- quality ({tracked}, extractor {quality['extractor']}): last {_number(last.get(tracked))} after "
            f"{last.get('epoch_progress')} epochs, best {_number(best.get(tracked))} after {best.get('epoch_progress')}"
        )
    else:
        lines.append("- quality: not measured during training")
    lines += ["", "## Inputs and outputs", ""]
    contract_ = card["contract"]
    for item in contract_.get("inputs", []):
        lines.append(f"- input `{item['name']}`: {item['dtype']} {item['shape']}, " + _describe(item))
    for item in contract_.get("outputs", []):
        lines.append(f"- output `{item['name']}`: {item['dtype']} {item['shape']}, " + _describe(item))
    lines += ["", f"Everything else (resolved config, metrics, versions): `{file_name}.json`.", ""]
    return "\n".join(lines)


def _describe(item: dict[str, Any]) -> str:
    keys = ("distribution", "range", "layout", "to_pixels", "probability_real")
    return "; ".join(f"{k.replace('_', ' ')} {item[k]}" for k in keys if k in item)


def _seconds(training: dict[str, Any]) -> str:
    return "unknown time" if training.get("time_s") is None else f"{training['time_s']:.0f} s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
