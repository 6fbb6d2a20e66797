"""Cost of DiffAugment's color,translation,cutout: ganforge.augment against kornia's nearest equivalent.

Times forward + backward (the gradient w.r.t. the input, as in a G step through the augmentation) of one
batch, best of ``--repeats`` after a warm-up, on the CPU with the threads torch picks. kornia's pipeline is
ColorJiggle(brightness, contrast, saturation) + RandomAffine(translate=1/8) + RandomErasing(1/4 of the area),
all with p=1; it is not the same maths (it clamps colours to [0, 1] and translates bilinearly), only the
closest library stand-in, so this compares cost, not outputs. What the module docstring of
ganforge/augment.py reports:

  nice -n 10 python benchmarks/augment_cost.py --batch 64 --resolution 96 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from ganforge.augment import Augmentation


def best_time(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Seconds, best of ``repeats``, for one forward + backward of ``fn`` at ``x``."""
    times = []
    for i in range(repeats + 1):
        inp = x.clone().requires_grad_(True)
        start = time.perf_counter()
        fn(inp).square().mean().backward()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return min(times)


def kornia_pipeline() -> Callable[[torch.Tensor], torch.Tensor]:
    import kornia.augmentation as K

    pipeline = torch.nn.Sequential(
        K.ColorJiggle(brightness=0.5, contrast=0.5, saturation=1.0, p=1.0),
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="zeros", p=1.0),
        K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0, p=1.0),
    )
    return lambda x: pipeline(x * 0.5 + 0.5)  # kornia's colour ops expect [0, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
    ours = Augmentation("color,translation,cutout")
    generator = torch.Generator().manual_seed(0)
    ganforge_s = best_time(lambda inp: ours(inp, generator, 1.0), x, args.repeats)
    kornia_s = best_time(kornia_pipeline(), x, args.repeats)
    shape = f"{args.batch}x3x{args.resolution}x{args.resolution}"
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"forward+backward of color,translation,cutout on {shape}, best of {args.repeats}:")
    print(f"  ganforge.augment  {ganforge_s * 1e3:7.1f} ms")
    print(f"  kornia            {kornia_s * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
