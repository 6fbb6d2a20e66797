"""Faithful plain-PyTorch reference loops for the five seed systems (``docs/seed-systems.md``).

Written the way the original scripts are written, because that is what ganforge is measured
against: a ``Dataset`` that hands out PIL images, per-sample torchvision transforms in a
``DataLoader``, ``nn.Sequential`` networks ending in ``Sigmoid`` with ``BCELoss``, plain
``torch.optim.Adam``, ``zero_grad()`` and a ``.item()`` per step for the running loss.
Nothing here imports ganforge: the two sides share only the data files.

Deliberately kept, as the originals do them (they cost time, and a user of the original pays it):
  - mnist-conv: the fake in the D step is not detached, so D's backward also runs through G;
  - every G step back-propagates into D's weights too (the originals zero them before the next D step);
  - anime-dcgan: the D-step fake is built with autograd on, then detached;
  - one ``.item()`` host read per step for the loss log.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

NZ = 100


# ------------------------------------------------------------------------------------------------ data
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_file(root: Path, stem: str) -> Path:
    for base in (root / "MNIST" / "raw", root / "raw", root):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(f"{stem}(.gz) not found under {root}")


class MNISTPIL(Dataset):
    """torchvision.datasets.MNIST's behaviour without its download/processed-file logic:
    one uint8 array in memory, each item a PIL "L" image passed through ``transform``."""

    def __init__(self, root: str | Path, split: str, transform: Callable) -> None:
        prefix = "train" if split == "train" else "t10k"
        root = Path(root)
        self.data = _read_idx(_mnist_file(root, f"{prefix}-images-idx3-ubyte"))  # uint8 [N, 28, 28]
        self.targets = _read_idx(_mnist_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)  # [N]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.data[i], mode="L")
        return self.transform(img), int(self.targets[i])


def _mnist_loader(root: str, split: str, transform: Callable, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(MNISTPIL(root, split, transform), batch_size=batch_size, shuffle=True, num_workers=workers)


# ------------------------------------------------------------------------------------------------ nets
def dcgan_weights_init(m: nn.Module) -> None:
    """The DCGAN example's init: conv weights N(0, 0.02), BatchNorm weight N(1, 0.02), bias 0."""
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class View(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], *self.shape)


class CondG(nn.Module):
    """mnist-cgan G: cat([z, onehot]) as 110x1x1 through the transposed-conv stack."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [NZ + 10, 512, 256, 128, 64]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.ConvTranspose2d(a, b, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False)]
            layers += [nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(64, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.main(torch.cat([z, onehot], 1).view(-1, NZ + 10, 1, 1))


class CondD(nn.Module):
    """mnist-cgan D: the image plus 10 label planes (11 channels) through the conv stack, Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(11, 64, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(128, 256, 4, 2, 1, bias=False),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(256, 512, 4, 2, 1, bias=False),
            nn.BatchNorm2d(512),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(512, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        return self.main(torch.cat([x, fill], 1))


def anime_g(ngf: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, ngf * 8, 4, 1, 0, bias=False),
        nn.BatchNorm2d(ngf * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 5, 3, 1, bias=False),
        nn.Tanh(),
    )


def anime_d(ndf: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, ndf, 5, 3, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=True),
        nn.Sigmoid(),
    )


# ------------------------------------------------------------------------------------------------ loops
@dataclass
class Reference:
    """A ready-to-run reference system: ``steps(n)`` runs n training batches (cycling epochs)."""

    name: str
    batch_size: int
    step: Callable[[int, tuple], None]  # (batch index in epoch, batch from the DataLoader)
    loader: DataLoader
    device: torch.device

    def batches(self) -> Iterator[tuple[int, tuple]]:
        while True:
            yield from enumerate(self.loader)

    def run(self, n: int, it: Iterator[tuple[int, tuple]]) -> None:
        for _ in range(n):
            i, batch = next(it)
            self.step(i, batch)


def _mnist_mlp(root: str, split: str, device: torch.device, workers: int) -> Reference:
    import torchvision.transforms as T

    loader = _mnist_loader(root, split, T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))]), 64, workers)
    G = nn.Sequential(nn.Linear(NZ, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784), nn.Tanh()).to(
        device
    )
    D = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.LeakyReLU(0.01),
        nn.Linear(512, 256),
        nn.LeakyReLU(0.01),
        nn.Linear(256, 1),
        nn.Sigmoid(),
    ).to(device)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=1e-4), torch.optim.Adam(D.parameters(), lr=1e-4)
    bce = nn.BCELoss()
    sums = [0.0, 0.0]

    def step(i: int, batch: tuple) -> None:
        x = batch[0].to(device)
        b = x.shape[0]
        ones, zeros = torch.ones(b, 1, device=device), torch.zeros(b, 1, device=device)
        fake = G(torch.randn(b, NZ, device=device)).view(b, 1, 28, 28)
        opt_d.zero_grad()
        d_loss = bce(D(x), ones) + bce(D(fake.detach()), zeros)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(D(fake), ones)  # the same fake batch, scored by the updated D
        g_loss.backward()
        opt_g.step()
        sums[0] += d_loss.item()  # per-epoch summed losses, as the original plots them
        sums[1] += g_loss.item()

    return Reference("mnist-mlp", 64, step, loader, device)


