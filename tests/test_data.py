"""Datasets, the cache and the batch loaders (CPU, synthetic data; the shared data only when present)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ganforge.config import DataConfig, RunConfig
from ganforge.data import (
    DATASETS,
    BatchLoader,
    DataWarning,
    ImageData,
    InMemoryLoader,
    StreamingLoader,
    cache_dir,
    denormalize,
    load_dataset,
    make_loader,
    normalize,
    read_idx,
    write_idx,
)
from ganforge.data import loaders as loaders_mod
from ganforge.data import sources as sources_mod
from ganforge.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache, never the user's."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))


def _write_mnist(folder: Path, n: int = 50, split: str = "t10k", gz: bool = True, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def _write_folder(root: Path) -> dict[str, Image.Image]:
    """Mixed sizes and modes in nested folders, plus a corrupt image and a text file."""
    rng = np.random.default_rng(1)
    made = {
        "a/wide.png": Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB"),
        "a/deep/tall.jpg": Image.fromarray(rng.integers(0, 256, (50, 20), dtype=np.uint8), "L"),
        "b/alpha.png": Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA"),
        "b/pal.gif": Image.fromarray(rng.integers(0, 256, (17, 33, 3), dtype=np.uint8), "RGB").convert("P"),
        "top.bmp": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB"),
    }
    for rel, img in made.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG not really" + bytes(100))
    (root / "notes.txt").write_text("not an image")
    return made


def _folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="image-folder", root=str(root), **kw)


# --------------------------------------------------------------------------- IDX and MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 5, 3) and np.array_equal(back, arr)
    ints = np.arange(-3, 9, dtype=np.int32)
    write_idx(tmp_path / "i.idx", ints)
    assert np.array_equal(read_idx(tmp_path / "i.idx"), ints)


def test_idx_rejects_damaged_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(DataError, match="download it again"):
        read_idx(tmp_path / "short")


def test_mnist_from_test_only_root(tmp_path):
    images, labels = _write_mnist(tmp_path / "MNIST" / "raw", n=50)
    data = load_dataset(DataConfig(dataset="mnist", root=str(tmp_path), split="test", download=False), 1, 28)
    assert data.name == "mnist/test" and data.num_classes == 10 and data.class_names[3] == "3"
    assert data.images.dtype == torch.uint8 and data.images.shape == (50, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.dtype == torch.int64 and torch.equal(data.labels, torch.from_numpy(labels).long())
    # labels=none drops them; max_images keeps the first N.
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), split="test", labels="none", max_images=7)
    small = load_dataset(cfg, 1, 28)
    assert small.labels is None and small.class_names == [] and torch.equal(small.images, data.images[:7])


def test_fashion_mnist_plain_files_directly_in_root(tmp_path):
    images, _ = _write_mnist(tmp_path, n=12, split="train", gz=False)
    data = load_dataset(DataConfig(dataset="fashion-mnist", root=str(tmp_path), split="train"), 1, 28)
    assert data.name == "fashion-mnist/train" and data.class_names[9] == "Ankle boot"
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_missing_files_offline_message(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(self):
        calls.append(type(self).__name__)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: no network")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    _write_mnist(tmp_path / "MNIST" / "raw", n=5)  # only the test split, as on an offline machine
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path), split="train", download=True), 1, 28)
    msg = str(err.value)
    assert calls == ["MNIST"] and "\n" not in msg
    for part in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path / "MNIST" / "raw"), "--data-root"):
        assert part in msg
    assert "--split test" in msg and "downloading them failed" in msg
    with pytest.raises(DataError, match=r"downloading is off \(--set data.download=true\)"):
        load_dataset(DataConfig(dataset="mnist", root=str(tmp_path), split="train", download=False), 1, 28)

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), split="test"), 3, 32)
    msg = str(err.value)
    assert "\n" not in msg and "test_batch" in msg and "cifar-10-batches-py" in msg and "--data-root" in msg


def test_registry_names():
    assert {"mnist", "fashion-mnist", "cifar10", "image-folder", "digits"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset(DataConfig(dataset="imagenet"), 1, 28)


# --------------------------------------------------------------------------- resizing, digits


def test_resize_28_to_64_matches_torchvision(tmp_path):
    images, _ = _write_mnist(tmp_path, n=6)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), split="test")
    big = load_dataset(cfg, 1, 64)
    assert big.images.shape == (6, 1, 64, 64) and big.images.dtype == torch.uint8
    resize = T.Compose([T.Resize(64), T.CenterCrop(64)])  # bilinear + antialias on PIL
    for i in range(6):
        want = np.asarray(resize(Image.fromarray(images[i], "L")))
        assert np.array_equal(big.images[i, 0].numpy(), want)
    rgb = load_dataset(cfg, 3, 64)  # grey -> RGB is an exact channel copy
    assert rgb.images.shape == (6, 3, 64, 64) and torch.equal(rgb.images, big.images.expand(-1, 3, -1, -1))


def test_digits_split_shapes_and_range():
    train = load_dataset(DataConfig(dataset="digits", split="train"), 1, 8)
    test = load_dataset(DataConfig(dataset="digits", split="test"), 1, 8)
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.name == "digits/train" and test.num_classes == 10
    for d in (train, test):
        assert d.images.dtype == torch.uint8 and int(d.images.min()) == 0 and int(d.images.max()) == 255
        assert set(d.labels.tolist()) == set(range(10))
    assert train.fingerprint != test.fingerprint


# --------------------------------------------------------------------------- image folders


def _on_white(img: Image.Image) -> Image.Image:
    """Plain reference for transparency: RGBA composited onto white in float, rounded."""
    rgba = np.asarray(img.convert("RGBA")).astype(np.float64)  # [H, W, 4]
    alpha = rgba[..., 3:] / 255.0
    return Image.fromarray(np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8), "RGB")


def test_image_folder_mixed_files_and_skips(tmp_path):
    made = _write_folder(tmp_path / "imgs")
    with pytest.warns(DataWarning, match=r"skipped 1 image file.*cannot be decoded: b/corrupt\.png") as caught:
        data = load_dataset(_folder_cfg(tmp_path / "imgs"), 3, 16)
    assert "notes.txt" not in str(caught[0].message)  # not an image: ignored quietly
    assert data.name == "image-folder:imgs" and data.labels is None and data.class_names == []
    assert data.images.shape == (5, 3, 16, 16) and data.images.dtype == torch.uint8
    # Sorted by relative path: a/deep/tall.jpg, a/wide.png, b/alpha.png, b/pal.gif, top.bmp.
    resize = T.Compose([T.Resize(16), T.CenterCrop(16)])
    for i, rel in enumerate(sorted(made)):
        with Image.open(tmp_path / "imgs" / rel) as img:
            reference = _on_white(img) if img.mode == "RGBA" else img.convert("RGB")
            want = np.asarray(resize(reference)).transpose(2, 0, 1).astype(int)
        # transparent pixels are composited onto white (PIL's integer blend may round 1 level away)
        assert np.abs(data.images[i].numpy().astype(int) - want).max() <= (1 if rel == "b/alpha.png" else 0), rel
    with pytest.warns(DataWarning):
        grey = load_dataset(_folder_cfg(tmp_path / "imgs"), 1, 12)
    assert grey.images.shape == (5, 1, 12, 12)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not exist: point --data-root"):
        load_dataset(_folder_cfg(tmp_path / "nope"), 3, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images in .*empty \(it is empty\)"):
        load_dataset(_folder_cfg(tmp_path / "empty"), 3, 16)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="can be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        load_dataset(_folder_cfg(tmp_path / "junk"), 3, 16)


def test_image_folder_subfolder_labels(tmp_path):
    _write_folder(tmp_path / "imgs")
    with pytest.warns(DataWarning):
        data = load_dataset(_folder_cfg(tmp_path / "imgs", labels="subfolders"), 3, 8)
    # top.bmp sits in the root, so it has no class and is dropped; classes are first-level folders.
    assert data.class_names == ["a", "b"] and data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.shape == (4, 3, 8, 8)


def test_image_folder_csv_labels(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "tags.csv").write_text(
        "file,hair,eyes\nwide.png,red,blue\nb/alpha.png,black,red\ntop.bmp,red,\nmissing.jpg,blue,blue\n"
        "tall.jpg,,green\n"
    )
    cfg = _folder_cfg(tmp_path / "imgs", labels="csv", label_csv="tags.csv", label_column="hair")
    with pytest.warns(DataWarning) as rec:
        data = load_dataset(cfg, 3, 8)
    # one line: 6 image files (one corrupt), 3 with a hair value; the CSV itself is never reported as a bad image
    (message,) = [str(w.message) for w in rec]
    assert "3 of 6 images have no labelled row in tags.csv (column 'hair')" in message, message
    assert "a/deep/tall.jpg" in message and "data.unlabelled=error" in message and "skipped" not in message
    assert data.class_names == ["black", "red"]
    assert data.labels.tolist() == [1, 0, 1]  # a/wide.png, b/alpha.png, top.bmp (rows without hair dropped)
    strict = _folder_cfg(tmp_path / "imgs", labels="csv", label_csv="tags.csv", label_column="hair", unlabelled="error")
    with pytest.raises(DataError, match=r"3 of 6 images .* have no labelled row in tags.csv.*data.unlabelled=drop"):
        load_dataset(strict, 3, 8)
    with pytest.raises(DataError, match="no column 'colour'"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        load_dataset(_folder_cfg(tmp_path / "imgs", labels="csv", label_csv="tags.csv", label_column="colour"), 3, 8)


# --------------------------------------------------------------------------- modes and bit depths


def _decode_one(tmp_path: Path, name: str, image: Image.Image, channels: int) -> np.ndarray:
    """Load a one-file folder at the image's own size (no resizing): uint8 [C, H, W]."""
    folder = tmp_path / name.replace(".", "-")
    folder.mkdir()
    image.save(folder / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # every one of these files must decode
        data = load_dataset(_folder_cfg(folder), channels, image.size[0])
    return data.images[0].numpy()


def _white_over(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Plain reference: ``colour`` (..., C) over a white background with ``alpha`` (...) in 0..255, rounded."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(colour.astype(np.float64) * a + 255.0 * (1.0 - a))


RNG = np.random.default_rng(5)
WORDS16 = RNG.integers(0, 65536, (12, 12)).astype(np.uint16)
INT32 = RNG.integers(-(2**31), 2**31 - 1, (12, 12), dtype=np.int64).astype(np.int32)
FLOATS = RNG.uniform(-0.5, 1.5, (12, 12)).astype(np.float32)


@pytest.mark.parametrize(
    "name,image,grey",
    [
        # 16 bits: by the type's range, v * 255 / 65535 = v / 257
        ("w.png", Image.fromarray(WORDS16), np.round(WORDS16 / 257.0)),  # PIL mode I;16
        ("w.tif", Image.frombytes("I;16B", (12, 12), WORDS16.astype(">u2").tobytes()), np.round(WORDS16 / 257.0)),
        ("w.pgm", Image.fromarray(WORDS16), np.round(WORDS16 / 257.0)),  # 16-bit PGM opens as PIL mode I
        # 32-bit signed integers: over 0..2**31-1, negatives black
        ("i.tif", Image.fromarray(INT32), np.round(np.clip(INT32, 0, None) * (255.0 / (2**31 - 1)))),
        # 32-bit floats: 0..1, clipped
        ("f.tif", Image.fromarray(FLOATS), np.round(np.clip(FLOATS, 0.0, 1.0) * 255.0)),
    ],
)
def test_high_bit_depths_are_scaled_to_eight_bits(tmp_path, name, image, grey):
    assert np.array_equal(_decode_one(tmp_path, name, image, 1)[0], grey.astype(np.uint8)), image.mode
    rgb = _decode_one(tmp_path, "rgb-" + name, image, 3)  # grey -> RGB: the same value in each channel
    assert all(np.array_equal(rgb[c], grey.astype(np.uint8)) for c in range(3))


def test_transparency_palette_and_cmyk_as_they_look(tmp_path):
    colours = RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (12, 12), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([colours, alpha]), "RGBA")
    got = _decode_one(tmp_path, "a.png", rgba, 3).transpose(1, 2, 0).astype(int)
    assert np.abs(got - _white_over(colours, alpha)).max() <= 1  # PIL blends in integers

    grey = colours[..., 0]
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")
    got = _decode_one(tmp_path, "la.png", la, 1)[0].astype(int)
    assert np.abs(got - _white_over(grey[..., None], alpha)[..., 0]).max() <= 1

    palette = Image.fromarray(colours).convert("P", palette=Image.ADAPTIVE, colors=8)
    index = np.asarray(palette)  # [12, 12] palette indices
    table = np.asarray(palette.getpalette()[: 3 * 8], dtype=np.uint8).reshape(8, 3)
    palette.info["transparency"] = int(index[0, 0])  # one colour is transparent
    got = _decode_one(tmp_path, "p.png", palette, 3).transpose(1, 2, 0)
    want = np.where((index == index[0, 0])[..., None], 255, table[index])  # transparent -> white
    assert np.array_equal(got, want)

    cmyk = RNG.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    ink = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0  # plain subtractive model, as PIL converts
    got = _decode_one(tmp_path, "c.tif", Image.fromarray(cmyk, "CMYK"), 3).transpose(1, 2, 0).astype(int)
    assert np.abs(got - np.rint(ink)).max() <= 1


# --------------------------------------------------------------------------- cache


def test_cache_hit_and_fingerprint_follows_content(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    first = load_dataset(_folder_cfg(root), 3, 8)
    assert (cache_dir() / "datasets" / f"{first.fingerprint}.safetensors").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(sources_mod, "decode_folder", no_decoding)
    second = load_dataset(_folder_cfg(root), 3, 8)
    assert second.fingerprint == first.fingerprint and torch.equal(second.images, first.images)
    monkeypatch.undo()
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))

    assert load_dataset(_folder_cfg(root, max_images=2), 3, 8).fingerprint != first.fingerprint
    assert load_dataset(_folder_cfg(root), 3, 16).fingerprint != first.fingerprint
    Image.fromarray(np.full((10, 10, 3), 250, np.uint8)).save(root / "2.png")  # same name, new bytes
    changed = load_dataset(_folder_cfg(root), 3, 8)
    assert changed.fingerprint != first.fingerprint and int(changed.images[2].min()) == 250


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "g"))
    assert cache_dir() == tmp_path / "g"
    monkeypatch.delenv("GANFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "ganforge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "ganforge"


# --------------------------------------------------------------------------- loaders


def _indexed(n: int = 103, channels: int = 1, size: int = 4) -> ImageData:
    """Images whose labels are their own indices, so batches reveal the order."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.arange(n), [str(i) for i in range(n)], "synthetic", "0")


def _order(loader, epoch: int, start_batch: int = 0) -> list[list[int]]:
    return [y.tolist() for _, y in loader.epoch(epoch, start_batch)]


def test_batches_per_epoch_and_each_index_once():
    data = _indexed(103)
    keep = InMemoryLoader(data, 10, CPU)
    drop = InMemoryLoader(data, 10, CPU, drop_last=True)
    assert isinstance(keep, BatchLoader) and keep.num_images == 103
    assert keep.batches_per_epoch == 11 and drop.batches_per_epoch == 10
    batches = _order(keep, 0)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(i for b in batches for i in b) == list(range(103))
    dropped = _order(drop, 0)
    assert len(dropped) == 10 and len({i for b in dropped for i in b}) == 100
    with pytest.raises(DataError, match="fewer than train.batch_size"):
        InMemoryLoader(_indexed(5), 10, CPU, drop_last=True)


def test_order_is_a_function_of_seed_and_epoch():
    data = _indexed(103)
    a, b = InMemoryLoader(data, 16, CPU, seed=3), InMemoryLoader(data, 16, CPU, seed=3)
    assert _order(a, 5) == _order(b, 5)
    assert _order(a, 5) != _order(a, 6)
    assert _order(a, 5) != _order(InMemoryLoader(data, 16, CPU, seed=4), 5)
    flat = [i for batch in _order(InMemoryLoader(data, 16, CPU, shuffle=False), 2) for i in batch]
    assert flat == list(range(103))


def test_start_batch_resumes_mid_epoch():
    loader = InMemoryLoader(_indexed(103), 8, CPU, hflip=True, seed=1)
    full = list(loader.epoch(4))
    resumed = list(loader.epoch(4, start_batch=5))
    assert len(resumed) == len(full) - 5
    for (x0, y0), (x1, y1) in zip(full[5:], resumed, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert list(loader.epoch(4, start_batch=loader.batches_per_epoch)) == []
    with pytest.raises(ValueError):
        loader.epoch(4, start_batch=loader.batches_per_epoch + 1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_concatenate_to_the_global_batch(world_size):
    data = _indexed(103, channels=3)
    single = list(InMemoryLoader(data, 16, CPU, seed=7, hflip=True).epoch(1))
    shards = [
        list(InMemoryLoader(data, 16, CPU, seed=7, hflip=True, rank=r, world_size=world_size).epoch(1))
        for r in range(world_size)
    ]
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)


def test_normalisation_round_trips_through_denormalize():
    data = _indexed(40, channels=1)
    loader = InMemoryLoader(data, 8, CPU, mean=[0.1307], std=[0.3081])
    for x, y in loader.epoch(0):
        assert x.dtype == torch.float32
        assert torch.equal(denormalize(x, [0.1307], [0.3081]), data.images[y])
        ref = (data.images[y].float() / 255 - 0.1307) / 0.3081
        torch.testing.assert_close(x, ref)
    rgb = _indexed(20, channels=3)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    assert torch.equal(denormalize(normalize(rgb.images, mean, std), mean, std), rgb.images)
    assert denormalize(torch.tensor([[[[-5.0, 5.0, 0.0]]]]), [0.5], [0.5]).tolist() == [[[[0, 255, 128]]]]


def test_hflip_is_reproducible_per_epoch():
    data = _indexed(64, channels=1, size=5)
    loader = InMemoryLoader(data, 64, CPU, hflip=True, mean=[0.0], std=[1.0])
    ((x, y),) = list(loader.epoch(0))
    pixels = denormalize(x, [0.0], [1.0])
    flipped = [not torch.equal(pixels[k], data.images[i]) for k, i in enumerate(y.tolist())]
    for k, i in enumerate(y.tolist()):
        assert torch.equal(pixels[k], data.images[i].flip(-1) if flipped[k] else data.images[i])
    assert 10 < sum(flipped) < 54  # about half
    ((x2, _),) = list(loader.epoch(0))
    assert torch.equal(x, x2)


def test_streaming_matches_in_memory(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root)
    cfg = RunConfig()
    cfg.data = _folder_cfg(root, labels="subfolders", hflip=True, num_workers=0)
    cfg.model.channels, cfg.model.resolution = 3, 8
    cfg.train.batch_size, cfg.train.seed = 3, 11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        cfg.data.in_memory = "on"
        mem = make_loader(cfg, CPU)
        cfg.data.in_memory = "off"
        stream = make_loader(cfg, CPU)
        cfg.data.num_workers = 2
        workers = make_loader(cfg, CPU, rank=1, world_size=2)
    assert isinstance(mem, InMemoryLoader) and isinstance(stream, StreamingLoader)
    assert stream.num_images == mem.num_images == 4 and stream.batches_per_epoch == mem.batches_per_epoch
    assert stream.fingerprint == mem.fingerprint and stream.class_names == mem.class_names
    for epoch in (0, 1):
        for (xm, ym), (xs, ys) in zip(mem.epoch(epoch), stream.epoch(epoch), strict=True):
            assert torch.equal(xm, xs) and torch.equal(ym, ys)
    with pytest.warns(DataWarning):
        data = load_dataset(cfg.data, 3, 8)
    mem_rank1 = InMemoryLoader(data, 3, CPU, hflip=True, seed=11, rank=1, world_size=2)
    next(iter(workers.epoch(0)))  # an epoch abandoned after one batch must not leak into the next
    for (xm, ym), (xs, ys) in zip(mem_rank1.epoch(1, 1), workers.epoch(1, 1), strict=True):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)
    workers.close()


def test_make_loader_choices(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((9, 9), 30 * i, np.uint8)).save(root / f"{i}.png")
    cfg = RunConfig()
    cfg.data = _folder_cfg(root, num_workers=0)
    cfg.model.channels, cfg.model.resolution = 1, 8
    assert isinstance(make_loader(cfg, CPU), InMemoryLoader)  # auto: tiny
    monkeypatch.setattr(loaders_mod, "memory_budget", lambda: 100)
    assert isinstance(make_loader(cfg, CPU), StreamingLoader)  # auto: over budget
    cfg.model.num_classes = 10
    with pytest.raises(ConfigError, match="model.num_classes=10 but image-folder:imgs has no labels"):
        make_loader(cfg, CPU)
    cfg.model.num_classes = 0
    cfg.data = DataConfig(dataset="digits", in_memory="off")
    with pytest.raises(ConfigError, match="only image-folder"):
        make_loader(cfg, CPU)
    cfg.data.in_memory = "auto"
    digits = make_loader(cfg, CPU, rank=0, world_size=2)
    assert digits.num_images == 1438 and digits.batches_per_epoch == 23


# --------------------------------------------------------------------------- the real shared data


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST not present")
def test_shared_mnist_test_split():
    data = load_dataset(DataConfig(dataset="mnist", root=str(SHARED / "mnist"), split="test", download=False), 1, 28)
    assert data.images.shape == (10000, 1, 28, 28) and data.labels.shape == (10000,)
    assert sorted(data.labels.unique().tolist()) == list(range(10)) and int(data.images.max()) == 255


@pytest.mark.skipif(not (SHARED / "anime-faces").is_dir(), reason="shared anime faces not present")
def test_shared_anime_faces_with_hair_labels():
    cfg = _folder_cfg(SHARED / "anime-faces", labels="csv", label_csv="tags.csv", label_column="hair")
    data = load_dataset(cfg, 3, 96)
    assert data.images.shape == (2038, 3, 96, 96) and data.images.dtype == torch.uint8  # rows of tags.csv
    assert "aqua" in data.class_names and int(data.labels.max()) == data.num_classes - 1
