"""Every recipe's numbers, pinned: a hash of G's and D's weights and of both Adam states after a few
CPU steps, for every registered recipe plus the update-order and conditioning cases the recipes do not
cover. A refactor of the training code must reproduce them byte for byte; a deliberate change to a
recipe's maths changes its entry, and only its entry, in a commit that says why.

The hashes are computed in a subprocess whose CPU kernels are pinned (AVX2 code paths in ATen, oneDNN
and MKL, one thread, BLAS Linear), so they are the same on any x86-64 CPU with AVX2, whatever its
newer instructions. Regenerate (only with a reason) with::

    python tests/test_fingerprint.py --write
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).with_name("fixtures") / "fingerprints.json"
STEPS = 6

# name -> (recipe, overrides). Data: the bundled digits, resized to each recipe's shape (no download).
CASES: dict[str, tuple[str, list[str]]] = {
    "mnist-mlp": ("mnist-mlp", []),
    "mnist-conv": ("mnist-conv", []),
    "mnist-cgan": ("mnist-cgan", []),
    "anime-dcgan": ("anime-dcgan", []),
    "mnist-mlp-bn": ("mnist-mlp-bn", []),
    "digits-mlp": ("digits-mlp", []),
    "mnist-quick": ("mnist-quick", ["train.precision=bf16"]),
    "digits-quick": ("digits-quick", ["train.precision=bf16"]),
    "stacked-mnist-dcgan": ("stacked-mnist-dcgan", []),
    "stacked-mnist-modern": ("stacked-mnist-modern", []),
    "anime-modern": ("anime-modern", []),
    "anime-modern-hair": ("anime-modern-hair", ["data.labels=auto", "model.num_classes=10"]),
    "folder-modern": ("folder-modern", []),
    # cases beyond the recipes' own settings
    "mnist-mlp/fresh-noise": ("mnist-mlp", ["train.g_update=fresh-noise"]),
    "mnist-mlp/d_every=2": ("mnist-mlp", ["train.d_every=2"]),
    "mnist-mlp/simultaneous": ("mnist-mlp", ["train.g_update=simultaneous"]),
    "mnist-cgan/fresh-noise": ("mnist-cgan", ["train.g_update=fresh-noise", "train.g_every=2"]),
    "mnist-quick/unconditional-fp32": ("mnist-quick", ["model.num_classes=0", "train.precision=fp32"]),
    "mnist-quick/simultaneous-ema": ("mnist-quick", ["train.g_update=simultaneous", "train.precision=fp32"]),
}

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "GANFORGE_CPU_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "GANFORGE_CPU_LINEAR": "blas",
}


def case_overrides(recipe: str, extra: list[str]) -> list[str]:
    from ganforge.recipes import get_recipe

    cfg = get_recipe(recipe)
    batch = 16
    return [
        "data.dataset=digits",
        f"data.max_images={batch * STEPS}",
        f"train.batch_size={batch}",
        f"train.max_steps={STEPS}",
        f"train.epochs={max(cfg.train.epochs, 1)}",
        "train.max_time=0",
        "train.device=cpu",
        "train.progress=false",
        "eval.every=0",
        "eval.every_steps=0",
        *extra,
    ]


def fingerprint(checkpoint: Path) -> dict[str, str]:
    """sha256 over G, D and each optimiser's tensors, in key order, from a training checkpoint."""
    from ganforge.checkpoint import load_tensors

    tensors, _, _ = load_tensors(checkpoint)
    groups = {"generator": "generator.", "discriminator": "discriminator.", "adam_g": "optim_g.", "adam_d": "optim_d."}
    out = {}
    for name, prefix in groups.items():
        digest = hashlib.sha256()
        for key in sorted(k for k in tensors if k.startswith(prefix)):
            digest.update(key.encode())
            digest.update(tensors[key].contiguous().numpy().tobytes())
        out[name] = digest.hexdigest()[:32]
    return out


def compute_all(workdir: Path) -> dict[str, dict[str, str]]:
    """Run every case (in this process: call it under PINNED_ENV) and return its fingerprints."""
    import ganforge
    from ganforge.config import apply_overrides
    from ganforge.recipes import get_recipe

    results = {}
    for name, (recipe, extra) in CASES.items():
        cfg = get_recipe(recipe)
        apply_overrides(cfg, case_overrides(recipe, extra))
        out = workdir / name.replace("/", "_")
        ganforge.train(cfg, out=out)
        results[name] = fingerprint(out / "checkpoints" / "latest.safetensors")
    return results


def run_pinned(workdir: Path) -> dict[str, dict[str, str]]:
    env = {**os.environ, **PINNED_ENV}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import test_fingerprint as t; print(json.dumps(t.compute_all(Path(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _avx2_x86() -> bool:
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


@pytest.mark.skipif(not _avx2_x86(), reason="pinned kernels need an x86-64 CPU with AVX2")
def test_every_recipe_trains_to_the_pinned_numbers(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    assert set(expected) == set(CASES), "a case was added or removed: regenerate with a reason"
    got = run_pinned(tmp_path)
    wrong = {name: (got[name], expected[name]) for name in CASES if got[name] != expected[name]}
    assert not wrong, f"numbers changed for: {sorted(wrong)}"


if __name__ == "__main__":
    import tempfile

    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_fingerprint.py --write   (recomputes tests/fixtures/fingerprints.json)")
    with tempfile.TemporaryDirectory() as tmp:
        prints = run_pinned(Path(tmp))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(prints)} fingerprints to {FIXTURE}")
