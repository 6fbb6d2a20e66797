"""Shared fixtures: tiny data for every recipe, and short runs the CLI tests reuse."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Dataset and evaluator caches go to a temporary folder unless the caller chose one (CI does)."""
    if "GANFORGE_CACHE" not in os.environ:
        os.environ["GANFORGE_CACHE"] = str(tmp_path_factory.mktemp("ganforge-cache"))
    yield


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """Runs train on one CPU thread unless the caller chose a count: a small model's thread count comes from a
    timed probe (training/fastpath.py), which two runs that a test compares bit for bit could answer
    differently. The probe's own tests unset this (test_speed.py, test_precision.py)."""
    if "GANFORGE_CPU_THREADS" not in os.environ:
        os.environ["GANFORGE_CPU_THREADS"] = "1"
    yield


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory) -> Path:
    """16 random RGB 96x96 JPEGs standing in for the anime faces."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.jpg")
    return root


def tiny_args(recipe: str, face_folder: Path) -> list[str]:
    """CLI arguments that make `recipe` run on tiny, download-free data (2 steps = 1 epoch), without the
    quality evaluations a recipe may schedule (stacked-mnist-dcgan's: 10,000 samples through a classifier)."""
    off = ["--set", "eval.every=0"]
    if recipe == "anime-dcgan":
        return ["--data-root", str(face_folder), "--batch-size", "8", "--set", "data.max_images=16", *off]
    if recipe == "anime-modern-hair":  # conditional on a CSV column: the digits' own 10 classes stand in
        off += ["--set", "data.labels=auto", "--set", "model.num_classes=10"]
    return ["--set", "data.dataset=digits", "--set", "data.max_images=16", "--batch-size", "8", *off]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, face_folder) -> dict[str, Path]:
    """One epoch (2 steps) of every recipe through the CLI; recipe -> run directory."""
    from ganforge.cli import main
    from ganforge.recipes import RECIPES

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for recipe in RECIPES.names():
        out = root / recipe
        code = main(
            [
                "train",
                recipe,
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "train.progress=false",
                *tiny_args(recipe, face_folder),
            ]
        )
        assert code == 0, recipe
        runs[recipe] = out
    return runs