def _mnist_conv(root: str, split: str, device: torch.device, workers: int) -> Reference:
    import torchvision.transforms as T

    loader = _mnist_loader(root, split, T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]), 16, workers)
    G = nn.Sequential(
        nn.Linear(NZ, 3136),
        View(1, 56, 56),
        nn.BatchNorm2d(1),
        nn.ReLU(True),
        nn.Conv2d(1, 50, 3, 1, 1),
        nn.BatchNorm2d(50),
        nn.ReLU(True),
        nn.Conv2d(50, 25, 3, 1, 1),
        nn.BatchNorm2d(25),
        nn.ReLU(True),
        nn.Conv2d(25, 1, 2, 2, 0),
        nn.Tanh(),
    ).to(device)
    D = nn.Sequential(
        nn.Conv2d(1, 32, 5, 1, 2),
        nn.LeakyReLU(0.2, True),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(32, 64, 5, 1, 2),
        nn.LeakyReLU(0.2, True),
        nn.AvgPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1024),
        nn.LeakyReLU(0.2, True),
        nn.Linear(1024, 1),
        nn.Sigmoid(),
    ).to(device)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=3e-4), torch.optim.Adam(D.parameters(), lr=3e-4)
    bce = nn.BCELoss()
    log: list[tuple[float, ...]] = []

    def step(i: int, batch: tuple) -> None:
        x = batch[0].to(device)
        b = x.shape[0]
        ones, zeros = torch.ones(b, 1, device=device), torch.zeros(b, 1, device=device)
        d_real = D(x)
        d_fake = D(G(torch.randn(b, NZ, device=device)))  # not detached, as in the original
        d_loss = bce(d_real, ones) + bce(d_fake, zeros)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(D(G(torch.randn(b, NZ, device=device))), ones)  # a new z2
        g_loss.backward()
        opt_g.step()
        if i % 100 == 0:
            log.append((d_loss.item(), g_loss.item(), d_real.mean().item(), d_fake.mean().item()))

    return Reference("mnist-conv", 16, step, loader, device)


