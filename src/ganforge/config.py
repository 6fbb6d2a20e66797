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
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ganforge.errors import ConfigError

SEED_LIMIT = 2**63  # seeds are in [0, 2**63): torch's generators take them whole (NumPy's take seed % 2**32)


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
    # image-folder with labels: images that get no class (no CSV row or value, or directly in the root with
    # subfolders) are left out with a warning (drop) or stop the run (error)
    unlabelled: str = "drop"
    hflip: bool = False  # random horizontal flips (augmentation)
    in_memory: str = "auto"  # auto | on | off: decode once and batch on the device, or stream
    max_images: int = 0  # use only the first N images (0 = all)
    download: bool = True  # torchvision datasets: download when missing (needs network)
    num_workers: int = 2  # streaming path only
    # stacked-mnist: how many stacks, and the seed that draws them. The seed is the data's own, not train.seed,
    # so every training seed trains and is scored on the same stacks. 60,000 = one MNIST train split's worth
    # (an epoch as long as MNIST's), 60 stacks of each of the 1,000 modes exactly; 141 MB as uint8
    stacked_size: int = 60000
    stacked_seed: int = 0


@dataclass
class ModelConfig:
    arch: str = "mlp"  # key of ganforge.models.MODELS
    latent_dim: int = 100
    channels: int = 1
    resolution: int = 28
    num_classes: int = 0  # > 0: class-conditional generator and discriminator
    g_width: int = 64  # ngf of the conv generators
    d_width: int = 64  # ndf of the conv discriminators
    init: str = "default"  # default (PyTorch's) | dcgan (N(0, 0.02) convs, N(1, 0.02) BN) | keras (Glorot, zero bias)
    # D ends in a sigmoid that the loss, which reads D's output as a logit, applies again: mnist-mlp-bn's
    # Keras original (from_logits=True on a sigmoid output). Only the MLP discriminators have it.
    d_output_sigmoid: bool = False
    spectral_norm: bool = False  # spectral normalisation of every Conv/Linear/Embedding weight of D (SNGAN)
    # PacGAN (Lin et al. 2018): D scores d_pack images at once, stacked along its input channels, so it can
    # see that G repeats itself (a pair of the same mode is likelier from G than from the data); 1 = plain D
    d_pack: int = 1


