"""Sample-quality metrics on feature tensors and class probabilities.

Everything here is plain maths on tensors that an extractor already produced:
``features`` are float ``[N, D]`` (penultimate-layer activations), ``probs`` are
float ``[N, K]`` rows that sum to 1. Distances are computed in float64 on the CPU
because FD and KID are small differences of large sums, where float32 loses digits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "class_coverage",
    "classifier_score",
    "conditional_accuracy",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_distance",
    "mmd2_unbiased",
    "mode_statistics",
    "polynomial_kernel",
    "precision_recall",
    "predicted_histogram",
]


FULL_KERNEL_LIMIT = 25_000_000  # kernel entries per matrix (200 MB of float64) before KID goes per subset


def _as_f64(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _check_features(x: Tensor, name: str) -> Tensor:
    x = _as_f64(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape [N, D], got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features`` ``[N, D]``."""
    x = _check_features(features, "features")  # [N, D]
    mu = x.mean(dim=0)  # [D]
    centred = x - mu  # [N, D]
    cov = centred.T @ centred / (x.shape[0] - 1)  # [D, D]
    return mu, cov


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a covariance; tiny negative eigenvalues from rounding are clipped to 0."""
    vals, vecs = torch.linalg.eigh(matrix)  # [D], [D, D]
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T  # [D, D]


def _trace_sqrt_product_eigh(cov1: Tensor, cov2: Tensor) -> float:
    # tr sqrt(S1 S2) = tr sqrt(A S2 A) with A = sqrt(S1): the inner matrix is symmetric PSD, so its
    # eigenvalues are real and >= 0 up to rounding; no complex arithmetic and no imaginary residue.
    a = _psd_sqrt(cov1)  # [D, D]
    inner = a @ cov2 @ a  # [D, D]
    inner = (inner + inner.T) / 2  # symmetrise away rounding so eigh sees an exactly symmetric matrix
    vals = torch.linalg.eigvalsh(inner)  # [D]
    return float(vals.clamp_min(0).sqrt().sum())


def _trace_sqrt_product_sqrtm(cov1: Tensor, cov2: Tensor, eps: float = 1e-6) -> float:
    import scipy.linalg  # imported here: the default eigh path does not need scipy's import cost

    s1, s2 = cov1.numpy(), cov2.numpy()
    root = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(root).all():
        # Singular product (e.g. fewer samples than dimensions): regularise both sides, as pytorch-fid does.
        offset = np.eye(s1.shape[0]) * eps
        root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(root):
        # sqrtm of a product of PSD matrices is real in exact arithmetic; rounding leaves small imaginary
        # parts, which we drop. Large ones mean the statistics are broken, and then no number is honest.
        imag = np.abs(np.diagonal(root).imag).max()
        if imag > 1e-3 * max(1.0, float(np.abs(np.trace(root.real)))):
            raise ValueError(f"frechet_distance: sqrtm has a large imaginary component ({imag:.3g})")
        root = root.real
    return float(np.trace(root))


def frechet_distance_from_stats(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor, method: str = "eigh") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    ``method="eigh"`` (default) uses the symmetric form tr sqrt(sqrt(S1) S2 sqrt(S1)), which is real by
    construction; ``method="sqrtm"`` uses scipy.linalg.sqrtm(S1 S2) like the reference FID code.
    """
    mu1, mu2, cov1, cov2 = (_as_f64(t) for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"frechet_distance: mismatched statistics {tuple(mu1.shape)}, {tuple(cov1.shape)} vs "
            f"{tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    if method == "eigh":
        tr_sqrt = _trace_sqrt_product_eigh(cov1, cov2)
    elif method == "sqrtm":
        tr_sqrt = _trace_sqrt_product_sqrtm(cov1, cov2)
    else:
        raise ValueError(f"frechet_distance: unknown method {method!r} (eigh | sqrtm)")
    value = float((mu1 - mu2).square().sum()) + float(cov1.trace() + cov2.trace()) - 2.0 * tr_sqrt
    # The true value is >= 0; rounding can leave a tiny negative number for identical sets.
    return max(value, 0.0)


def frechet_distance(real: Tensor, fake: Tensor, method: str = "eigh") -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``."""
    mu1, cov1 = feature_statistics(real)
    mu2, cov2 = feature_statistics(fake)
    return frechet_distance_from_stats(mu1, cov1, mu2, cov2, method=method)


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """k(x, y) = (x.y / d + coef)^degree for all pairs: ``[N, D] x [M, D] -> [N, M]`` (float64)."""
    x, y = _as_f64(x), _as_f64(y)
    return (x @ y.T / x.shape[1] + coef) ** degree  # [N, M]


def mmd2_unbiased(k_xx: Tensor, k_yy: Tensor, k_xy: Tensor) -> float:
    """Unbiased MMD^2 from kernel matrices ``[m, m]``, ``[n, n]``, ``[m, n]``: the diagonals are left out."""
    m, n = k_xx.shape[0], k_yy.shape[0]
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.sum() / (m * n))


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel (Inception) distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.

    Each of ``num_subsets`` draws takes ``min(subset_size, N, M)`` samples from each set without
    replacement (half the smaller set when that is smaller than ``subset_size`` and there are several
    subsets, so that the subsets differ). Returns ``(mean, standard error of the mean over subsets)``;
    the subsets overlap, so the standard error is a lower bound on the real uncertainty.
    """
    x = _check_features(real, "real")  # [N, D]
    y = _check_features(fake, "fake")  # [M, D]
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_distance: feature sizes differ ({x.shape[1]} vs {y.shape[1]})")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m == min(x.shape[0], y.shape[0]) and num_subsets > 1 and m >= 4:
        # Subsets as large as the smaller set would all be (nearly) that whole set: their spread, and so
        # the standard error, would be ~0 and say nothing. Half-size subsets vary and stay unbiased.
        m //= 2
    gen = torch.Generator().manual_seed(seed)
    # Kernel matrices over the full sets once, then index them per subset: far cheaper than recomputing
    # 3 GEMMs per subset whenever the full matrices fit (2 x 5000^2 float64 = 400 MB at most).
    full = max(x.shape[0], y.shape[0]) ** 2 <= FULL_KERNEL_LIMIT
    if full:
        k_xx_all = polynomial_kernel(x, x, degree, coef)  # [N, N]
        k_yy_all = polynomial_kernel(y, y, degree, coef)  # [M, M]
        k_xy_all = polynomial_kernel(x, y, degree, coef)  # [N, M]
    values = []
    for _ in range(num_subsets):
        i = torch.randperm(x.shape[0], generator=gen)[:m]  # [m]
        j = torch.randperm(y.shape[0], generator=gen)[:m]  # [m]
        if full:
            k_xx, k_yy, k_xy = k_xx_all[i][:, i], k_yy_all[j][:, j], k_xy_all[i][:, j]
        else:
            xs, ys = x[i], y[j]
            k_xx, k_yy = polynomial_kernel(xs, xs, degree, coef), polynomial_kernel(ys, ys, degree, coef)
            k_xy = polynomial_kernel(xs, ys, degree, coef)
        values.append(mmd2_unbiased(k_xx, k_yy, k_xy))
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(t.mean()), se


def _knn_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each sample to its k-th nearest neighbour in the same set ``[N]`` (itself excluded).

    Row chunks keep memory at ``chunk x N`` distances instead of ``N x N``.
    """
    if x.shape[0] <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples per set, got {x.shape[0]}")
    radii = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk], x)  # [c, N]
        # The sample itself sits at distance 0, the smallest entry, so the k-th neighbour is the (k+1)-th.
        radii.append(d.kthvalue(k + 1, dim=1).values)  # [c]
    return torch.cat(radii)  # [N]


def _manifold_share(points: Tensor, support: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    """Share of ``points`` that fall inside at least one ball (support[i], radii[i])."""
    inside = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i : i + chunk], support)  # [c, S]
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))  # [c]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    Precision: share of fakes inside the real manifold (fidelity). Recall: share of reals inside
    the fake manifold (diversity). Use equal set sizes: the radii shrink as a set grows.
    """
    x = _check_features(real, "real")  # [N, D]
    y = _check_features(fake, "fake")  # [M, D]
    precision = _manifold_share(y, x, _knn_radii(x, k))
    recall = _manifold_share(x, y, _knn_radii(y, k))
    return precision, recall


def _check_probs(probs: Tensor) -> Tensor:
    p = _as_f64(probs)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"expected class probabilities of shape [N, K], got {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ValueError("class probabilities must be non-negative rows that sum to 1 (apply softmax first)")
    return p


def classifier_score(probs: Tensor, splits: int = 1) -> tuple[float, float]:
    """Inception-Score form exp(E_x KL(p(y|x) || p(y))) over ``probs`` ``[N, K]``.

    Ranges from 1 (every sample gets the same prediction) to K (confident and all classes equally
    used). With ``splits > 1`` returns the mean and standard deviation over disjoint splits, as the
    original Inception Score does; with one split the deviation is 0.
    """
    p = _check_probs(probs)  # [N, K]
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(dim=0, keepdim=True)  # [1, K]
        # xlogy makes 0 * log 0 = 0, so confident one-hot rows need no epsilon.
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1)  # [n]
        scores.append(math.exp(float(kl.mean())))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


