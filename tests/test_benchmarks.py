"""The benchmark scripts' run definitions: every variant is a valid config whose networks build and
produce images of the variant's resolution (a typo in an override would otherwise surface an hour into
a benchmark run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from ganforge.config import apply_overrides, validate
from ganforge.models import build_models, freeze_discriminator_blocks
from ganforge.recipes import get_recipe

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their sibling helpers, as when run from there
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


ANIME = _load("anime_faces")


@pytest.mark.parametrize("name", list(ANIME.VARIANTS))
def test_every_anime_variant_is_a_valid_run_that_builds(name):
    recipe, overrides = ANIME.VARIANTS[name]
    cfg = get_recipe(recipe)
    apply_overrides(cfg, overrides)
    validate(cfg)
    generator, discriminator = build_models(cfg.model)
    with torch.no_grad():
        x_fake = generator(torch.randn(2, cfg.model.latent_dim), None)  # [2, 3, R, R]
        logits = discriminator(x_fake, None)  # [2]
    assert x_fake.shape == (2, 3, cfg.model.resolution, cfg.model.resolution)
    assert logits.numel() == 2


def test_anime_ablations_each_change_what_they_name():
    base = get_recipe("anime-modern")
    ablated = {}
    for name in ("no-augment", "no-spectral-norm", "no-ema", "rpgan-no-r1", "ada"):
        cfg = get_recipe("anime-modern")
        apply_overrides(cfg, ANIME.VARIANTS[name][1])
        ablated[name] = cfg
    assert base.augment.policy and not ablated["no-augment"].augment.policy
    assert base.model.spectral_norm and not ablated["no-spectral-norm"].model.spectral_norm
    assert base.train.ema_decay > 0 and ablated["no-ema"].train.ema_decay == 0
    assert ablated["rpgan-no-r1"].loss.r1_gamma == 0 and ablated["rpgan-no-r1"].loss.r2_gamma == 0
    assert not base.augment.adaptive and ablated["ada"].augment.adaptive
    assert ablated["ada"].augment.policy == base.augment.policy  # the same ops, only their probability adapts
    assert set(ANIME.DEFAULT) <= set(ANIME.VARIANTS)


FINETUNE = _load("anime_finetune")


def test_the_finetune_split_is_disjoint_sorted_and_links_the_originals(tmp_path):
    images = tmp_path / "faces" / "images"
    images.mkdir(parents=True)
    for name in ["07.jpg", "03.jpg", "11.png", "01.jpg", "05.jpeg", "notes.txt"]:
        (images / name).write_bytes(name.encode())
    large, small = FINETUNE.split_folder(tmp_path / "faces", tmp_path / "out", 3)
    assert sorted(p.name for p in (large / "images").iterdir()) == ["01.jpg", "03.jpg", "05.jpeg"]
    assert sorted(p.name for p in (small / "images").iterdir()) == ["07.jpg", "11.png"]  # the rest, no text file
    link = small / "images" / "11.png"
    assert link.is_symlink() and link.read_bytes() == b"11.png"
    FINETUNE.split_folder(tmp_path / "faces", tmp_path / "out", 3)  # a rerun reuses the links
    with pytest.raises(SystemExit, match="leaves none"):
        FINETUNE.split_folder(tmp_path / "faces", tmp_path / "again", 5)


def test_the_freeze_d_arm_leaves_the_modern_discriminator_blocks_to_train():
    _, discriminator = build_models(validate(get_recipe("anime-modern")).model)
    frozen = freeze_discriminator_blocks(discriminator, FINETUNE.FREEZE_D)
    assert frozen and any(p.requires_grad for p in discriminator.parameters())


def test_anime_benchmark_reuse_keeps_finished_variants_and_retrains_the_rest(tmp_path, monkeypatch):
    trained = []

    def fake_measure(name, marks, args, out):
        trained.append(name)
        (out / f"{name}-grid.png").write_bytes(b"png")
        return [{"variant": name, "mark_min": m, "train_s": 60.0 * m, "step": 10, "fd": 50.0} for m in marks]

    monkeypatch.setattr(ANIME, "real_vs_real", lambda args, out: {"fd": 0.5})
    monkeypatch.setattr(ANIME, "measure_variant", fake_measure)
    monkeypatch.setattr(ANIME, "plot_curves", lambda *a, **k: None)
    monkeypatch.setattr(ANIME, "side_by_side", lambda *a, **k: None)
    base = ["--out", str(tmp_path), "--minutes", "2", "--marks", "1,2", "--num", "100"]
    ANIME.main([*base, "--variants", "anime-dcgan"])
    (tmp_path / "anime-modern-grid.png").write_bytes(b"png")  # a variant stopped before its points were saved
    ANIME.main([*base, "--variants", "anime-dcgan,anime-modern", "--reuse"])
    assert trained == ["anime-dcgan", "anime-modern"]  # the finished one kept, the unfinished one trained
    ANIME.main([*base, "--variants", "anime-dcgan,anime-modern"])  # without --reuse: everything again
    ANIME.main([*base[:-4], "--marks", "2", "--num", "100", "--variants", "anime-modern", "--reuse"])
    assert trained == ["anime-dcgan", "anime-modern", "anime-dcgan", "anime-modern", "anime-modern"]  # other marks
    saved = json.loads((tmp_path / "anime-dcgan-points.json").read_text())
    assert saved["marks"] == [1.0, 2.0] and saved["num"] == 100 and saved["cpu"] == ANIME.cpu_label()
    combined = json.loads((tmp_path / "anime_faces.json").read_text())["points"]
    assert [p["mark_min"] for p in combined] == [2.0] and combined[0]["cpu"] == ANIME.cpu_label()


def test_anime_table_says_when_its_variants_ran_on_different_cpus(capsys):
    point = {"mark_min": 30.0, "train_s": 1800.0, "step": 10, "fd": 50.0}
    same = [{**point, "variant": v, "cpu": "AMD EPYC, AVX2, 2 CPUs"} for v in ("anime-dcgan", "anime-modern")]
    ANIME.print_table(same, {"fd": 0.5})
    assert "NOT one run" not in capsys.readouterr().out
    ANIME.print_table([same[0], {**same[1], "cpu": "AMD EPYC, AVX512, 2 CPUs"}], {"fd": 0.5})
    table = capsys.readouterr().out
    assert "NOT one run" in table and "anime-modern: AMD EPYC, AVX512, 2 CPUs" in table
    assert table.index("| real vs real") < table.index("NOT one run")  # after the table, not inside it
    ANIME.print_table([{**same[0], "run": "2026-12-01 20:00"}, {**same[1], "run": "2026-12-02 04:33"}], {"fd": 0.5})
    table = capsys.readouterr().out
    assert "NOT one run: the variants were measured by different invocations" in table
    assert "anime-modern: AMD EPYC, AVX2, 2 CPUs, started 2026-12-02 04:33" in table


def test_the_step_profile_times_real_steps_and_names_their_operators(tmp_path):
    """profile_step.py on the CPU: the recipe's steps are profiled at the run's batch size, with a positive
    wall time per step, no device-kernel figure, and the convolutions of a conv recipe at the top of the table."""
    profile_step = _load("profile_step")
    out = tmp_path / "profile.json"
    argv = ["digits-quick", "--device", "cpu", "--warmup", "2", "--steps", "3", "--json", str(out)]
    assert profile_step.main([*argv, "--set", "data.max_images=64", "--set", "train.batch_size=16"]) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["batch_size"] == 16 and result["wall_ms_per_step"] > 0
    assert result["kernel_ms_per_step"] is None  # no device kernels on the CPU
    assert any("convolution" in row["op"] for row in result["top"][:3]), result["top"][:3]
    assert result["runtime"].startswith("device cpu")