@dataclass
class LossConfig:
    name: str = "bce"  # key of ganforge.objectives.OBJECTIVES
    r1_gamma: float = 1.0  # r1 and rpgan: weight gamma of gamma/2 * E||grad_x D(x_real)||^2
    r2_gamma: float = 1.0  # rpgan: the same on the fakes (R3GAN's R1 + R2)
    gp_lambda: float = 10.0  # wgan-gp: weight of the gradient penalty on interpolates
    reg_every: int = 1  # lazy regularisation (StyleGAN2): the penalties every k D steps, weighted k


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
    # every step draws batch_size noise vectors, also for an epoch's short last batch (mnist-mlp-bn's Keras
    # original); off: as many as there are real images
    full_noise_batch: bool = False
    # start from given weights (a ganforge checkpoint or export, or an original script's .pth), with fresh
    # optimisers: fine-tuning a generator trained on a larger, related dataset
    init_g: str = ""
    init_d: str = ""
    ema_rampup: bool = False  # EMA decay (1 + t) / (10 + t) until it reaches ema_decay (early EMAs follow G)
    freeze_d_layers: int = 0  # FreezeD: D's first N blocks keep their (given) weights when fine-tuning
    sync_batchnorm: bool = False  # distributed runs: BatchNorm statistics over the global batch
    log_every: int = 50  # steps between metrics.jsonl records
    sample_every: int = 1  # epochs between sample grids
    checkpoint_every: int = 10  # epochs between numbered checkpoints (latest is kept every epoch)
    keep_checkpoints: int = 0  # numbered checkpoints kept, newest first (0 = all; each holds G, D and Adam state)
    grid_size: int = 64  # samples in each grid (conditional: grid_columns per class row)
    grid_columns: int = 8
    progress: bool = True  # tqdm bar per epoch
    tensorboard: bool = False  # also log to RUN/tensorboard/ (needs the extra: pip install ganforge[tensorboard])
    report: bool = True  # keep RUN/report.html (ganforge report) current while training
    report_every_s: float = 60.0  # rewrite report.html at most this often (seconds); always at the end
    # Divergence guard (ganforge.training.guards.DivergenceGuard), on every logged window: a loss beyond the bound,
    # or D(x) >= 1 - divergence_saturation and D(G(z)) <= divergence_saturation for divergence_windows windows
    # in a row. Losses stay within ~0.1-30 in healthy BCE runs; the lr=1e4 run that diverged without a NaN
    # logged 3e20 with D(x) = 1, D(G(z)) = 0.
    on_divergence: str = "warn"  # warn | stop | off
    divergence_loss_bound: float = 1e4  # |d_loss| or |g_loss| above this (0 = no bound)
    divergence_windows: int = 5  # consecutive saturated windows (0 = no saturation check)
    divergence_saturation: float = 1e-3
    # Collapse alarm (ganforge.training.guards.CollapseAlarm), on evaluations and logged windows:
    #   the tracked metric worse than its best by collapse_factor for collapse_patience evaluations in a row;
    #   a coverage figure (coverage_*, or modes_* / modes_real_*) falling below collapse_coverage after having
    #   reached it, or dropping to below (1 - collapse_coverage_drop) of the previous evaluation's;
    #   D(x) - D(G(z)) >= collapse_gap for collapse_gap_windows logged windows in a row.
    on_collapse: str = "warn"  # warn | stop | rollback (to best.safetensors, lr x rollback_lr_factor) | off
    # "worse by a factor": FD above 3x its best, modes below 1/3 of theirs. Not 2: a plateau's evaluations swing
    # by about +-25% (anime-dcgan's FD: 37-84 over 23 evaluations), so 2x the lowest draw is reached by chance
    collapse_factor: float = 3.0
    collapse_patience: int = 3  # evaluations in a row (0 = no metric trigger)
    collapse_coverage: float = 0.5  # normalised coverage floor (0 = none)
    collapse_coverage_drop: float = 0.5  # share lost between two evaluations that counts as sharp (0 = none)
    collapse_gap: float = 0.9
    collapse_gap_windows: int = 10  # logged windows in a row (0 = no D-gap trigger)
    max_rollbacks: int = 2  # after this many, further collapse alarms only warn
    rollback_lr_factor: float = 0.5  # both learning rates are multiplied by this at each rollback


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
class AugmentConfig:
    # Differentiable augmentation of everything D sees (reals and fakes in the D step, fakes in the G step)
    policy: str = ""  # comma list of ganforge.augment.AUGMENTATIONS: color,translation,cutout ("" = off)
    p: float = 1.0  # probability each op is applied to each sample, when not adaptive (1 = DiffAugment)
    adaptive: bool = False  # ADA: p starts at 0 and follows r_t = E[sign(D(x_real))] toward target (p ignored)
    target: float = 0.6  # ADA's r_t target
    interval: int = 4  # D steps between p updates
    speed_images: int = 500_000  # images over which p can move from 0 to 1


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)


