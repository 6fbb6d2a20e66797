"""Stacked MNIST: three MNIST digits as the R, G and B channels of one 28x28 image, 1,000 modes.

The standard mode-collapse benchmark (Metz et al. 2017, "Unrolled GANs"; VEEGAN, Srivastava et al.
2017; PacGAN, Lin et al. 2018). A stack's mode is its digit triple; its label is the mode index
``100 * d_R + 10 * d_G + d_B`` (class names "000".."999"), so a conditional model could use it,
although the recipes train unconditionally.

How the stacks are drawn (``stack_indices``), from ``data.stacked_seed`` alone (not ``train.seed``:
every training seed trains, and is scored, on the same stacks):

* Stratified modes: each of the 1,000 modes occurs ``size // 1000`` times, and the remaining
  ``size % 1000`` stacks take distinct modes drawn at random; then the order is shuffled. So the
  data's own mode histogram is uniform (exactly so when ``size`` is a multiple of 1,000), and a
  perfect generator's KL to uniform is pure sampling noise.
* Each channel's image is drawn uniformly, with replacement, among the split's images of that
  channel's digit.

This differs from VEEGAN's and PacGAN's code, which draw the three images uniformly from all of
MNIST: the digits' unequal frequencies (8.9-11.4% of the test split) then make the data's mode
distribution itself non-uniform, KL 0.005 to uniform on the test split (3x the digits' KL).

Built from whatever MNIST split ``data.split`` names (``--split test`` works with the test files
alone), then cached like any dataset: the fingerprint covers the MNIST files, the split, the size
and the seed.
"""

from __future__ import annotations

import dataclasses

import torch

from ganforge.config import DataConfig
from ganforge.data.core import Decoded, to_model_format
from ganforge.errors import ConfigError, DataError

NUM_DIGITS = 10
NUM_MODES = NUM_DIGITS**3  # 1,000
MODE_WEIGHTS = (100, 10, 1)  # mode index = 100 d_R + 10 d_G + d_B
STACK_VERSION = 1  # bump when the drawing changes, so cached stacks are never reused
CHANNEL_DATASET = "mnist"  # what each channel holds: the per-channel evaluator is this dataset's classifier


def channel_source(cfg: DataConfig) -> DataConfig:
    """The MNIST config whose images fill the channels (same root and split; all its images)."""
    return dataclasses.replace(cfg, dataset=CHANNEL_DATASET, max_images=0, labels="auto", hflip=False)


def mode_index(digits: torch.Tensor) -> torch.Tensor:
    """int64 digits [..., 3] (R, G, B) -> mode indices [...] in 0..999."""
    weights = torch.tensor(MODE_WEIGHTS, dtype=torch.long, device=digits.device)  # [3]
    return (digits.long() * weights).sum(dim=-1)


def mode_digits(modes: torch.Tensor) -> torch.Tensor:
    """Inverse of ``mode_index``: mode indices [...] -> digits [..., 3] (R, G, B)."""
    modes = modes.long()
    return torch.stack([modes // 100, (modes // 10) % 10, modes % 10], dim=-1)


def stratified_modes(size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` mode indices [size]: every mode ``size // 1000`` times, the rest distinct at random, shuffled."""
    full, rest = divmod(size, NUM_MODES)
    modes = torch.cat([torch.arange(NUM_MODES).repeat(full), torch.randperm(NUM_MODES, generator=generator)[:rest]])
    return modes[torch.randperm(size, generator=generator)]  # [size]


def stack_indices(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which MNIST images make each stack: (image indices [size, 3], mode indices [size]).

    ``labels`` are the split's digit labels [M]. Deterministic in (labels, size, seed).
    """
    labels = labels.long()
    missing = [d for d in range(NUM_DIGITS) if not (labels == d).any()]
    if missing:
        raise DataError(
            f"stacked-mnist needs images of every digit; this MNIST split has none of {missing}: "
            "use the full split (data.max_images does not apply to the digits the stacks are drawn from)"
        )
    gen = torch.Generator().manual_seed(seed)
    modes = stratified_modes(size, gen)  # [size]
    digits = mode_digits(modes)  # [size, 3]
    index = torch.empty(size, 3, dtype=torch.long)
    for channel in range(3):
        for d in range(NUM_DIGITS):
            pool = (labels == d).nonzero().squeeze(1)  # [m_d] images of digit d
            at = (digits[:, channel] == d).nonzero().squeeze(1)  # [n_d] stacks whose channel shows d
            index[at, channel] = pool[torch.randint(len(pool), (len(at),), generator=gen)]
    return index, modes


def build_stacks(mnist: Decoded, cfg: DataConfig, channels: int, resolution: int) -> Decoded:
    """Decoded MNIST (uint8 [M, 1, 28, 28], labels [M]) -> stacked uint8 [N, 3, R, R], mode labels [N]."""
    assert mnist.labels is not None
    index, modes = stack_indices(mnist.labels, cfg.stacked_size, cfg.stacked_seed)  # [S, 3], [S]
    if cfg.max_images > 0:  # the first N stacks of the full draw, before the (slow) gather and resize
        index, modes = index[: cfg.max_images], modes[: cfg.max_images]
    planes = mnist.images[:, 0]  # uint8 [M, 28, 28]
    images = planes[index]  # uint8 [N, 3, 28, 28]: channel c = image index[:, c]
    images = to_model_format(images, channels, resolution)  # uint8 [N, 3, R, R]
    return Decoded(images, modes, [f"{m:03d}" for m in range(NUM_MODES)])


def check_channels(channels: int) -> None:
    if channels != 3:
        raise ConfigError(f"stacked-mnist images are RGB, one digit per channel: set model.channels=3 (got {channels})")
