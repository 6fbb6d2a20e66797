"""Draw a grid of images from a ganforge ONNX export, with only onnxruntime, numpy and pillow (no torch).

    ganforge train digits-quick --out runs/quickstart
    ganforge export runs/quickstart --format onnx --out digits.onnx
    python examples/onnx_sample.py digits.onnx --out grid.png --num 64 --seed 0

The model's inputs are ``z`` float32 [batch, latent_dim] (normal noise, mean and std in the model's
metadata) and, for a class-conditional model, ``labels`` int64 [batch]; its output is uint8 images
[batch, C, H, W] (a ``--raw`` export gives floats, mapped to pixels here with the data's mean/std).
A conditional model's grid has one row per class unless ``--class`` picks one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path: str | Path) -> tuple[ort.InferenceSession, dict]:
    """The session and the sizes it needs: latent_dim, num_classes, noise mean/std, data mean/std."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    inputs = {i.name: i for i in session.get_inputs()}
    info = {
        "latent_dim": int(meta.get("latent_dim", inputs["z"].shape[1])),
        "num_classes": int(meta.get("num_classes", 10 if "labels" in inputs else 0)),
        "noise_mean": float(meta.get("noise_mean", 0.0)),
        "noise_std": float(meta.get("noise_std", 1.0)),
        "data_mean": json.loads(meta.get("data_mean", "[0.5]")),
        "data_std": json.loads(meta.get("data_std", "[0.5]")),
    }
    return session, info


def draw_inputs(info: dict, num: int, seed: int, class_index: int | None = None) -> dict[str, np.ndarray]:
    """Noise (and labels) for ``num`` images; labels cycle through the classes unless ``class_index``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num, info["latent_dim"]), dtype=np.float32)  # [num, latent_dim]
    feeds = {"z": z * np.float32(info["noise_std"]) + np.float32(info["noise_mean"])}
    if info["num_classes"] > 0:
        labels = np.arange(num) % info["num_classes"] if class_index is None else np.full(num, class_index)
        feeds["labels"] = labels.astype(np.int64)  # [num]
    return feeds


def generate(session: ort.InferenceSession, info: dict, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 images [num, C, H, W] (a raw export's floats are denormalised, rounded and clamped)."""
    out = session.run(None, feeds)[0]
    if out.dtype == np.uint8:
        return out
    mean = np.asarray(info["data_mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(info["data_std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.round((out * std + mean) * 255.0), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, nrow: int, padding: int = 2) -> np.ndarray:
    """uint8 [N, C, H, W] -> one H' x W' (x 3) image: ``nrow`` tiles per row, white padding between them."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    canvas = np.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        canvas[:, top : top + h, left : left + w] = image
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a ganforge ONNX export (ganforge export RUN --format onnx --out FILE)")
    parser.add_argument("--out", default="grid.png", help="the PNG to write")
    parser.add_argument("--num", type=int, help="images (default 64, or 10 per class for a conditional model)")
    parser.add_argument("--nrow", type=int, help="images per grid row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class", dest="class_index", type=int, help="conditional models: this class only")
    args = parser.parse_args(argv)
    session, info = load(args.model)
    per_class = info["num_classes"] > 0 and args.class_index is None
    num = args.num or (10 * info["num_classes"] if per_class else 64)
    # a conditional grid shows class k in column k (labels cycle), so a row holds one of each class
    nrow = args.nrow or (info["num_classes"] if per_class else 8)
    images = generate(session, info, draw_inputs(info, num, args.seed, args.class_index))
    Image.fromarray(grid(images, nrow)).save(args.out)
    print(f"wrote a grid of {num} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
