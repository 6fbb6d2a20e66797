"""Evaluating generated images against a real set: ``evaluate`` (one-off) and ``QualityTracker`` (training).

Real features are computed once per (data, split, extractor, preprocessing, subset) and cached as
safetensors, so a training run pays for them on its first evaluation only, and ``ganforge evaluate``
on another checkpoint of the same run pays nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ganforge.errors import ConfigError
from ganforge.metrics import cache
from ganforge.metrics import evaluator as ev
from ganforge.metrics.core import (
    DEFAULT_METRICS,
    METRICS,
    FeatureSet,
    MetricOptions,
    canonical_metric,
    compute_metrics,
    parse_metric_list,
    primary_key,
)
from ganforge.metrics.extractors import Extractor, ExtractorRequest, build_extractor

if TYPE_CHECKING:
    from ganforge.config import RunConfig
    from ganforge.data import ImageData

logger = logging.getLogger("ganforge.metrics")

Sampler = Callable[[int], tuple[Tensor, "Tensor | None"]]
# Alongside the tracked metric, the pairwise ones (KID, precision/recall) run only up to this many samples: their
# cost grows with N^2 (at 10,000 samples, as Stacked MNIST's modes want, about a minute each on 2 CPU cores).
PAIRWISE_ALONGSIDE_LIMIT = 5000


def _subset_generator(seed: int) -> torch.Generator:
    # Offset from the evaluator's held-out split (a seed-0 permutation of the same images): with the same
    # seed, the first real-vs-real half would hold every held-out image and the second none, and the
    # classifier's features differ between images it trained on and images it did not.
    return torch.Generator().manual_seed(0x5EED_0000 + seed)


def subset_index(n: int, num: int | None, seed: int = 0) -> Tensor:
    """Which real images to use: all of them, or a fixed-seed random ``num`` (sorted, for locality)."""
    if num is None or num >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=_subset_generator(seed))  # [n]
    return perm[:num].sort().values  # [num]


def split_halves(n: int, num: int | None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint fixed-seed random subsets of ``min(num, n // 2)`` images each (real-vs-real)."""
    half = n // 2 if num is None else min(num, n // 2)
    perm = torch.randperm(n, generator=_subset_generator(seed))  # [n]
    return perm[:half].sort().values, perm[half : 2 * half].sort().values


def real_features(
    real: ImageData,
    extractor: Extractor,
    index: Tensor,
    split: str = "",
    use_cache: bool = True,
) -> FeatureSet:
    """Features of ``real.images[index]`` through ``extractor``, from the cache when possible."""
    key = cache.real_stats_key(
        real.fingerprint,
        split,
        extractor.identity,
        extractor.preprocessing(real.images),
        f"{len(index)}:{cache.index_digest(index)}",
    )
    path = cache.stats_path(f"{ev.dataset_base_name(real.name)}-{split or 'all'}", extractor.name, key)
    if use_cache:
        hit = cache.load_real_stats(path, key)
        if hit is not None:
            logger.info("real statistics from %s", path)
            return hit
    labels = None if real.labels is None else real.labels[index]
    with torch.autocast(extractor.device.type, enabled=False):
        feats = extractor.extract(real.images[index], labels)
    feats.stats()  # mean/cov go into the cache file too
    if use_cache:
        info = {"dataset": real.name, "split": split, "extractor": extractor.describe(), "num": len(index)}
        cache.save_real_stats(path, key, feats, info)
    return feats


def label_map(extractor: Extractor, data_classes: list[str]) -> Tensor | None:
    """Data class index -> extractor class index, or None when the extractor cannot judge these classes.

    A GAN's labels index its dataset's class list; the evaluator may list the same classes in
    another order (or be a different classifier entirely, e.g. InceptionV3's 1008 ImageNet classes).
    """
    names = extractor.class_names
    if not names or not data_classes:
        return None
    if list(names) == list(data_classes):
        return torch.arange(len(names))
    position = {n: i for i, n in enumerate(names)}
    if not all(c in position for c in data_classes):
        return None
    return torch.tensor([position[c] for c in data_classes], dtype=torch.long)


@dataclass
class EvaluationResult:
    results: dict[str, float]
    skipped: dict[str, str]  # metric -> why it could not be computed here
    extractor: dict[str, Any]
    num_real: int
    num_fake: int
    details: dict[str, Any] = field(default_factory=dict)


