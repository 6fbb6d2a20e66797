"""Cost per image of each network: FLOPs of one training step and images/s on this machine.

For every (arch, resolution, width) case: parameters of G and D; forward MFLOPs per image of G and of D;
MFLOPs per image of one plain training step (D step on a real and a detached fake batch, then a G step on
the same fake batch; BCE, Adam), counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matmuls, forward and backward); and images/s of that step at ``--batch``, best of ``--repeats`` timings
of ``--steps`` steps after a warm-up step, fp32, on the CPU with the threads torch picks, both per
wall-clock second and per CPU second of this process (``time.process_time``, all threads): on a machine
shared with other jobs the wall-clock figure measures the neighbours, the CPU-second one much less so
(an idle 2-core machine does at most about 2x the CPU-second figure per wall second).

``--grouped`` also times one dense 3x3 conv against grouped 3x3 convs of equal FLOPs (the core of
R3GAN's inverted-bottleneck blocks), forward + backward, to show what grouping costs per FLOP here.

What ganforge/models/resnet.py reports:

  nice -n 10 python benchmarks/model_cost.py --grouped
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ganforge.config import ModelConfig
from ganforge.models import build_models

# (label, ModelConfig fields): the DCGANs as their recipes build them, then the residual nets.
CASES: list[tuple[str, dict]] = [
    ("dcgan28 (mnist-quick)", dict(arch="dcgan28", latent_dim=64, num_classes=10, g_width=32, d_width=32)),
    ("cdcgan 64px (mnist-cgan)", dict(arch="cdcgan", resolution=64, num_classes=10)),
    ("dcgan96 (anime-dcgan)", dict(arch="dcgan96", resolution=96, channels=3)),
    *[
        (f"resnet {r}px w={w}", dict(arch="resnet", resolution=r, channels=3, g_width=w, d_width=w))
        for r in (64, 96)
        for w in (8, 12, 16, 32)
    ],
]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_step(cfg: ModelConfig, batch: int):
    torch.manual_seed(0)
    generator, discriminator = build_models(cfg)
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    x_real = torch.rand(batch, cfg.channels, cfg.resolution, cfg.resolution) * 2 - 1
    labels = torch.arange(batch) % cfg.num_classes if cfg.num_classes else None

    def step() -> None:
        x_fake = generator(torch.randn(batch, cfg.latent_dim), labels)
        d_loss = (
            F.softplus(-discriminator(x_real, labels)).mean()
            + F.softplus(discriminator(x_fake.detach(), labels)).mean()
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-discriminator(x_fake, labels)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return generator, discriminator, step, labels


def forward_mflops(module: torch.nn.Module, *inputs) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 1e6


def measure(label: str, fields: dict, batch: int, steps: int, repeats: int) -> None:
    cfg = ModelConfig(**fields)
    generator, discriminator, step, labels = make_step(cfg, batch)
    z = torch.randn(batch, cfg.latent_dim)
    g_fwd = forward_mflops(generator, z, labels) / batch
    d_fwd = forward_mflops(discriminator, generator(z, labels).detach(), labels) / batch
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    step_mflops = counter.get_total_flops() / 1e6 / batch
    step()  # warm-up outside the counter (oneDNN builds its kernels on first use)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    images = steps * batch
    print(
        f"{label:26s} {n_params(generator) / 1e6:6.2f}M {n_params(discriminator) / 1e6:6.2f}M "
        f"{g_fwd:8.0f} {d_fwd:8.0f} {step_mflops:9.0f} {images / min(wall):8.1f} {images / min(cpu):9.1f}"
    )


def time_conv(conv: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        inp = x.clone().requires_grad_(True)
        start = time.perf_counter()
        conv(inp).square().mean().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def grouped_versus_dense(repeats: int) -> None:
    """Equal FLOPs: dense 64->64 3x3 against 256->256 3x3 with 16 groups (16 channels each) and 4096
    depthwise channels (1 each); 32 images at 24x24 (a middle stage at 96 px)."""
    torch.manual_seed(0)
    cases = [
        ("dense 64->64", torch.nn.Conv2d(64, 64, 3, padding=1), 64),
        ("grouped 256->256, 16 groups", torch.nn.Conv2d(256, 256, 3, padding=1, groups=16), 256),
        ("depthwise 4096", torch.nn.Conv2d(4096, 4096, 3, padding=1, groups=4096), 4096),
    ]
    print("\n3x3 conv forward+backward at equal FLOPs (32 x C x 24 x 24), best of", repeats)
    for label, conv, channels in cases:
        x = torch.randn(32, channels, 24, 24)
        # closed form: forward, input gradient and weight gradient are each 2 * MACs
        macs = conv.weight.numel() * 24 * 24 * 32
        seconds = time_conv(conv, x, repeats)
        print(f"  {label:28s} {seconds * 1e3:7.1f} ms  {3 * 2 * macs / seconds / 1e9:6.1f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    parser.add_argument("--grouped", action="store_true", help="also time dense against grouped convs")
    args = parser.parse_args()
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(
        f"{'case':26s} {'G':>7s} {'D':>7s} {'G MFLOP':>8s} {'D MFLOP':>8s} {'step MFLOP':>9s} {'img/s':>8s} "
        f"{'img/CPU-s':>9s}"
    )
    for label, fields in CASES:
        if args.only in label:
            measure(label, fields, args.batch, args.steps, args.repeats)
    if args.grouped:
        grouped_versus_dense(args.repeats)


if __name__ == "__main__":
    main()
