"""Feature extractors: the ``EXTRACTORS`` registry ("classifier", "inception").

An extractor turns uint8 images into a ``FeatureSet``: penultimate-layer features ``[N, D]`` and,
when it is a classifier, softmax outputs ``[N, K]``. Real and generated images go through the
same ``prepare_images`` resize, inside ``Extractor.extract``, so neither side is favoured.

InceptionV3 is never downloaded: it is loaded from a file the user supplies (``--inception-weights``
or ``$GANFORGE_INCEPTION_WEIGHTS``) or that torch hub has already cached. Without one, a one-line
``GanforgeError`` names the exact path to put the file at.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganforge.errors import ConfigError, GanforgeError
from ganforge.metrics import cache
from ganforge.metrics import evaluator as ev
from ganforge.metrics.core import INCEPTION, FeatureSet
from ganforge.metrics.evaluator import prepare_images
from ganforge.registry import Registry

if TYPE_CHECKING:
    from ganforge.config import DataConfig
    from ganforge.data import ImageData

logger = logging.getLogger("ganforge.metrics")

INCEPTION_ENV = "GANFORGE_INCEPTION_WEIGHTS"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
# Searched in torch.hub.get_dir()/checkpoints, in this order: the TF FID network first (what published
# FIDs use: pytorch-fid's and torch-fidelity's ports), then torchvision's ImageNet InceptionV3.
HUB_PATTERNS = ("pt_inception-2015-12-05-*.pth", "weights-inception-2015-12-05-*.pth", "inception_v3_google-*.pth")


class Extractor:
    """Base class: subclasses set the attributes and implement ``_forward``."""

    name: str  # used in result keys: "mnist-classifier", "inception"
    identity: str  # everything that changes its features (incl. a weights hash): part of cache keys
    input_size: int
    input_channels: int
    class_names: list[str] | None = None  # classifier extractors: what the softmax columns mean
    batch_size: int = 256

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Prepared float [B, C, S, S] on the device -> (features [B, D], probs [B, K] or None)."""
        raise NotImplementedError

    def preprocessing(self, images: Tensor) -> dict[str, Any]:
        """What the cache key needs to know about how ``images`` reach the network."""
        return {
            "source_shape": list(images.shape[1:]),
            "size": self.input_size,
            "channels": self.input_channels,
            "resize": ev.PREPROCESSING,
        }

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity}

    @torch.no_grad()
    def extract(self, images: Tensor, labels: Tensor | None = None) -> FeatureSet:
        """uint8 [N, C, H, W] (any device) -> FeatureSet on the CPU (float32)."""
        feats, probs = [], []
        for i in range(0, images.shape[0], self.batch_size):
            batch = images[i : i + self.batch_size].to(self.device)  # uint8 [B, C, H, W]
            x = prepare_images(batch, self.input_size, self.input_channels)  # [B, C', S, S]
            f, p = self._forward(x)
            feats.append(f.float().cpu())
            if p is not None:
                probs.append(p.float().cpu())
        return FeatureSet(
            torch.cat(feats),  # [N, D]
            torch.cat(probs) if probs else None,  # [N, K]
            None if labels is None else labels.long().cpu(),
        )