def evaluate_detailed(
    real: ImageData,
    fake_images: Tensor,
    fake_labels: Tensor | None,
    metrics: list[str] | str,
    extractor: str | Extractor,
    device: torch.device | str = "cpu",
    *,
    split: str = "",
    num_real: int | None = None,
    real_index: Tensor | None = None,
    seed: int = 0,
    inception_weights: str | None = None,
    options: MetricOptions | None = None,
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """``evaluate`` plus what was skipped and which extractor (weights hash included) produced the numbers."""
    names = parse_metric_list(metrics)
    if isinstance(extractor, str):
        extractor = build_extractor(
            extractor, ExtractorRequest(real=real, device=device, inception_weights=inception_weights, log=log)
        )
    if real_index is None:
        real_index = subset_index(len(real), num_real or fake_images.shape[0], seed)
    real_set = real_features(real, extractor, real_index, split, use_cache=use_cache)
    mapping = label_map(extractor, list(real.class_names))
    requested = None
    if fake_labels is not None and mapping is not None:
        requested = mapping[fake_labels.long().cpu()]  # [N] in the extractor's class order
    with torch.autocast(extractor.device.type, enabled=False):
        fake_set = extractor.extract(fake_images, requested)
    opts = options or MetricOptions(seed=seed)
    results, skipped = compute_metrics(real_set, fake_set, names, extractor.name, opts)
    if "conditional_accuracy" in skipped and fake_labels is not None and mapping is None:
        skipped["conditional_accuracy"] = f"extractor {extractor.name} does not know the classes {real.name} uses"
    return EvaluationResult(results, skipped, extractor.describe(), len(real_set), len(fake_set))


def evaluate(
    real: ImageData,
    fake_images: Tensor,
    fake_labels: Tensor | None,
    metrics: list[str] | str,
    extractor: str | Extractor,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> dict[str, float]:
    """Metrics of uint8 ``fake_images`` [N, C, H, W] (with their requested int64 labels, if conditional)
    against ``real``; keys name the extractor, e.g. ``{"fd_mnist-classifier": 3.1, ...}``.

    ``extractor``: "auto"/"classifier" (the dataset's evaluator), "inception", an evaluator file, or an
    ``Extractor``. Keyword options as ``evaluate_detailed`` (split, num_real, real_index, seed, ...).
    """
    return evaluate_detailed(real, fake_images, fake_labels, metrics, extractor, device, **kwargs).results


class QualityTracker:
    """The trainer's hook: every ``eval.every`` epochs it calls ``tracker(sample)`` and logs the dict.

    ``primary`` is the result key that ranks checkpoints; ``lower_is_better`` says which way.
    """

    def __init__(
        self,
        cfg: RunConfig,
        real: ImageData,
        device: torch.device,
        inception_weights: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.num = cfg.eval.num_samples
        self.split = cfg.data.split
        metric = canonical_metric(cfg.eval.metric)
        if METRICS.get(metric).needs_labels and cfg.model.num_classes == 0:
            raise ConfigError(f"eval.metric={cfg.eval.metric} needs a class-conditional model (model.num_classes > 0)")
        label_source = f"csv column {cfg.data.label_column}" if cfg.data.labels == "csv" else ""
        request = ExtractorRequest(
            real=real, device=device, inception_weights=inception_weights, hflip=cfg.data.hflip,
            label_source=label_source, log=log, data_cfg=cfg.data,
        )  # fmt: skip
        self.extractor = build_extractor(cfg.eval.extractor, request)
        # Everything cheap is tracked alongside the primary metric: the classifier's passes dominate
        # the cost, and a falling recall next to a falling FD is how mode collapse shows up.
        alongside = [m for m in DEFAULT_METRICS if m != metric]
        if self.num > PAIRWISE_ALONGSIDE_LIMIT:
            alongside = [m for m in alongside if not METRICS.get(m).pairwise]
        self.metrics = [metric, *alongside]
        self.primary, self.lower_is_better = primary_key(metric, self.extractor.name)
        self.real_index = subset_index(len(real), self.num)
        self.real_set = real_features(real, self.extractor, self.real_index, self.split)
        self.mapping = label_map(self.extractor, list(real.class_names))
        if metric == "conditional_accuracy" and self.mapping is None:
            raise ConfigError(
                f"eval.metric=conditional_accuracy: extractor {self.extractor.name} does not know the classes "
                f"of {real.name}; use eval.extractor=classifier"
            )
        self.skipped: dict[str, str] = {}

    @torch.no_grad()
    def __call__(self, sample: Sampler) -> dict[str, float]:
        """``sample(n)`` -> (uint8 images [n, C, H, W], int64 labels [n] or None); returns the results."""
        images, labels = sample(self.num)
        requested = None
        if labels is not None and self.mapping is not None:
            requested = self.mapping[labels.long().cpu()]  # [n]
        with torch.autocast(self.extractor.device.type, enabled=False):
            fake = self.extractor.extract(images, requested)
        results, self.skipped = compute_metrics(self.real_set, fake, self.metrics, self.extractor.name)
        return results
