"""Typed run configuration: recipes are instances of ``RunConfig``.

Every field has a type and a default; ``apply_overrides`` maps ``section.field=value``
strings (the CLI's ``--set``) onto fields, converting by the field's type, and
``validate`` checks ranges. Unknown keys and bad values raise ``ConfigError``:
nothing is silently ignored. ``to_dict``/``from_dict`` round-trip through JSON,
which is how the resolved config is saved with each run and each checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from ganforge.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "mnist"  # key of ganforge.data.DATASETS
    root: str = "data"  # where the dataset lives (or is downloaded to)
    split: str = "train"  # train | test
    mean: list[float] = field(default_factory=lambda: [0.5])  # per channel, or one for all
    std: list[float] = field(default_factory=lambda: [0.5])
    labels: str = "auto"  # image-folder: none | subfolders | csv; auto = what the dataset has
    label_csv: str = ""  # image-folder: CSV with a `file` column (relative to root if not absolute)
    label_column: str = ""  # image-folder: CSV column used as the class (e.g. hair)
    hflip: bool = False  # random horizontal flips (augmentation)
    in_memory: str = "auto"  # auto | on | off: decode once and batch on the device, or stream
    max_images: int = 0  # use only the first N images (0 = all)
    download: bool = True  # torchvision datasets: download when missing (needs network)
    num_workers: int = 2  # streaming path only


@dataclass
class ModelConfig:
    arch: str = "mlp"  # key of ganforge.models.MODELS
    latent_dim: int = 100
    channels: int = 1
    resolution: int = 28
    num_classes: int = 0  # > 0: class-conditional generator and discriminator
    g_width: int = 64  # ngf of the conv generators
    d_width: int = 64  # ndf of the conv discriminators
    init: str = "default"  # default (PyTorch's) | dcgan (N(0, 0.02) convs, N(1, 0.02) BN)


@dataclass
class LossConfig:
    name: str = "bce"  # key of ganforge.objectives.OBJECTIVES


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int = 0  # stop after this many batches in total (0 = no limit)
    max_time: float = 0.0  # stop after this many minutes of training (0 = no limit)
    batch_size: int = 64
    drop_last: bool = False
    # How the generator step gets its fakes:
    #   same-fake:    D step on G(z).detach(), then G step on D(G(z)) of that same batch
    #   fresh-noise:  D step on G(z1).detach(), then G step on a new z2
    #   simultaneous: one forward; D and G gradients both from it, both stepped
    #   kept-noise:   one noise tensor, redrawn only by the G step; D steps score G of it as it stands
    g_update: str = "same-fake"
    d_every: int = 1  # a D step on batches where batch_index % d_every == 0
    g_every: int = 1  # a G step on batches where batch_index % g_every == 0
    seed: int = 0
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # fp32 | bf16 (autocast, fp32 master weights) | auto: bf16 where this device computes it natively and a short
    # timed probe finds it faster, else fp32 (training/precision.py); resolved once per run, and the run's
    # config.json, checkpoints and exports then hold the resolved value (why: config.json's "runtime" block)
    precision: str = "fp32"
    compile: bool = False  # torch.compile the networks
    # CUDA: deterministic cuDNN/cuBLAS kernels, so a resumed run is bit-identical to an uninterrupted one (on the
    # CPU it always is); off by default because the deterministic kernels can be slower
    deterministic: bool = False
    channels_last: bool = False  # memory format for conv models
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of G for sampling
    sync_batchnorm: bool = False  # distributed runs: BatchNorm statistics over the global batch
    log_every: int = 50  # steps between metrics.jsonl records
    sample_every: int = 1  # epochs between sample grids
    checkpoint_every: int = 10  # epochs between numbered checkpoints (latest is kept every epoch)
    keep_checkpoints: int = 0  # numbered checkpoints kept, newest first (0 = all; each holds G, D and Adam state)
    grid_size: int = 64  # samples in each grid (conditional: grid_columns per class row)
    grid_columns: int = 8
    progress: bool = True  # tqdm bar per epoch


@dataclass
class EvalConfig:
    every: int = 0  # epochs between quality evaluations during training (0 = off)
    every_steps: int = 0  # also every this many training steps, mid-epoch too (0 = off): for long epochs
    metric: str = "fd"  # key of ganforge.metrics.METRICS tracked during training
    extractor: str = "auto"  # key of ganforge.metrics.EXTRACTORS (auto: classifier for the dataset)
    num_samples: int = 2000


@dataclass
class SampleConfig:
    num: int = 64  # images `ganforge generate` draws by default
    top_k: int = 0  # > 0: keep the top_k of `candidates` samples ranked by the discriminator
    candidates: int = 512
    noise_mean: float = 0.0
    noise_std: float = 1.0


@dataclass
class RunConfig:
    recipe: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS = ("data", "model", "loss", "optim", "train", "eval", "sample")
# config.json's record of what the run chose on its machine (kernels, resolved precision, and why): written
# beside the settings, not a setting itself, so ``from_dict`` reads past it
RUNTIME_KEY = "runtime"
CHOICES: dict[str, tuple[str, ...]] = {
    "data.split": ("train", "test"),
    "data.labels": ("auto", "none", "subfolders", "csv"),
    "data.in_memory": ("auto", "on", "off"),
    "model.init": ("default", "dcgan"),
    "train.g_update": ("same-fake", "fresh-noise", "simultaneous", "kept-noise"),
    "train.precision": ("fp32", "bf16", "auto"),
}
POSITIVE = (
    "model.latent_dim",
    "model.channels",
    "model.resolution",
    "model.g_width",
    "model.d_width",
    "optim.lr_g",
    "optim.lr_d",
    "optim.eps",
    "train.batch_size",
    "train.d_every",
    "train.g_every",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.grid_size",
    "train.grid_columns",
    "eval.num_samples",
    "sample.num",
    "sample.candidates",
    "sample.noise_std",
)
NON_NEGATIVE = (
    "model.num_classes",
    "train.epochs",
    "train.max_steps",
    "train.max_time",
    "train.ema_decay",
    "train.keep_checkpoints",
    "data.max_images",
    "data.num_workers",
    "eval.every",
    "eval.every_steps",
    "sample.top_k",
)


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _convert(key: str, text: str, kind: Any) -> Any:
    """Parse the CLI string ``text`` as the field type ``kind``."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if origin is list:
            (item,) = typing.get_args(kind)
            parts = [p for p in text.strip("[]() ").split(",") if p.strip()]
            return [_convert(key, p.strip(), item) for p in parts]
    except ValueError:
        pass
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"--set {key}={text}: expected a value of type {name}")


