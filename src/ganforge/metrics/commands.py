"""CLI sub-commands ``evaluate`` and ``train-evaluator`` (registered by ``ganforge.cli``).

Everything heavy (the data, the sampling API, the networks) is imported inside the commands, so
``ganforge --help`` stays fast and never touches a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch

from ganforge.cliargs import POSITIVE, SEED, whole
from ganforge.errors import ConfigError

EVALUATE_EXAMPLES = """\
    examples:
      ganforge evaluate runs/mnist-mlp-*/ --json scores.json
      ganforge evaluate runs/mnist-cgan-*/checkpoints/epoch-0010.safetensors --metrics fd,kid,conditional_accuracy
      ganforge evaluate --real-vs-real --dataset mnist --data-root ../shared/data/mnist --split test
      ganforge evaluate --noise --dataset mnist --data-root ../shared/data/mnist --split test
      ganforge evaluate RUN --metrics fid --inception-weights pt_inception-2015-12-05-6726825d.pth

    Results name their extractor (fd_mnist-classifier); only InceptionV3's FD is "fid".
    Read them against --real-vs-real (the floor for this many samples) and --noise (the ceiling).
    """

TRAIN_EVALUATOR_EXAMPLES = """\
    examples:
      ganforge train-evaluator mnist --data-root ../shared/data/mnist --split test
      ganforge train-evaluator image-folder --data-root ../shared/data/anime-faces \\
          --set data.label_csv=tags.csv --set data.label_column=hair --resolution 64

    The classifier is stored in the cache (ganforge.data.cache_dir()/evaluators), keyed by the
    data's content fingerprint; `evaluate` and training-time evaluation find it there.
    """

DEFAULT_NUM = 5000
DEFAULT_NUM_FOR = {"stacked-mnist": 10_000}  # `modes` is read at >= 10 samples per mode (1,000 modes)


def default_num(dataset: str) -> int:
    """``--num`` when not given: DEFAULT_NUM, or more where a metric needs it."""
    return DEFAULT_NUM_FOR.get(dataset, DEFAULT_NUM)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data.root: where the dataset is")
    p.add_argument("--split", help="data.split: train or test")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set a data field, e.g. --set data.label_column=hair (repeatable)")  # fmt: skip
    p.add_argument(
        "--channels", type=int, choices=(1, 3), help="load the data with this many channels (default: native)"
    )
    p.add_argument("--resolution", type=POSITIVE, help="load the data at this size (no checkpoint: native)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")


def add_commands(subparsers: Any) -> None:
    """Add ``evaluate`` and ``train-evaluator`` to the main parser's sub-parsers."""
    ev = subparsers.add_parser(
        "evaluate", help="sample-quality metrics of a run or checkpoint (offline)",
        formatter_class=_formatter, epilog=textwrap.dedent(EVALUATE_EXAMPLES),
    )  # fmt: skip
    ev.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        metavar="CKPT_OR_RUN",
        help="run directory or .safetensors checkpoint (omit with --noise/--real-vs-real --dataset)",
    )
    ev.add_argument("--noise", action="store_true", help="evaluate uniform noise images (sanity ceiling)")
    ev.add_argument(
        "--real-vs-real",
        action="store_true",
        help="compare two disjoint halves of the real data (the floor for this many samples)",
    )
    ev.add_argument("--dataset", help="dataset for --noise/--real-vs-real without a checkpoint (e.g. mnist)")
    ev.add_argument(
        "--metrics",
        default="fd,kid,pr,classifier_score,coverage,conditional_accuracy,modes",
        help="comma-separated: fd, kid, pr, classifier_score, coverage, conditional_accuracy, modes, fid",
    )
    ev.add_argument(
        "--num",
        type=whole(4),
        help=f"generated images (and real images) to compare (default {DEFAULT_NUM}; stacked-mnist "
        f"{default_num('stacked-mnist')}: modes are read at 10 samples per mode)",
    )
    ev.add_argument("--json", type=Path, help="write the results here (default: next to the checkpoint)")
    ev.add_argument(
        "--extractor",
        help="auto (the dataset's classifier), classifier, inception, or an evaluator "
        "file (default: the run's eval.extractor)",
    )
    ev.add_argument("--inception-weights", metavar="FILE", help="InceptionV3 weights (.pth) for --extractor inception")
    ev.add_argument("--seed", type=SEED, default=0, help="noise and subset seed, in [0, 2**63)")
    ev.add_argument("--batch-size", type=POSITIVE, default=256, help="generator batch size")
    ev.add_argument("--no-cache", action="store_true", help="recompute the real statistics")
    _data_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    te = subparsers.add_parser(
        "train-evaluator", help="train the offline classifier evaluator for a labelled dataset",
        formatter_class=_formatter, epilog=textwrap.dedent(TRAIN_EVALUATOR_EXAMPLES),
    )  # fmt: skip
    te.add_argument("dataset", help="dataset name (mnist, fashion-mnist, cifar10, digits, image-folder)")
    te.add_argument("--epochs", type=POSITIVE, help="training epochs (default: about 32k images seen, 1..20 epochs)")
    te.add_argument("--force", action="store_true", help="retrain even if an evaluator for this data is cached")
    _data_args(te)
    te.set_defaults(func=cmd_train_evaluator)


