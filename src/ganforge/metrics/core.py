"""The ``METRICS`` registry and how results are named.

A metric compares a real ``FeatureSet`` with a generated one. Results are flat
``{key: float}`` dicts whose keys name the extractor the features came from, e.g.
``fd_mnist-classifier`` or ``precision_anime-faces-classifier``: an FD from a 10-class
digit classifier and an FD from InceptionV3 are different numbers and must never be
compared, so no result is ever just "fd". Only InceptionV3's FD is called ``fid``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ganforge.errors import ConfigError
from ganforge.metrics import functional as F
from ganforge.registry import Registry

INCEPTION = "inception"  # extractor name whose FD is reported as "fid"
# `modes` is read at >= this many samples per mode (10,000 for Stacked MNIST's 1,000): with N uniform samples
# over K modes, K exp(-N/K) modes are expected to stay empty by chance alone, 0.05 of 1,000 at N = 10 K.
SAMPLES_PER_MODE = 10


class MetricWarning(UserWarning):
    """A metric computed where its numbers are hard to read (e.g. too few samples)."""


@dataclass
class FeatureSet:
    """What an extractor produced for one image set (all on the CPU)."""

    features: Tensor  # [N, D] float32 penultimate-layer features
    probs: Tensor | None = None  # [N, K] softmax outputs (classifier extractors)
    labels: Tensor | None = None  # [N] int64: true labels (real) or the classes asked for (generated)
    _stats: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.features.shape[0]

    def stats(self) -> tuple[Tensor, Tensor]:
        """Mean ``[D]`` and covariance ``[D, D]`` (float64), computed once."""
        if self._stats is None:
            self._stats = F.feature_statistics(self.features)
        return self._stats


@dataclass(frozen=True)
class MetricOptions:
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    seed: int = 0


@dataclass(frozen=True)
class MetricSpec:
    name: str
    compute: Callable[[FeatureSet, FeatureSet, MetricOptions], dict[str, float]]
    primary: str  # the returned key used to rank checkpoints
    lower_is_better: bool
    needs_probs: bool = False  # only classifier-style extractors have class probabilities
    needs_labels: bool = False  # only class-conditional samples have requested labels
    about: str = ""
    pairwise: bool = False  # cost grows with N^2 (pairwise kernels or distances between samples)


METRICS: Registry[MetricSpec] = Registry("metric")
ALIASES = {"pr": "precision_recall", "fid": "fd", "is": "classifier_score"}


def _fd(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    mu1, cov1 = real.stats()
    mu2, cov2 = fake.stats()
    return {"fd": F.frechet_distance_from_stats(mu1, cov1, mu2, cov2)}


def _kid(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    mean, se = F.kernel_distance(real.features, fake.features, opts.kid_subsets, opts.kid_subset_size, seed=opts.seed)
    return {"kid": mean, "kid_se": se}


def _pr(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    precision, recall = F.precision_recall(real.features, fake.features, k=opts.pr_k)
    return {"precision": precision, "recall": recall}


def _score(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    assert fake.probs is not None
    return {"classifier_score": F.classifier_score(fake.probs)[0]}


def _coverage(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    assert fake.probs is not None
    entropy, normalised = F.class_coverage(fake.probs)
    return {"coverage": normalised, "coverage_entropy": entropy}


def _modes(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    assert fake.probs is not None and real.probs is not None
    num_modes = fake.probs.shape[1]
    if len(fake) < SAMPLES_PER_MODE * num_modes:
        warnings.warn(
            f"modes: {len(fake)} samples for {num_modes} modes; read modes covered at >= "
            f"{SAMPLES_PER_MODE * num_modes} samples (fewer leave modes empty by chance: compare with modes_real)",
            MetricWarning,
            stacklevel=2,
        )
    modes, kl = F.mode_statistics(fake.probs)
    modes_real, kl_real = F.mode_statistics(real.probs)
    return {"modes": modes, "modes_kl": kl, "modes_real": modes_real, "modes_kl_real": kl_real}


def _cond_acc(real: FeatureSet, fake: FeatureSet, opts: MetricOptions) -> dict[str, float]:
    assert fake.probs is not None and fake.labels is not None
    return {"conditional_accuracy": F.conditional_accuracy(fake.probs, fake.labels)}


for _spec in (
    MetricSpec("fd", _fd, "fd", True, about="Frechet distance between Gaussian fits of the features"),
    MetricSpec("kid", _kid, "kid", True, about="unbiased MMD^2, cubic polynomial kernel, over subsets", pairwise=True),
    MetricSpec(
        "precision_recall",
        _pr,
        "recall",
        False,
        about="k-NN manifold precision (fidelity), recall (diversity)",
        pairwise=True,
    ),
    MetricSpec("classifier_score", _score, "classifier_score", False, True, about="exp E KL(p(y|x) || p(y))"),
    MetricSpec("coverage", _coverage, "coverage", False, True, about="entropy of predicted classes / log K"),
    MetricSpec(
        "modes", _modes, "modes", False, True, about="modes (classes) predicted at least once; KL(modes || uniform)"
    ),
    MetricSpec(
        "conditional_accuracy",
        _cond_acc,
        "conditional_accuracy",
        False,
        True,
        True,
        about="share of samples classified as the class they were asked for",
    ),
):
    METRICS.register(_spec.name)(_spec)
# "pr" is the short name the CLI and results use; same spec, so both names give identical numbers.
METRICS.register("pr")(METRICS.get("precision_recall"))

DEFAULT_METRICS = ("fd", "kid", "precision_recall", "classifier_score", "coverage", "conditional_accuracy", "modes")


def canonical_metric(name: str) -> str:
    name = name.strip().lower().replace("-", "_")
    name = ALIASES.get(name, name)
    METRICS.get(name)  # raises ConfigError listing the known names
    return name


def parse_metric_list(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"fd,kid,pr"`` -> canonical names, in order, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        if item.strip():
            name = canonical_metric(item)
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"no metrics given; known: {', '.join(METRICS.names())}")
    return names


def result_key(base: str, extractor_name: str) -> str:
    """``fd`` + ``mnist-classifier`` -> ``fd_mnist-classifier``; InceptionV3's FD alone is ``fid``."""
    if base == "fd" and extractor_name == INCEPTION:
        return "fid"
    return f"{base}_{extractor_name}"