def get_value(cfg: RunConfig, key: str) -> Any:
    section, name = _split_key(cfg, key)
    return getattr(getattr(cfg, section), name)


def _split_key(cfg: RunConfig, key: str) -> tuple[str, str]:
    sections = SECTIONS
    if "." not in key:
        raise ConfigError(f"unknown config key {key!r}: use section.field, sections: {', '.join(sections)}")
    section, name = key.split(".", 1)
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(sections)}")
    known = [f.name for f in dataclasses.fields(getattr(cfg, section))]
    if name not in known:
        raise ConfigError(f"unknown config key {key!r}; {section} has: {', '.join(known)}")
    return section, name


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set ``section.field`` to an already-typed ``value`` (checked against the field type)."""
    section, name = _split_key(cfg, key)
    target = getattr(cfg, section)
    kind = _field_types(target)[name]
    if isinstance(value, str) and kind is not str:
        value = _convert(key, value, kind)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif not _is_instance(value, kind):
        raise ConfigError(f"{key}={value!r}: expected a value of type {getattr(kind, '__name__', kind)}")
    setattr(target, name, value)


def _is_instance(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> list[str]:
    """Apply ``key=value`` strings in order; returns the keys changed."""
    changed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr_g=2e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        section, name = _split_key(cfg, key)
        kind = _field_types(getattr(cfg, section))[name]
        setattr(getattr(cfg, section), name, _convert(key, text.strip(), kind))
        changed.append(key)
    validate(cfg)
    return changed


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks that need no registry (registries check names when used)."""
    for key, options in CHOICES.items():
        value = get_value(cfg, key)
        if value not in options:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(options)}")
    for key in POSITIVE:
        value = get_value(cfg, key)
        if not value > 0:
            raise ConfigError(f"{key}={value} must be > 0")
    for key in NON_NEGATIVE:
        value = get_value(cfg, key)
        if value < 0:
            raise ConfigError(f"{key}={value} must be >= 0")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={cfg.train.ema_decay} must be in [0, 1)")
    for key in ("optim.beta1", "optim.beta2"):
        if not 0.0 <= get_value(cfg, key) < 1.0:
            raise ConfigError(f"{key}={get_value(cfg, key)} must be in [0, 1)")
    for key in ("data.mean", "data.std"):
        values = get_value(cfg, key)
        if len(values) not in (1, cfg.model.channels):
            raise ConfigError(f"{key} needs 1 or model.channels={cfg.model.channels} values, got {values}")
    if any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"data.std={cfg.data.std} must be > 0")
    if cfg.data.labels == "csv" and not cfg.data.label_column:
        raise ConfigError("data.labels=csv needs data.label_column (e.g. --set data.label_column=hair)")
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """Strict inverse of ``to_dict``: unknown keys and wrong types are errors (a run's ``config.json`` also loads:
    its ``runtime`` record is skipped)."""
    cfg = RunConfig()
    for key, value in raw.items():
        if key == RUNTIME_KEY and isinstance(value, dict):
            continue
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                set_value(cfg, f"{key}.{sub}", subvalue)
        elif key in ("recipe", "description") and isinstance(value, str):
            setattr(cfg, key, value)
        else:
            raise ConfigError(f"unknown or malformed config entry {key!r}")
    return validate(cfg)


def to_json(cfg: RunConfig, runtime: dict[str, Any] | None = None) -> str:
    """The config as JSON; ``runtime``: what the run chose on its machine, kept beside it (``RUNTIME_KEY``)."""
    raw = to_dict(cfg)
    if runtime is not None:
        raw[RUNTIME_KEY] = runtime
    return json.dumps(raw, indent=2, sort_keys=False)


def from_json(text: str) -> RunConfig:
    return from_dict(json.loads(text))