def predicted_histogram(probs_or_preds: Tensor, num_classes: int | None = None) -> Tensor:
    """Counts of predicted classes, float64 ``[K]``: argmax of probabilities ``[N, K]``, or indices ``[N]``."""
    t = torch.as_tensor(probs_or_preds)
    if t.ndim == 2:
        num_classes = num_classes or t.shape[1]
        preds = t.argmax(dim=1)  # [N]
    else:
        preds = t.long()  # [N]
        if num_classes is None:
            raise ValueError("pass num_classes with predicted indices")
    return torch.bincount(preds.cpu(), minlength=num_classes).double()  # [K]


def class_coverage(probs_or_preds: Tensor, num_classes: int | None = None) -> tuple[float, float]:
    """Entropy (nats) of the predicted-class histogram, and that entropy divided by log(num_classes).

    Takes probabilities ``[N, K]`` (argmax is the prediction) or predicted class indices ``[N]``.
    1.0 normalised means every class is produced equally often; 0 means a single class (mode collapse).
    """
    counts = predicted_histogram(probs_or_preds, num_classes)  # [K]
    num_classes = counts.shape[0]
    freq = counts / counts.sum()  # [K]
    entropy = max(0.0, float(-torch.special.xlogy(freq, freq).sum()))  # max: no "-0.0" for one class
    normalised = entropy / math.log(num_classes) if num_classes > 1 else 1.0
    return entropy, normalised