# --------------------------------------------------------------------------- helpers


def _device(text: str) -> torch.device:
    from ganforge.device import select_device

    return select_device(text)


def _data_config(base: Any, args: argparse.Namespace) -> Any:
    """``base`` DataConfig (copied) with --data-root, --split and data.* --set overrides applied."""
    from ganforge.config import RunConfig, apply_overrides

    cfg = RunConfig()
    cfg.data = copy.deepcopy(base)
    if args.data_root:
        cfg.data.root = args.data_root
    if args.split:
        cfg.data.split = args.split
    for item in args.overrides:
        if not item.strip().startswith("data."):
            raise ConfigError(f"--set {item}: only data.* fields apply here (e.g. --set data.label_column=hair)")
    apply_overrides(cfg, args.overrides)
    if cfg.data.label_column and cfg.data.labels == "auto":
        cfg.data.labels = "csv"  # naming a label column means "labels from the CSV"
    if cfg.data.labels == "csv" and not cfg.data.label_csv:
        cfg.data.label_csv = _single_csv(Path(cfg.data.root))
    return cfg.data


def _single_csv(root: Path) -> str:
    found = sorted(root.expanduser().glob("*.csv")) if root.expanduser().is_dir() else []
    if len(found) == 1:
        return found[0].name
    raise ConfigError("data.labels=csv needs data.label_csv: add --set data.label_csv=FILE (e.g. tags.csv)")


def _format(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.4e}"
    return f"{value:.4f}"


def _print_table(results: dict[str, float], skipped: dict[str, str], header: str) -> None:
    print(header)
    width = max([len(k) for k in results] + [6])
    for key, value in results.items():
        print(f"  {key:<{width}}  {_format(value)}")
    for name, why in skipped.items():
        print(f"  {name:<{width}}  skipped: {why}")


def _default_json(checkpoint: Path) -> Path:
    return checkpoint / "evaluation.json" if checkpoint.is_dir() else checkpoint.with_suffix(".eval.json")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from ganforge.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _check_outputs(json_path: Path | None, use_cache: bool) -> None:
    """Before any work: the results file must be writable (an error); the real-statistics cache should be (a
    warning: it only saves time). An evaluator that must be trained checks its own cache before training."""
    import warnings

    from ganforge.checkpoint import check_output_space
    from ganforge.errors import CacheWarning
    from ganforge.metrics import cache

    if json_path is not None:
        check_output_space(json_path.parent, 1 << 20, "--json folder")
    problem = cache.writable_problem(cache.stats_dir(), 64 << 20) if use_cache else None
    if problem is not None:
        cache.mark_unwritable(cache.stats_dir())
        warnings.warn(f"real-set statistics will not be cached ({problem})", CacheWarning, 2)


# --------------------------------------------------------------------------- commands


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ganforge.data import load_dataset
    from ganforge.metrics.core import parse_metric_list
    from ganforge.metrics.extractors import ExtractorRequest, build_extractor
    from ganforge.metrics.tracker import evaluate_detailed

    if args.noise and args.real_vs_real:
        raise ConfigError("choose one of --noise and --real-vs-real")
    if args.checkpoint is None and not (args.noise or args.real_vs_real):
        raise ConfigError("give a run directory or checkpoint to evaluate (or --noise / --real-vs-real --dataset NAME)")
    device = _device(args.device)
    metric_text = args.metrics.split(",")
    metrics = parse_metric_list(metric_text)
    gan, data_cfg, channels, resolution, extractor = _evaluation_target(args, device, metric_text)

    json_path = args.json or (_default_json(args.checkpoint) if args.checkpoint is not None else None)
    _check_outputs(json_path, use_cache=not args.no_cache)
    real = load_dataset(data_cfg, channels, resolution)
    # the extractor first: an evaluator that has to be trained (and stored) is checked and trained before sampling
    label_source = f"csv column {data_cfg.label_column}" if data_cfg.labels == "csv" else ""
    request = ExtractorRequest(real=real, device=device, inception_weights=args.inception_weights,
                               hflip=data_cfg.hflip, label_source=label_source, log=_log,
                               data_cfg=data_cfg)  # fmt: skip
    built = build_extractor(extractor, request)
    num = args.num if args.num is not None else default_num(data_cfg.dataset)
    fake_images, fake_labels, source, real_index = _images_to_score(args, real, gan, num, channels, resolution)

    out = evaluate_detailed(
        real, fake_images, fake_labels, metrics, built, device,
        split=data_cfg.split, real_index=real_index, seed=args.seed, use_cache=not args.no_cache,
    )  # fmt: skip
    header = (f"{source}: {out.num_fake} images vs {out.num_real} real from {real.name} "
              f"(extractor {out.extractor['name']})")  # fmt: skip
    _print_table(out.results, out.skipped, header)
    payload = {
        "source": source,
        "results": out.results,
        "skipped": out.skipped,
        "extractor": out.extractor,
        "dataset": real.name,
        "fingerprint": real.fingerprint,
        "split": data_cfg.split,
        "num_fake": out.num_fake,
        "num_real": out.num_real,
        "seed": args.seed,
        "metrics": metrics,
    }
    if json_path is not None:
        _write_json(json_path, payload)
        print(f"wrote {json_path}")
    return 0