def _mnist_cgan(root: str, split: str, device: torch.device, workers: int) -> Reference:
    import torchvision.transforms as T

    tf = T.Compose([T.Resize(64), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    loader = _mnist_loader(root, split, tf, 128, workers)
    G, D = CondG().to(device), CondD().to(device)
    G.apply(dcgan_weights_init)
    D.apply(dcgan_weights_init)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    onehot = torch.eye(10, device=device)  # [10, 10]
    fill = torch.eye(10, device=device).view(10, 10, 1, 1).expand(10, 10, 64, 64).contiguous()  # label planes
    log: list[tuple[float, ...]] = []

    def step(i: int, batch: tuple) -> None:
        x, y = batch[0].to(device), batch[1].to(device)
        b = x.shape[0]
        ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
        D.zero_grad()
        out = D(x, fill[y]).view(-1)
        err_real = bce(out, ones)
        err_real.backward()
        d_x = out.mean().item()
        y_fake = torch.randint(0, 10, (b,), device=device)
        fake = G(torch.randn(b, NZ, device=device), onehot[y_fake])
        out = D(fake.detach(), fill[y_fake]).view(-1)
        err_fake = bce(out, zeros)
        err_fake.backward()
        d_g_z1 = out.mean().item()
        opt_d.step()
        G.zero_grad()
        out = D(fake, fill[y_fake]).view(-1)  # the same fake batch, scored by the updated D
        err_g = bce(out, ones)
        err_g.backward()
        d_g_z2 = out.mean().item()
        opt_g.step()
        log.append(((err_real + err_fake).item(), err_g.item(), d_x, d_g_z1, d_g_z2))  # the text logs

    return Reference("mnist-cgan", 128, step, loader, device)


def _anime_dcgan(root: str, split: str, device: torch.device, workers: int) -> Reference:
    import torchvision as tv
    import torchvision.transforms as T

    tf = T.Compose([T.Resize(96), T.CenterCrop(96), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    dataset = tv.datasets.ImageFolder(root, transform=tf)
    loader = DataLoader(dataset, batch_size=256, shuffle=True, num_workers=workers, drop_last=True)
    G, D = anime_g().to(device), anime_d().to(device)
    G.apply(dcgan_weights_init)
    D.apply(dcgan_weights_init)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    noises = torch.randn(256, NZ, 1, 1, device=device)
    meters = [0.0, 0.0]
    d_every, g_every = 1, 5

    def step(i: int, batch: tuple) -> None:
        real = batch[0].to(device)
        b = real.shape[0]
        ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
        if i % d_every == 0:
            opt_d.zero_grad()
            err_real = bce(D(real).view(-1), ones)
            err_real.backward()
            noises.data.copy_(torch.randn(b, NZ, 1, 1, device=device))
            fake = G(noises).detach()  # built with autograd on, then detached (as the original)
            err_fake = bce(D(fake).view(-1), zeros)
            err_fake.backward()
            opt_d.step()
            meters[0] += (err_real + err_fake).item()
        if i % g_every == 0:
            opt_g.zero_grad()
            noises.data.copy_(torch.randn(b, NZ, 1, 1, device=device))
            err_g = bce(D(G(noises)).view(-1), ones)
            err_g.backward()
            opt_g.step()
            meters[1] += err_g.item()

    return Reference("anime-dcgan", 256, step, loader, device)


def _mnist_mlp_bn(root: str, split: str, device: torch.device, workers: int) -> Reference:
    # The Keras original loads the arrays whole and scales them to [-1, 1]; tf.data shuffles and batches.
    data = MNISTPIL(root, split, transform=lambda img: img)
    x = (torch.from_numpy(data.data.copy()).float() - 127.5) / 127.5  # [N, 28, 28]
    loader = DataLoader(TensorDataset(x.unsqueeze(1)), batch_size=256, shuffle=True, num_workers=workers)
    G = nn.Sequential(
        nn.Linear(NZ, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.LeakyReLU(0.01),
        nn.Linear(256, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.LeakyReLU(0.01),
        nn.Linear(512, 784, bias=False),
        nn.Tanh(),
    ).to(device)
    D = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.LeakyReLU(0.01),
        nn.Linear(512, 256),
        nn.LeakyReLU(0.01),
        nn.Linear(256, 1),
    ).to(device)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=1e-4), torch.optim.Adam(D.parameters(), lr=1e-4)
    bce = nn.BCEWithLogitsLoss()  # Keras BinaryCrossentropy(from_logits=True)
    g_params, d_params = list(G.parameters()), list(D.parameters())
    sums = [0.0, 0.0]

    def step(i: int, batch: tuple) -> None:
        real = batch[0].to(device)
        b = real.shape[0]
        fake = G(torch.randn(b, NZ, device=device)).view(b, 1, 28, 28)
        real_out, fake_out = D(real), D(fake)
        g_loss = bce(fake_out, torch.ones_like(fake_out))
        d_loss = bce(real_out, torch.ones_like(real_out)) + bce(fake_out, torch.zeros_like(fake_out))
        # two GradientTapes over one forward
        g_grads = torch.autograd.grad(g_loss, g_params, retain_graph=True)
        d_grads = torch.autograd.grad(d_loss, d_params)
        for p, g in zip(g_params, g_grads):
            p.grad = g
        for p, g in zip(d_params, d_grads):
            p.grad = g
        opt_g.step()
        opt_d.step()
        sums[0] += d_loss.item()
        sums[1] += g_loss.item()

    return Reference("mnist-mlp-bn", 256, step, loader, device)


BUILDERS: dict[str, Callable[[str, str, torch.device, int], Reference]] = {
    "mnist-mlp": _mnist_mlp,
    "mnist-conv": _mnist_conv,
    "mnist-cgan": _mnist_cgan,
    "anime-dcgan": _anime_dcgan,
    "mnist-mlp-bn": _mnist_mlp_bn,
}
# DataLoader workers as the originals set them (the anime original uses 4; the MNIST scripts the default 0).
WORKERS = {"anime-dcgan": 4}


def build_reference(name: str, root: str, split: str, device: torch.device, workers: int | None = None) -> Reference:
    if workers is None:
        workers = WORKERS.get(name, 0)
    return BUILDERS[name](root, split, device, workers)


def main(argv: list[str] | None = None) -> int:
    """One reference training as a whole process, as a user runs the original script: import, build the data
    pipeline and networks, train ``--steps`` batches (cycling epochs). The originals' own outputs (loss prints,
    per-epoch grids) are left out, so this is the reference's lower bound."""
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("recipe", choices=sorted(BUILDERS))
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    ref = build_reference(args.recipe, args.data_root, args.split, torch.device(args.device))
    ref.run(args.steps, ref.batches())
    seconds = time.perf_counter() - start
    print(json.dumps({"recipe": args.recipe, "steps": args.steps, "batch_size": ref.batch_size, "train_s": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