def mode_statistics(probs_or_preds: Tensor, num_modes: int | None = None) -> tuple[int, float]:
    """Modes covered and ``KL(p || uniform)`` (nats) of the predicted-mode histogram ``p``.

    Covered: modes predicted for at least one sample. ``p_k`` = share of the samples predicted as
    mode k, and ``KL(p || u) = sum_k p_k log(K p_k)`` over the K modes, where empty modes add
    nothing (0 log 0 = 0); the uniform side has no zeros, so no smoothing is needed. This is the
    figure VEEGAN and PacGAN report for Stacked MNIST (PacGAN's code: ``sum p log(p / (1/1000))`` over
    the non-empty modes). 0 for a perfectly balanced histogram, ``log K`` when one mode takes all.
    It equals ``log K - H(p)``: ``coverage``'s entropy on another scale.
    """
    counts = predicted_histogram(probs_or_preds, num_modes)  # [K]
    freq = counts / counts.sum()  # [K]
    kl = float(torch.special.xlogy(freq, freq * counts.shape[0]).sum())
    return int((counts > 0).sum()), max(0.0, kl)  # max: rounding can give -1e-16 for a balanced histogram


def conditional_accuracy(probs_or_preds: Tensor, requested: Tensor) -> float:
    """Share of samples the classifier assigns to the class they were generated for ``[N]``."""
    t = torch.as_tensor(probs_or_preds)
    preds = t.argmax(dim=1) if t.ndim == 2 else t.long()  # [N]
    requested = torch.as_tensor(requested).long().cpu()  # [N]
    if preds.shape != requested.shape:
        raise ValueError(f"conditional_accuracy: {tuple(preds.shape)} predictions vs {tuple(requested.shape)}")
    return float((preds.cpu() == requested).double().mean())