def _evaluation_target(args: argparse.Namespace, device: torch.device, metric_text: list[str]) -> tuple:
    """What ``evaluate`` scores against what: (gan or None, data config, channels, resolution, extractor)."""
    from ganforge.config import DataConfig
    from ganforge.metrics import evaluator as ev

    gan = None
    if args.checkpoint is not None:
        from ganforge.sampling import load_gan

        gan = load_gan(args.checkpoint, device)
        cfg = gan.config
        data_cfg = _data_config(cfg.data, args)
        channels, resolution = ev.real_shape_for_evaluation(data_cfg.dataset, cfg.model.channels, cfg.model.resolution)
        extractor = args.extractor or cfg.eval.extractor
    else:
        if not args.dataset:
            raise ConfigError("--noise/--real-vs-real without a checkpoint need --dataset NAME (e.g. mnist)")
        data_cfg = _data_config(DataConfig(dataset=args.dataset), args)
        channels, resolution = ev.default_shape(args.dataset)
        extractor = args.extractor or "auto"
    channels, resolution = args.channels or channels, args.resolution or resolution
    if any(m.strip().lower() == "fid" for m in metric_text):
        if args.extractor and args.extractor != "inception":
            raise ConfigError("fid is InceptionV3's FD: use --metrics fd with a classifier, or --extractor inception")
        extractor = "inception"
    return gan, data_cfg, channels, resolution, extractor


def _images_to_score(args: argparse.Namespace, real, gan, num: int, channels: int, resolution: int) -> tuple:
    """(images, labels, source name, index of the real images to compare with) for the three modes."""
    from ganforge.metrics.tracker import split_halves, subset_index

    real_index = None
    if args.real_vs_real:
        real_index, other = split_halves(len(real), num, args.seed)
        if len(other) < 4:
            raise ConfigError(f"{real.name} has {len(real)} images: too few for two halves")
        fake_images = real.images[other]
        fake_labels = None if real.labels is None else real.labels[other]
        source = "real-vs-real"
    elif args.noise:
        gen = torch.Generator().manual_seed(args.seed)
        fake_images = torch.randint(0, 256, (num, channels, resolution, resolution), generator=gen, dtype=torch.uint8)
        # Uniform labels make conditional accuracy's chance level visible (1 / classes).
        fake_labels = torch.randint(real.num_classes, (num,), generator=gen) if real.num_classes else None
        source = "uniform-noise"
    else:
        from ganforge.sampling import generate_images

        assert gan is not None
        fake_images, fake_labels = generate_images(gan, num, seed=args.seed, batch_size=args.batch_size)
        source = str(gan.source)
    if real_index is None:
        real_index = subset_index(len(real), num, args.seed)
    return fake_images, fake_labels, source, real_index


def cmd_train_evaluator(args: argparse.Namespace) -> int:
    from ganforge.config import DataConfig
    from ganforge.metrics import cache
    from ganforge.metrics.evaluator import EVALUATOR_BYTES, train_evaluator

    data_cfg = _data_config(DataConfig(dataset=args.dataset), args)
    # its one output is the stored evaluator: a cache that cannot take it is an error before any work
    cache.require_writable(cache.evaluators_dir(), "train-evaluator", EVALUATOR_BYTES)
    info = train_evaluator(
        data_cfg, args.channels, args.resolution, epochs=args.epochs, force=args.force,
        device=_device(args.device), log=_log,
    )  # fmt: skip
    print(
        f"evaluator {info.name} ({info.source}, {len(info.class_names)} classes, {info.channels}x"
        f"{info.resolution}px -> {info.input_size}px): held-out accuracy {info.heldout_accuracy:.4f} on "
        f"{info.num_heldout} images (balanced {info.heldout_balanced_accuracy:.4f}, majority class "
        f"{info.majority_baseline:.4f}); trained {info.epochs} epochs on {info.num_train} in {info.train_seconds:.0f} s"
    )
    cached = " (found in the cache; --force retrains)" if info.extra.get("from_cache") else ""
    print(f"stored: {info.path}{cached}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
