"""Sample-quality metrics that work offline.

Metric maths on feature tensors (``functional``), the ``METRICS`` and ``EXTRACTORS`` registries,
the self-trained classifier evaluator, cached real statistics, ``evaluate`` and the training hook
``QualityTracker``. Importing this package touches no GPU, no network and no weights file: extractors
load (or train) only when built.
"""

from ganforge.metrics.core import (
    DEFAULT_METRICS,
    METRICS,
    FeatureSet,
    MetricOptions,
    MetricSpec,
    canonical_metric,
    compute_metrics,
    parse_metric_list,
    primary_key,
    result_key,
)
from ganforge.metrics.evaluator import (
    EvaluatorInfo,
    ensure_evaluator,
    fit_evaluator,
    prepare_images,
    train_evaluator,
)
from ganforge.metrics.extractors import (
    EXTRACTORS,
    ClassifierExtractor,
    Extractor,
    ExtractorRequest,
    InceptionExtractor,
    build_extractor,
    find_inception_weights,
)
from ganforge.metrics.functional import (
    class_coverage,
    classifier_score,
    conditional_accuracy,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_distance,
    precision_recall,
)
from ganforge.metrics.tracker import (
    EvaluationResult,
    QualityTracker,
    evaluate,
    evaluate_detailed,
    real_features,
)

__all__ = [
    "DEFAULT_METRICS",
    "EXTRACTORS",
    "METRICS",
    "ClassifierExtractor",
    "EvaluationResult",
    "EvaluatorInfo",
    "Extractor",
    "ExtractorRequest",
    "FeatureSet",
    "InceptionExtractor",
    "MetricOptions",
    "MetricSpec",
    "QualityTracker",
    "build_extractor",
    "canonical_metric",
    "class_coverage",
    "classifier_score",
    "compute_metrics",
    "conditional_accuracy",
    "ensure_evaluator",
    "evaluate",
    "evaluate_detailed",
    "feature_statistics",
    "find_inception_weights",
    "fit_evaluator",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_distance",
    "parse_metric_list",
    "precision_recall",
    "prepare_images",
    "primary_key",
    "real_features",
    "result_key",
    "train_evaluator",
]
