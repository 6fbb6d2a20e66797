"""The "classifier" feature extractor: a small CNN that ganforge trains on the user's labelled data.

Standard FID needs InceptionV3 weights from the internet. A classifier trained here, on the
dataset itself, needs nothing: one to two minutes of CPU. Its penultimate layer (128 features)
feeds FD/KID/precision-recall; its softmax feeds the classifier score, class coverage and
conditional accuracy. It sees what it was trained to tell apart (digit identity, hair colour)
and little else, so its numbers are read against real-vs-real floors, not against published FIDs.

Stored in ``cache_dir()/evaluators`` as ``<dataset>-<key>.safetensors`` (weights) plus a ``.json``
of the same name (dataset, content fingerprint, resolution, channels, class names, held-out
accuracy, architecture, weights hash), keyed by the data fingerprint and the class names.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganforge.errors import ConfigError, GanforgeError
from ganforge.metrics import cache

if TYPE_CHECKING:
    from ganforge.config import DataConfig
    from ganforge.data import ImageData

logger = logging.getLogger("ganforge.metrics")

ARCH = "ganforge-cnn-v1"
MAX_INPUT_SIZE = 32  # hair colour and digit identity survive 32 px; larger inputs cost CPU minutes
MIN_INPUT_SIZE = 8  # two 2x poolings need at least 8 px
WIDTHS = (24, 48, 96)  # conv widths of the three stages: 98.6% on MNIST at half the CPU of 32-64-128
TARGET_SAMPLES = 32_000  # auto epochs: about this many training images seen in total (~1 CPU minute)
EVALUATOR_BYTES = 4 << 20  # room its weights and metadata need in the cache (about 1 MB)
PREPROCESSING = "uint8/127.5-1, luma/repeat channels, bilinear resize (antialias when shrinking); v1"


def progress(message: str) -> None:
    """Default progress output: training an evaluator takes a minute or more, which must not look like a hang
    (inside ``ganforge train`` it happens at the first evaluation), so it goes to stderr, not to a logger that
    may be silent."""
    print(f"ganforge: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- preprocessing


def prepare_images(images: Tensor, size: int, channels: int) -> Tensor:
    """The one resize every extractor input goes through, real and generated alike.

    uint8 [N, C, H, W] -> float32 [N, channels, size, size] in [-1, 1], on ``images``' device.
    Grey -> RGB repeats the channel; RGB -> grey uses ITU-R 601 luma (PIL's ``convert("L")``).
    Bilinear, with antialiasing only when shrinking (upsampling to 299 for InceptionV3 then matches
    pytorch-fid's ``F.interpolate``).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 127.5 - 1.0  # float32 [N, C, H, W]
    c = x.shape[1]
    if c != channels:
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)  # [N, 3, H, W]
        elif c == 3 and channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(dim=1, keepdim=True)  # [N, 1, H, W]
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        shrink = size < min(h, w)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x.contiguous()  # [N, channels, size, size]


def input_size_for(resolution: int) -> int:
    return max(MIN_INPUT_SIZE, min(MAX_INPUT_SIZE, resolution))


# --------------------------------------------------------------------------- network


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class EvaluatorNet(nn.Module):
    """conv x2 - pool - conv x2 - pool - conv - 2x2 pool - fc(128) - fc(classes).

    The 2x2 adaptive pool keeps coarse layout (where the ink or hair is) while making the net work
    at any input size from 8 px up.
    """

    def __init__(
        self, channels: int, num_classes: int, widths: tuple[int, int, int] = WIDTHS, feature_dim: int = 128
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.body = nn.Sequential(
            *_conv(channels, w0), *_conv(w0, w0), nn.MaxPool2d(2),
            *_conv(w0, w1), *_conv(w1, w1), nn.MaxPool2d(2),
            *_conv(w1, w2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * w2, feature_dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x float [N, C, S, S] -> (features [N, feature_dim], logits [N, num_classes])."""
        feats = self.body(x)  # [N, feature_dim]
        return feats, self.head(feats)  # [N, K]


def build_net(arch: dict[str, Any]) -> EvaluatorNet:
    if arch.get("name") != ARCH:
        raise GanforgeError(f"evaluator architecture {arch.get('name')!r} is not {ARCH}; retrain it")
    return EvaluatorNet(arch["channels"], arch["num_classes"], tuple(arch["widths"]), arch["feature_dim"])


# --------------------------------------------------------------------------- metadata


@dataclass
class EvaluatorInfo:
    """What a trained evaluator is, where it is stored, and how well it classifies held-out data."""

    name: str  # result-key name, e.g. "mnist-classifier"
    dataset: str  # e.g. "mnist" (ImageData.name without split or folder prefix)
    source: str  # ImageData.name, e.g. "mnist/test"
    fingerprint: str  # content fingerprint of the data it was trained on
    channels: int
    resolution: int  # of the data it was trained on
    input_size: int  # what images are resized to before the network
    class_names: list[str]
    heldout_accuracy: float
    heldout_balanced_accuracy: float
    majority_baseline: float  # accuracy of always answering the most frequent class
    num_train: int
    num_heldout: int
    epochs: int
    train_seconds: float
    arch: dict[str, Any]
    weights_sha256: str = ""
    preprocessing: str = PREPROCESSING
    created: str = ""
    label_source: str = ""  # e.g. "csv column hair" when known
    path: str = ""  # the weights file (not stored in the JSON itself)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, indent=2)

    @classmethod
    def from_json_file(cls, meta_path: Path) -> EvaluatorInfo:
        try:
            data = json.loads(meta_path.read_text())
            info = cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise GanforgeError(f"unreadable evaluator metadata {meta_path} ({e}); delete it and retrain") from None
        info.path = str(meta_path.with_suffix(".safetensors"))
        return info


def dataset_base_name(name: str) -> str:
    """``mnist/test`` -> ``mnist``; ``image-folder:anime-faces`` -> ``anime-faces`` (safe for keys)."""
    base = name.split(":", 1)[-1].split("/", 1)[0]
    base = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return base or "data"


def evaluator_key(fingerprint: str, class_names: list[str], channels: int) -> str:
    payload = {"fingerprint": fingerprint, "classes": class_names, "channels": channels, "arch": ARCH, "widths": WIDTHS}
    return cache.short_hash(payload)


def evaluator_paths(data: ImageData) -> tuple[Path, Path]:
    key = evaluator_key(data.fingerprint, list(data.class_names), int(data.images.shape[1]))
    stem = f"{dataset_base_name(data.name)}-{key[:16]}"
    base = cache.evaluators_dir()
    return base / f"{stem}.safetensors", base / f"{stem}.json"


def load_info(path: str | Path) -> EvaluatorInfo:
    """An evaluator from its ``.safetensors`` or ``.json`` path, checking the weights match the metadata."""
    p = Path(path).expanduser()
    meta_path = p.with_suffix(".json")
    weights = p.with_suffix(".safetensors")
    if not meta_path.is_file() or not weights.is_file():
        raise GanforgeError(f"evaluator {p} needs both {weights.name} and {meta_path.name} next to each other")
    info = EvaluatorInfo.from_json_file(meta_path)
    digest = cache.file_sha256(weights)
    if info.weights_sha256 and digest != info.weights_sha256:
        raise GanforgeError(f"evaluator weights {weights} do not match their metadata (corrupt?); delete and retrain")
    info.weights_sha256 = digest
    return info


def find_evaluator(data: ImageData) -> EvaluatorInfo | None:
    """The evaluator trained on exactly this data (same fingerprint and classes), if cached."""
    weights, meta = evaluator_paths(data)
    if weights.is_file() and meta.is_file():
        return load_info(weights)
    return None


def find_evaluators_for(dataset: str, channels: int) -> list[EvaluatorInfo]:
    """Cached evaluators for a dataset name (any version of its files or labels), newest first."""
    found = []
    for meta in sorted(cache.evaluators_dir().glob("*.json")):
        try:
            info = EvaluatorInfo.from_json_file(meta)
        except GanforgeError:
            continue
        if info.dataset == dataset and info.channels == channels and Path(info.path).is_file():
            found.append(info)
    return sorted(found, key=lambda i: i.created, reverse=True)


def load_net(info: EvaluatorInfo, device: torch.device | str = "cpu") -> EvaluatorNet:
    from safetensors.torch import load_file

    net = build_net(info.arch)
    try:
        net.load_state_dict(load_file(info.path))
    except (OSError, RuntimeError) as e:
        reason = str(e).splitlines()[0]
        raise GanforgeError(f"cannot load evaluator {info.path} ({reason}); delete it and retrain") from None
    return net.to(device).eval()


# --------------------------------------------------------------------------- training


def heldout_split(n: int, holdout: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic (train, held-out) index split: a fixed-seed permutation, same on every machine."""
    if n < 10:
        raise GanforgeError(f"only {n} labelled images; the evaluator needs at least 10 to train and hold out")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # [n]
    n_hold = min(n - 1, max(1, round(n * holdout)))
    return perm[n_hold:], perm[:n_hold]


def auto_epochs(num_train: int) -> int:
    return max(1, min(20, math.ceil(TARGET_SAMPLES / max(1, num_train))))


def _augment(x: Tensor, hflip: bool, gen: torch.Generator) -> Tensor:
    """Random shifts of up to 2 px (edge-replicated) and optional flips: the classifier must not key on
    exact pixel positions, because generated images are never pixel-aligned with the training set."""
    n, _, s, _ = x.shape
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")[:, :, dy : dy + s, dx : dx + s]  # [N, C, S, S]
    if hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)  # [N]
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


@torch.no_grad()
def predict(
    net: EvaluatorNet, images: Tensor, input_size: int, channels: int, device: torch.device, batch_size: int = 512
) -> Tensor:
    """Class predictions ``[N]`` for uint8 images."""
    net.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = prepare_images(images[i : i + batch_size].to(device), input_size, channels)  # [B, C, S, S]
        out.append(net(x)[1].argmax(dim=1).cpu())
    return torch.cat(out)


def _accuracies(pred: Tensor, truth: Tensor, num_classes: int) -> tuple[float, float, float]:
    acc = float((pred == truth).double().mean())
    per_class = [float((pred[truth == k] == k).double().mean()) for k in range(num_classes) if (truth == k).any()]
    majority = float(torch.bincount(truth, minlength=num_classes).max()) / len(truth)
    return acc, sum(per_class) / len(per_class), majority


def fit_evaluator(
    data: ImageData,
    device: torch.device | str = "cpu",
    epochs: int | None = None,
    holdout: float = 0.2,
    batch_size: int = 128,
    lr: float = 3e-3,
    hflip: bool = False,
    seed: int = 0,
    widths: tuple[int, int, int] = WIDTHS,
    log: Callable[[str], None] | None = None,
) -> tuple[EvaluatorNet, EvaluatorInfo]:
    """Train the CNN on ``data`` (labelled ImageData) with a held-out part; nothing is written."""
    log = log or progress
    if data.labels is None or not data.class_names:
        raise GanforgeError(f"{data.name} has no labels to train an evaluator on")
    if len(data.class_names) < 2:
        raise GanforgeError(f"{data.name} has a single class; a classifier evaluator needs at least 2")
    device = torch.device(device)
    images, labels = data.images, data.labels.long()  # uint8 [N, C, H, W], int64 [N]
    channels, resolution = int(images.shape[1]), int(images.shape[-1])
    size = input_size_for(resolution)
    num_classes = len(data.class_names)
    train_idx, hold_idx = heldout_split(len(images), holdout, seed)
    epochs = epochs or auto_epochs(len(train_idx))
    arch = {"name": ARCH, "channels": channels, "num_classes": num_classes, "widths": list(widths),
            "feature_dim": 128, "input_size": size}  # fmt: skip
    # fork_rng: training must not consume the caller's global RNG (a GAN run calling this on first use
    # would otherwise train differently from one that found the evaluator in the cache).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # channels_last: the convolutions run ~1.5x faster on CPU (oneDNN) and no slower on GPU.
        net = build_net(arch).to(device, memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(seed + 1)
        start = time.perf_counter()
        _train_classifier(net, images, labels, train_idx, size, epochs, batch_size, lr, hflip, gen, log)
        seconds = time.perf_counter() - start
    pred = predict(net, images[hold_idx], size, channels, device)
    acc, balanced, majority = _accuracies(pred, labels[hold_idx], num_classes)
    base = dataset_base_name(data.name)
    info = EvaluatorInfo(
        name=f"{base}-classifier", dataset=base, source=data.name, fingerprint=data.fingerprint,
        channels=channels, resolution=resolution, input_size=size, class_names=list(data.class_names),
        heldout_accuracy=acc, heldout_balanced_accuracy=balanced, majority_baseline=majority,
        num_train=len(train_idx), num_heldout=len(hold_idx), epochs=epochs, train_seconds=round(seconds, 1),
        arch=arch, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    return net.eval(), info


def _train_classifier(
    net: EvaluatorNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    size: int,
    epochs: int,
    batch_size: int,
    lr: float,
    hflip: bool,
    gen: torch.Generator,
    log: Callable[[str], None],
) -> None:
    """AdamW with a one-cycle schedule over shuffled mini-batches of ``images[train_idx]``, in place."""
    device = next(net.parameters()).device
    channels = int(images.shape[1])
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]  # [n_train]
        total = 0.0
        for i in range(0, len(order), batch_size):
            b = order[i : i + batch_size]
            x = prepare_images(images[b].to(device), size, channels)  # [B, C, S, S]
            x = _augment(x, hflip, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x)[1], labels[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        log(f"evaluator epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} "
            f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


def save_evaluator(net: EvaluatorNet, info: EvaluatorInfo, data: ImageData) -> EvaluatorInfo:
    """Weights first, then the JSON: a JSON file means a complete evaluator."""
    from safetensors.torch import save_file

    weights, meta = evaluator_paths(data)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    cache.write_atomic(weights, lambda tmp: save_file(state, tmp), strict=True)
    info.weights_sha256 = cache.file_sha256(weights)
    info.path = str(weights)
    cache.write_atomic(meta, lambda tmp: Path(tmp).write_text(info.to_json()), strict=True)
    return info


def ensure_evaluator(
    data: ImageData,
    device: torch.device | str = "cpu",
    epochs: int | None = None,
    hflip: bool = False,
    force: bool = False,
    label_source: str = "",
    log: Callable[[str], None] | None = None,
) -> EvaluatorInfo:
    """The cached evaluator for ``data``, training and storing it first if there is none (or ``force``)."""
    log = log or progress
    if not force:
        found = find_evaluator(data)
        if found is not None:
            found.extra["from_cache"] = True  # not saved: tells the CLI nothing was trained now
            return found
    # the evaluator is kept in the cache and named by its file in every result: check that before training it
    cache.require_writable(cache.evaluators_dir(), "training an evaluator", EVALUATOR_BYTES)
    log(f"training the {dataset_base_name(data.name)} evaluator on {len(data)} labelled images "
        f"({len(data.class_names)} classes)")  # fmt: skip
    net, info = fit_evaluator(data, device, epochs=epochs, hflip=hflip, log=log)
    info.label_source = label_source
    info = save_evaluator(net, info, data)
    log(f"evaluator {info.name}: held-out accuracy {info.heldout_accuracy:.4f} on {info.num_heldout} images "
        f"(balanced {info.heldout_balanced_accuracy:.4f}, majority class {info.majority_baseline:.4f}), "
        f"{info.train_seconds:.0f} s; stored in {info.path}")  # fmt: skip
    return info


DEFAULT_SHAPES = {
    "mnist": (1, 28),
    "fashion-mnist": (1, 28),
    "digits": (1, 28),
    "cifar10": (3, 32),
    "stacked-mnist": (3, 28),
}


def default_shape(dataset: str) -> tuple[int, int]:
    """(channels, resolution) a dataset is loaded at when the caller does not say: its native size."""
    return DEFAULT_SHAPES.get(dataset, (3, 64))


def real_shape_for_evaluation(dataset: str, channels: int, resolution: int) -> tuple[int, int]:
    """The shape real images are loaded at to score a model of ``channels`` x ``resolution``.

    Datasets with a native size (MNIST 28, CIFAR 32, ...) are scored at it, whatever the model's size,
    so every recipe on one dataset is judged by the same evaluator and the same real statistics (the
    generated images go through ``prepare_images`` to the evaluator's input size). Folders keep the
    model's size.
    """
    return DEFAULT_SHAPES.get(dataset, (channels, resolution))


def train_evaluator(
    data_cfg: DataConfig,
    channels: int | None = None,
    resolution: int | None = None,
    epochs: int | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> EvaluatorInfo:
    """Load ``data_cfg``'s dataset (labelled) and return its evaluator, training it unless cached.

    ``channels``/``resolution`` default to the dataset's native size (image folders: 3 x 64).
    """
    from ganforge.data import load_dataset
    from ganforge.data.stacked import channel_source

    if data_cfg.dataset == "stacked-mnist":  # judged per channel by the MNIST classifier: train that one
        data_cfg, channels, resolution = channel_source(data_cfg), None, None
    default_c, default_r = default_shape(data_cfg.dataset)
    data = load_dataset(data_cfg, channels or default_c, resolution or default_r)
    if data.labels is None:
        hint = (
            " --set data.labels=csv --set data.label_csv=tags.csv --set data.label_column=COLUMN"
            " (or data.labels=subfolders)"
            if data_cfg.dataset == "image-folder"
            else ""
        )
        raise ConfigError(f"{data.name} is loaded without labels; an evaluator needs them:{hint}")
    label_source = f"csv column {data_cfg.label_column}" if data_cfg.labels == "csv" else data_cfg.labels
    return ensure_evaluator(
        data, device, epochs=epochs, hflip=data_cfg.hflip, force=force, label_source=label_source, log=log
    )