def primary_key(metric: str, extractor_name: str) -> tuple[str, bool]:
    """The result key a tracked metric ranks checkpoints by, and whether lower is better."""
    spec = METRICS.get(canonical_metric(metric))
    return result_key(spec.primary, extractor_name), spec.lower_is_better


def compute_metrics(
    real: FeatureSet,
    fake: FeatureSet,
    metrics: list[str],
    extractor_name: str,
    options: MetricOptions | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Run ``metrics`` on two feature sets; returns ``(results, skipped)``.

    ``skipped`` maps a metric name to why it could not run here (no class probabilities from this
    extractor, or no requested labels because the samples are unconditional), so callers can say so.
    """
    opts = options or MetricOptions()
    results: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in metrics:
        spec = METRICS.get(canonical_metric(name))
        if spec.needs_probs and (fake.probs is None or real.probs is None):
            skipped[spec.name] = f"extractor {extractor_name} gives no class probabilities"
            continue
        if spec.needs_labels and fake.labels is None:
            skipped[spec.name] = "the samples have no requested labels (unconditional model)"
            continue
        for base, value in spec.compute(real, fake, opts).items():
            results[result_key(base, extractor_name)] = float(value)
    return results, skipped


def subset(features: FeatureSet, index: Tensor) -> FeatureSet:
    """Rows ``index`` of a feature set (statistics recomputed lazily)."""
    return FeatureSet(
        features.features[index],
        None if features.probs is None else features.probs[index],
        None if features.labels is None else features.labels[index],
    )