class ClassifierExtractor(Extractor):
    """A ganforge-trained evaluator CNN (see ``evaluator.py``)."""

    def __init__(self, info: ev.EvaluatorInfo, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.info = info
        self.net = ev.load_net(info, self.device)
        self.name = info.name
        self.input_size = info.input_size
        self.input_channels = info.channels
        self.class_names = list(info.class_names)
        self.identity = f"classifier:{ev.ARCH}:{info.weights_sha256}"

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats, logits = self.net(x)  # [B, 128], [B, K]
        return feats, logits.float().softmax(dim=1)

    def describe(self) -> dict[str, Any]:
        i = self.info
        return {
            "name": self.name, "identity": self.identity, "weights": i.path, "trained_on": i.source,
            "fingerprint": i.fingerprint, "classes": i.class_names, "heldout_accuracy": i.heldout_accuracy,
            "label_source": i.label_source,
        }  # fmt: skip


class PerChannelClassifier(ClassifierExtractor):
    """A grey-image evaluator applied to each of the R, G, B channels: Stacked MNIST's judge.

    Each channel goes through the same network as a grey image (exactly what ``prepare_images`` gives
    a 1-channel image: the per-pixel scaling and the bilinear resize act on each channel alone).
    Features: the three channels' 128 features side by side ``[N, 3 * 128]``. Probabilities: the
    product of the channels' softmax outputs over every digit triple ``[N, K**3]``, in mode order
    ``K**2 d_R + K d_G + d_B`` (the stacked dataset's labels), so the argmax is the triple of the
    channels' argmaxes and conditional accuracy, coverage and ``modes`` read it as 1,000 classes.
    """

    def __init__(self, info: ev.EvaluatorInfo, device: torch.device | str = "cpu") -> None:
        super().__init__(info, device)
        if info.channels != 1:
            raise ConfigError(
                f"a per-channel evaluator needs a grey (1-channel) classifier; {info.path} has {info.channels}"
            )
        names = info.class_names
        sep = "" if all(len(n) == 1 for n in names) else "|"  # MNIST: "000".."999", the stacked labels' names
        self.name = f"{info.name}-per-channel"
        self.input_channels = 3
        self.class_names = [sep.join((a, b, c)) for a in names for b in names for c in names]
        self.identity = f"per-channel:{ev.ARCH}:{info.weights_sha256}"
        self.batch_size = 128  # 3 grey images each
        # 1.6x faster on CPU (oneDNN), as in training the evaluator; 10,000 stacks are 30,000 passes
        self.net = self.net.to(memory_format=torch.channels_last)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        b, c, s, _ = x.shape  # [B, 3, S, S]
        planes = x.reshape(b * c, 1, s, s).contiguous(
            memory_format=torch.channels_last
        )  # row 3i + c: image i, channel c
        feats, logits = self.net(planes)  # [3B, 128], [3B, K]
        p = logits.float().softmax(dim=1).reshape(b, c, -1)  # [B, 3, K]
        joint = torch.einsum("bi,bj,bk->bijk", p[:, 0], p[:, 1], p[:, 2])  # [B, K, K, K]
        return feats.reshape(b, -1), joint.reshape(b, -1)  # [B, 3 * 128], [B, K**3]


# --------------------------------------------------------------------------- InceptionV3


def _tf_pool_block(base: type[nn.Module], max_pool: bool = False) -> type[nn.Module]:
    """A torchvision Inception block whose pool branch pools like the TensorFlow FID graph.

    TF's average pool ignores the zero padding (``count_include_pad=False``), and the graph's last
    block max-pools instead. Everything else, parameter names included, is torchvision's, so the
    ported FID weights load strictly.
    """

    class TFPool(base):  # type: ignore[misc, valid-type]
        def _forward(self, x: Tensor) -> list[Tensor]:
            branches = super()._forward(x)[:-1]  # torchvision's pool branch is the last; redone below
            if max_pool:
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return [*branches, self.branch_pool(pooled)]

    TFPool.__name__ = f"TFPool{base.__name__}{'Max' if max_pool else ''}"
    return TFPool


def build_inception(num_classes: int) -> nn.Module:
    """torchvision InceptionV3, patched to the TF FID graph when ``num_classes == 1008`` (its weights)."""
    from torchvision.models import inception as tv

    if num_classes == 1008:
        net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
        net.Mixed_5b = _tf_pool_block(tv.InceptionA)(192, pool_features=32)
        net.Mixed_5c = _tf_pool_block(tv.InceptionA)(256, pool_features=64)
        net.Mixed_5d = _tf_pool_block(tv.InceptionA)(288, pool_features=64)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            setattr(net, name, _tf_pool_block(tv.InceptionC)(768, channels_7x7=c7))
        net.Mixed_7b = _tf_pool_block(tv.InceptionE)(1280)
        net.Mixed_7c = _tf_pool_block(tv.InceptionE, max_pool=True)(2048)
        return net
    # torchvision's ImageNet weights (inception_v3_google-*.pth) carry the auxiliary head too.
    return tv.Inception3(num_classes=num_classes, aux_logits=True, init_weights=False, transform_input=False)


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The weights file to use, without touching the network; a GanforgeError if there is none."""
    given = explicit or os.environ.get(INCEPTION_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            source = "--inception-weights" if explicit else f"${INCEPTION_ENV}"
            raise GanforgeError(f"{source} {path} does not exist: point it at an InceptionV3 .pth weights file")
        return path
    hub = hub_checkpoint_dir()
    for pattern in HUB_PATTERNS:
        found = sorted(hub.glob(pattern))
        if found:
            return found[0]
    raise GanforgeError(
        f"no InceptionV3 weights offline: copy {FID_WEIGHTS_NAME} (pytorch-fid's FID network) to "
        f"{hub / FID_WEIGHTS_NAME}, or pass --inception-weights FILE (or set {INCEPTION_ENV}); "
        "ganforge never downloads them"
    )


_HASHES: dict[tuple[str, int, float], str] = {}


def _weights_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _HASHES:  # ~100 MB: hash once per process
        _HASHES[key] = cache.file_sha256(path)
    return _HASHES[key]


class InceptionExtractor(Extractor):
    """InceptionV3 pool features (2048) and softmax; its FD is the only one reported as "fid"."""

    name = INCEPTION
    input_size = 299
    input_channels = 3
    batch_size = 64

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.weights = find_inception_weights(weights)
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise GanforgeError(f"cannot read InceptionV3 weights {self.weights} ({type(e).__name__})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if fc is None:
            raise GanforgeError(f"{self.weights} is not an InceptionV3 state dict (no fc.weight)")
        num_classes = int(fc.shape[0])
        net = build_inception(num_classes)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise GanforgeError(f"{self.weights} does not fit torchvision's InceptionV3 ({first})") from None
        self.variant = "tf-fid" if num_classes == 1008 else "torchvision-imagenet"
        self.fc = net.fc
        # The network ends at the 2048-d average pool; fc is applied separately for the probabilities.
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        self.net = net.to(self.device).eval()
        self.fc = self.fc.to(self.device).eval()
        self.identity = f"inception:{self.variant}:{_weights_hash(self.weights)}"

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats = self.net(x)  # [B, 2048] (eval mode returns the main output only)
        return feats, self.fc(feats).float().softmax(dim=1)  # [B, 1008 or 1000]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "identity": self.identity, "weights": str(self.weights), "variant": self.variant}


# --------------------------------------------------------------------------- registry


@dataclass
class ExtractorRequest:
    """What building an extractor may need; builders use what applies to them."""

    real: ImageData | None = None
    device: torch.device | str = "cpu"
    inception_weights: str | None = None
    train_if_missing: bool = True  # classifier: train on ``real`` when no cached evaluator fits
    epochs: int | None = None
    hflip: bool = False
    label_source: str = ""
    log: Callable[[str], None] | None = None
    data_cfg: DataConfig | None = None  # the real data's config: the per-channel classifier loads MNIST from it


EXTRACTORS: Registry[Callable[[ExtractorRequest], Extractor]] = Registry("extractor")


def _no_labels_error(real: ImageData) -> GanforgeError:
    return GanforgeError(
        f"{real.name} has no labels and no evaluator is cached for {ev.dataset_base_name(real.name)}: "
        "train one on labelled data first, e.g. `ganforge train-evaluator image-folder --data-root DIR "
        "--set data.labels=csv --set data.label_csv=tags.csv --set data.label_column=hair`, "
        "or use --set eval.extractor=inception with InceptionV3 weights"
    )


@EXTRACTORS.register("classifier")
def classifier_extractor(req: ExtractorRequest) -> Extractor:
    """The dataset's own classifier: cached by data fingerprint, trained on first use if labelled.

    Order: the evaluator trained on exactly this data; else train one (labelled data); else the
    newest cached evaluator for the same dataset name (e.g. trained on its tagged subset).
    """
    real = req.real
    if real is None:
        raise ConfigError("the classifier extractor needs the real dataset it was (or will be) trained on")
    log = req.log or ev.progress
    info = ev.find_evaluator(real)
    if info is None and real.labels is not None and req.train_if_missing:
        info = ev.ensure_evaluator(real, req.device, epochs=req.epochs, hflip=req.hflip,
                                   label_source=req.label_source, log=log)  # fmt: skip
    if info is None:
        candidates = ev.find_evaluators_for(ev.dataset_base_name(real.name), int(real.images.shape[1]))
        if not candidates:
            if real.labels is None:
                raise _no_labels_error(real)
            raise GanforgeError(f"no evaluator cached for {real.name}; run `ganforge train-evaluator` first")
        info = candidates[0]
        log(f"using evaluator {info.path} (trained on {info.source}, {len(info.class_names)} classes)")
    return ClassifierExtractor(info, req.device)


@EXTRACTORS.register("per-channel-classifier")
def per_channel_extractor(req: ExtractorRequest) -> Extractor:
    """Stacked MNIST: the MNIST classifier on each channel, trained on first use on the MNIST split the
    stacks come from (``req.data_cfg``: same root and split); without it, the newest cached MNIST evaluator."""
    from ganforge.data import load_dataset
    from ganforge.data.stacked import CHANNEL_DATASET, channel_source

    log = req.log or ev.progress
    info = None
    if req.data_cfg is not None:
        digits = load_dataset(channel_source(req.data_cfg), 1, 28)
        info = ev.find_evaluator(digits)
        if info is None and req.train_if_missing:
            info = ev.ensure_evaluator(digits, req.device, epochs=req.epochs, log=log)
    if info is None:
        candidates = ev.find_evaluators_for(CHANNEL_DATASET, 1)
        if not candidates:
            raise GanforgeError(
                f"no {CHANNEL_DATASET} evaluator cached for the per-channel classifier: run "
                f"`ganforge train-evaluator {CHANNEL_DATASET} --data-root DIR` first"
            )
        info = candidates[0]
        log(f"using evaluator {info.path} (trained on {info.source}) on each channel")
    return PerChannelClassifier(info, req.device)


@EXTRACTORS.register("inception")
def inception_extractor(req: ExtractorRequest) -> Extractor:
    return InceptionExtractor(req.inception_weights, req.device)


# Datasets whose own labels are not what a classifier should be trained on: `auto` uses this extractor.
AUTO_EXTRACTORS = {"stacked-mnist": "per-channel-classifier"}


def build_extractor(name: str, req: ExtractorRequest) -> Extractor:
    """``auto`` (the dataset's classifier), a registry name, or a path to an evaluator file."""
    if name == "auto":
        dataset = ev.dataset_base_name(req.real.name) if req.real is not None else ""
        name = AUTO_EXTRACTORS.get(dataset, "classifier")
    if name.endswith((".safetensors", ".json")):
        return ClassifierExtractor(ev.load_info(name), req.device)
    return EXTRACTORS.get(name)(req)