SECTIONS = ("data", "model", "loss", "optim", "train", "eval", "sample", "augment")
# config.json's record of what the run chose on its machine (kernels, resolved precision, and why): written
# beside the settings, not a setting itself, so ``from_dict`` reads past it
RUNTIME_KEY = "runtime"
CHOICES: dict[str, tuple[str, ...]] = {
    "data.split": ("train", "test"),
    "data.labels": ("auto", "none", "subfolders", "csv"),
    "data.in_memory": ("auto", "on", "off"),
    "data.unlabelled": ("drop", "error"),
    "model.init": ("default", "dcgan", "keras"),
    "train.g_update": ("same-fake", "fresh-noise", "simultaneous", "kept-noise"),
    "train.precision": ("fp32", "bf16", "auto"),
    "train.on_divergence": ("warn", "stop", "off"),
    "train.on_collapse": ("warn", "stop", "rollback", "off"),
}
POSITIVE = (
    "model.latent_dim",
    "model.channels",
    "model.resolution",
    "model.g_width",
    "model.d_width",
    "model.d_pack",
    "optim.lr_g",
    "optim.lr_d",
    "optim.eps",
    "loss.reg_every",
    "train.batch_size",
    "train.d_every",
    "train.g_every",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.grid_size",
    "train.grid_columns",
    "train.report_every_s",
    "data.stacked_size",
    "eval.num_samples",
    "sample.num",
    "sample.candidates",
    "sample.noise_std",
    "augment.interval",
    "augment.speed_images",
)
NON_NEGATIVE = (
    "model.num_classes",
    "train.epochs",
    "train.max_steps",
    "train.max_time",
    "train.ema_decay",
    "train.keep_checkpoints",
    "train.freeze_d_layers",
    "train.divergence_loss_bound",
    "train.divergence_windows",
    "train.collapse_patience",
    "train.collapse_gap_windows",
    "train.max_rollbacks",
    "data.max_images",
    "data.num_workers",
    "data.stacked_seed",
    "eval.every",
    "eval.every_steps",
    "sample.top_k",
)

# key -> (low, high, low end open, high end open)
INTERVALS: dict[str, tuple[float, float, bool, bool]] = {
    "train.divergence_saturation": (0.0, 0.5, False, True),
    "train.collapse_coverage": (0.0, 1.0, False, False),
    "train.collapse_coverage_drop": (0.0, 1.0, False, True),
    "train.collapse_gap": (0.0, 1.0, True, False),
    "train.rollback_lr_factor": (0.0, 1.0, True, False),
}


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


def _non_finite(cfg: RunConfig) -> str | None:
    """The first float field (or list item) that is NaN or infinite, as ``key=value``."""
    for section in SECTIONS:
        target = getattr(cfg, section)
        for name, kind in _field_types(target).items():
            value = getattr(target, name)
            values = value if typing.get_origin(kind) is list else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"{section}.{name}={value}"
    return None


def validate(cfg: RunConfig) -> RunConfig:
    """Range and choice checks that need no registry (registries check names when used)."""
    bad = _non_finite(cfg)
    if bad is not None:
        raise ConfigError(f"{bad} must be a finite number")
    if not 0 <= cfg.train.seed < SEED_LIMIT:
        raise ConfigError(f"train.seed={cfg.train.seed} is out of range: give a whole number in [0, 2**63)")
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
    if not 0.0 <= cfg.augment.p <= 1.0:
        raise ConfigError(f"augment.p={cfg.augment.p} must be in [0, 1]")
    if not -1.0 < cfg.augment.target < 1.0:
        raise ConfigError(f"augment.target={cfg.augment.target} must be in (-1, 1): r_t = E[sign(D(x_real))]")
    for key, (low, high, low_open, high_open) in INTERVALS.items():
        value = get_value(cfg, key)
        if not ((low < value if low_open else low <= value) and (value < high if high_open else value <= high)):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ConfigError(f"{key}={value} must be in {interval}")
    if not cfg.train.collapse_factor > 1.0:
        raise ConfigError(f"train.collapse_factor={cfg.train.collapse_factor} must be > 1 (times worse than the best)")
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
    _check_pack(cfg)
    if cfg.data.labels == "csv" and not cfg.data.label_column:
        raise ConfigError("data.labels=csv needs data.label_column (e.g. --set data.label_column=hair)")
    return cfg


def check_d_pack(model: ModelConfig) -> None:
    """A packed D (PacGAN) stacks images along the channels, which leaves no place for a label per image."""
    if model.d_pack > 1 and model.num_classes > 0:
        raise ConfigError(f"model.d_pack={model.d_pack} packs unlabelled images: it needs model.num_classes=0")


def _check_pack(cfg: RunConfig) -> None:
    check_d_pack(cfg.model)
    if cfg.train.batch_size % cfg.model.d_pack:
        raise ConfigError(
            f"model.d_pack={cfg.model.d_pack} needs a batch size divisible by it, not {cfg.train.batch_size}"
        )


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
