"""Exports checked by their own runtimes: ONNX through onnx.checker and onnxruntime, TorchScript in a process
where ganforge cannot be imported, the original scripts' state dicts in the original classes; the model card;
and a one-line error naming the layer when a network cannot be exported."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import ganforge
from ganforge.checkpoint import load_tensors, module_tensors, save_tensors
from ganforge.cli import main
from ganforge.config import DataConfig, ModelConfig, RunConfig, from_dict, to_dict
from ganforge.data import denormalize
from ganforge.errors import CheckpointError, ConfigError, ExportError
from ganforge.export.core import DiscriminatorGraph, GeneratorGraph
from ganforge.export.onnx_export import OPSET, export_onnx
from ganforge.export.reference import load_reference_state_dict, reference_state_dict
from ganforge.export.torchscript import export_torchscript
from ganforge.models import MODELS, build_models
from ganforge.models.base import Generator
from ganforge.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onnx_sample.py"

# --- every registered architecture, tiny ------------------------------------------------------------------------
# One small config per arch (sizes the arch's spec fixes are kept); each arch is exported unconditional and
# conditional wherever it builds that way. A new arch without an entry here fails test_every_arch_has_a_tiny_config.
TINY = {
    "mlp": ModelConfig(arch="mlp", latent_dim=8, resolution=8),
    "mlp-bn": ModelConfig(arch="mlp-bn", latent_dim=8, resolution=8),
    "conv": ModelConfig(arch="conv", latent_dim=8),
    "cdcgan": ModelConfig(arch="cdcgan", latent_dim=8, resolution=64, g_width=4, d_width=4, init="dcgan"),
    "dcgan96": ModelConfig(arch="dcgan96", latent_dim=8, channels=3, resolution=96, g_width=4, d_width=4, init="dcgan"),
    "dcgan28": ModelConfig(arch="dcgan28", latent_dim=8, g_width=4, d_width=4),
    # with spectral norm on D: its parametrized weights must export too
    "resnet": ModelConfig(arch="resnet", latent_dim=8, resolution=32, g_width=2, d_width=2, spectral_norm=True),
}
# per-channel normalisations that are not [-1, 1], so the in-graph conversion to pixels is really tested
NORMALISATION = {1: ([0.1307], [0.3081]), 3: ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])}


def _variants() -> list[tuple[str, int]]:
    variants = []
    for arch in sorted(set(MODELS.names()) & set(TINY)):  # an arch missing from TINY fails the test below
        for num_classes in (0, 3):
            try:
                build_models(_tiny_config(arch, num_classes).model)
            except ConfigError:  # the arch's spec rules this conditioning out
                continue
            variants.append((arch, num_classes))
    return variants


def _tiny_config(arch: str, num_classes: int) -> RunConfig:
    model = ModelConfig(**{**vars(TINY[arch]), "num_classes": num_classes})
    mean, std = NORMALISATION[model.channels]
    return RunConfig(recipe=f"tiny-{arch}", data=DataConfig(mean=mean, std=std), model=model)


def _tiny_networks(arch: str, num_classes: int) -> tuple[RunConfig, nn.Module, nn.Module]:
    """G and D with BatchNorm running statistics moved away from their initial values, in eval mode."""
    cfg = _tiny_config(arch, num_classes)
    torch.manual_seed(0)
    generator, discriminator = build_models(cfg.model)
    labels = torch.arange(8) % num_classes if num_classes else None
    with torch.no_grad():  # one training-mode pass: running statistics = 0.9 * initial + 0.1 * this batch's
        fake = generator(torch.randn(8, cfg.model.latent_dim) * 2 + 0.5, labels)
        discriminator(fake, labels)
    return cfg, generator.eval(), discriminator.eval()


VARIANTS = _variants()
IDS = [f"{arch}-{'cond' if k else 'uncond'}" for arch, k in VARIANTS]


def test_every_arch_has_a_tiny_config():
    assert set(TINY) == set(MODELS.names())
    assert any(k for _, k in VARIANTS) and any(not k for _, k in VARIANTS)


def _inputs(cfg: RunConfig, batch: int = 16, seed: int = 1234) -> tuple[torch.Tensor, ...]:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.model.latent_dim, generator=rng)
    k = cfg.model.num_classes
    return (z, torch.arange(batch) % k) if k else (z,)


def _feeds(names: list[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}


def assert_uint8_matches(expected: torch.Tensor, actual: np.ndarray, pixels: torch.Tensor, float_error: float) -> int:
    """uint8 images equal except where the float pixel value lies within the float error of a rounding boundary
    (k + 0.5); returns how many differ, which must be at most 0.1% of the values."""
    actual = torch.from_numpy(actual)
    assert actual.dtype == torch.uint8 and actual.shape == expected.shape
    differ = expected != actual
    if differ.any():
        assert (expected.int() - actual.int()).abs().max() == 1
        distance_to_boundary = ((pixels[differ] % 1.0) - 0.5).abs()
        assert distance_to_boundary.max() <= float_error + 1e-4, "a pixel differs away from a rounding boundary"
    count = int(differ.sum())
    assert count <= 0.001 * expected.numel()
    return count


# --- ONNX ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,num_classes", VARIANTS, ids=IDS)
def test_onnx_export_matches_pytorch_in_onnxruntime(arch, num_classes):
    cfg, generator, discriminator = _tiny_networks(arch, num_classes)
    inputs = _inputs(cfg)  # 16 inputs; the export traced a batch of 2: the batch axis is dynamic
    names = ["z", "labels"] if num_classes else ["z"]
    mean, std = torch.tensor(cfg.data.mean).view(1, -1, 1, 1), torch.tensor(cfg.data.std).view(1, -1, 1, 1)

    raw_model = export_onnx(GeneratorGraph(generator, cfg.data.mean, cfg.data.std, raw=True))
    model = onnx.load_from_string(raw_model)
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(raw_model, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("z", "tensor(float)"),
        *([("labels", "tensor(int64)")] if num_classes else []),
    ]
    assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # a symbolic batch dimension
    with torch.no_grad():
        expected_raw = generator(*inputs)  # [16, C, H, W]
    actual_raw = session.run(None, _feeds(names, inputs))[0]
    float_error = float(np.abs(actual_raw - expected_raw.numpy()).max())
    assert float_error <= 1e-4

    uint8_model = export_onnx(GeneratorGraph(generator, cfg.data.mean, cfg.data.std, raw=False))
    onnx.checker.check_model(onnx.load_from_string(uint8_model), full_check=True)
    session = ort.InferenceSession(uint8_model, providers=["CPUExecutionProvider"])
    pixels = (expected_raw * std + mean) * 255  # the float value each uint8 pixel rounds
    expected = denormalize(expected_raw, cfg.data.mean, cfg.data.std)
    actual = session.run(None, _feeds(names, inputs))[0]
    differ = assert_uint8_matches(expected, actual, pixels, float_error * float(std.max()) * 255)
    print(f"{arch} k={num_classes}: max |float diff| {float_error:.2g}, {differ} of {expected.numel()} uint8 differ")

    d_model = export_onnx(DiscriminatorGraph(discriminator, cfg.data.mean, cfg.data.std, raw=False))
    session = ort.InferenceSession(d_model, providers=["CPUExecutionProvider"])
    d_names = ["images", "labels"] if num_classes else ["images"]
    d_inputs = (expected, *inputs[1:])
    with torch.no_grad():
        logits = discriminator((expected.float() / 255 - mean) / std, *inputs[1:])  # [16]
    onnx_logits = session.run(None, _feeds(d_names, d_inputs))[0]
    assert np.abs(onnx_logits - logits.numpy()).max() <= 1e-4 * max(1.0, float(logits.abs().max()))


def test_exports_use_batchnorm_running_statistics():
    cfg, generator, _ = _tiny_networks("dcgan28", 3)
    inputs = _inputs(cfg)
    session = ort.InferenceSession(export_onnx(GeneratorGraph(generator, [0.5], [0.5], raw=True)))
    onnx_out = session.run(None, _feeds(["z", "labels"], inputs))[0]
    with torch.no_grad():
        eval_out = generator(*inputs)
        batch_statistics = generator.train()(*inputs)
    generator.eval()
    assert np.abs(onnx_out - eval_out.numpy()).max() <= 1e-4
    assert np.abs(onnx_out - batch_statistics.numpy()).max() > 1e-2


# --- TorchScript in a process without ganforge --------------------------------------------------------------------
CLEAN_RUNNER = r"""
import sys, pathlib, importlib.abc, importlib.util
sys.path.append(sys.argv[1])  # only the folder torch lives in: no ganforge source tree, no .pth hooks (-S)
class HideGanforge(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ganforge":
            raise ImportError("ganforge is hidden in this process")
if importlib.util.find_spec("ganforge") is not None:  # a regular (non-editable) install beside torch
    sys.meta_path.insert(0, HideGanforge())
try:
    import ganforge
    sys.exit("ganforge is importable here")
except ImportError:
    print("ganforge not importable")
import torch
folder = pathlib.Path(sys.argv[2])
for path in sorted(folder.glob("*.pt")):
    module = torch.jit.load(str(path), map_location="cpu")
    inputs = torch.load(str(path.with_suffix(".inputs")), weights_only=True)
    with torch.no_grad():
        torch.save(module(*inputs), str(path.with_suffix(".out")))
print("ran", len(list(folder.glob("*.pt"))))
"""


@pytest.fixture(scope="module")
def torchscript_outputs(tmp_path_factory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every variant's G (uint8 and raw) and D as TorchScript, run in one clean subprocess; name -> (PyTorch, it)."""
    folder = tmp_path_factory.mktemp("torchscript")
    expected = {}
    for (arch, num_classes), name in zip(VARIANTS, IDS, strict=True):
        cfg, generator, discriminator = _tiny_networks(arch, num_classes)
        inputs = _inputs(cfg, batch=5)
        with torch.no_grad():
            images = denormalize(generator(*inputs), cfg.data.mean, cfg.data.std)
        graphs = {
            "uint8": (GeneratorGraph(generator, cfg.data.mean, cfg.data.std, raw=False), inputs),
            "raw": (GeneratorGraph(generator, cfg.data.mean, cfg.data.std, raw=True), inputs),
            "d": (DiscriminatorGraph(discriminator, cfg.data.mean, cfg.data.std, raw=False), (images, *inputs[1:])),
        }
        for kind, (graph, graph_inputs) in graphs.items():
            (folder / f"{name}-{kind}.pt").write_bytes(export_torchscript(graph))
            torch.save(graph_inputs, folder / f"{name}-{kind}.inputs")
            with torch.no_grad():
                expected[f"{name}-{kind}"] = graph(*graph_inputs)
    torch_site = Path(torch.__file__).resolve().parents[1]
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not the repository: no src/ on the path either
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_RUNNER, str(torch_site), str(folder)],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "ganforge not importable" in result.stdout and f"ran {len(expected)}" in result.stdout
    return {key: (value, torch.load(folder / f"{key}.out", weights_only=True)) for key, value in expected.items()}


@pytest.mark.parametrize("name", IDS)
def test_torchscript_runs_where_ganforge_is_not_importable(torchscript_outputs, name):
    for kind in ("uint8", "raw", "d"):
        expected, loaded = torchscript_outputs[f"{name}-{kind}"]
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape  # batch 5, traced at 2
        if kind == "uint8":
            assert torch.equal(loaded, expected)  # the same kernels as eager PyTorch: the same pixels
        else:
            torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)


# --- the command line, on trained runs --------------------------------------------------------------------------
def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, args, *fragments) -> str:
    code, _, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ganforge: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_export_takes_the_ema_generator_unless_no_ema(trained_runs, tmp_path, capsys):
    run = trained_runs["mnist-quick"]  # keeps an EMA of G
    assert run_cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "ema.onnx")[0] == 0
    assert run_cli(capsys, "export", run, "--format", "onnx", "--no-ema", "--out", tmp_path / "raw.onnx")[0] == 0
    for file, ema in (("ema.onnx", True), ("raw.onnx", False)):
        generator = ganforge.load_generator(run, ema=ema)
        z, labels = generator.noise(16, seed=0), torch.arange(16) % 10
        session = ort.InferenceSession(str(tmp_path / file), providers=["CPUExecutionProvider"])
        actual = session.run(None, {"z": z.numpy(), "labels": labels.numpy()})[0]
        raw = generator.decode(z, labels)
        pixels = (raw * 0.5 + 0.5) * 255
        assert_uint8_matches(generator.to_uint8(raw), actual, pixels, 1e-4 * 0.5 * 255)
        card = json.loads((tmp_path / f"{file}.json").read_text())
        assert card["export"]["weights"] == ("ema" if ema else "generator")


def test_torchscript_export_of_a_run_carries_its_contract(trained_runs, tmp_path, capsys):
    run = trained_runs["anime-dcgan"]
    assert run_cli(capsys, "export", run, "--out", tmp_path / "faces.pt")[0] == 0  # format from the suffix
    extra = {"ganforge.json": ""}
    module = torch.jit.load(str(tmp_path / "faces.pt"), _extra_files=extra)
    contract = json.loads(extra["ganforge.json"])
    assert contract["inputs"][0]["shape"] == ["batch", 100] and contract["outputs"][0]["dtype"] == "uint8"
    generator = ganforge.load_generator(run)
    z = generator.noise(3, seed=4)
    assert torch.equal(module(z), generator.images(z))


def test_model_card(trained_runs, tmp_path, capsys):
    from ganforge.data import dataset_fingerprint, load_dataset

    run = tmp_path / "run"
    shutil.copytree(trained_runs["digits-quick"], run)
    key = "fd_digits-classifier"
    evals = [(1, 0.5, 30.0), (2, 1.0, 20.0), (2, 1.0, 25.0)]  # (step, epoch_progress, FD): best 20, last 25
    with (run / "metrics.jsonl").open("a") as handle:
        for step, progress, value in evals:
            record = {"kind": "eval", "step": step, "epoch": 0, "epoch_progress": progress, key: value}
            record.update({"precision_digits-classifier": value / 100, "tracked": key, "tracked_lower_is_better": True})
            handle.write(json.dumps(record) + "\n")
    out = tmp_path / "export" / "digits.onnx"
    assert run_cli(capsys, "export", run, "--format", "onnx", "--out", out, "--card")[0] == 0
    card = json.loads((tmp_path / "export" / "digits.onnx.json").read_text())

    config = json.loads((run / "config.json").read_text())
    config.pop("runtime", None)  # what the training machine chose (kernels, precision): not part of the model
    assert card["recipe"] == "digits-quick" and card["config"] == config
    cfg = from_dict(config)
    data = load_dataset(cfg.data, cfg.model.channels, cfg.model.resolution)
    assert card["data"]["fingerprint"] == dataset_fingerprint(cfg.data, 1, 28) == data.fingerprint
    assert card["data"]["num_images"] == len(data) == 16
    _, meta, _ = load_tensors(run / "checkpoints" / "latest.safetensors")
    # training recorded the data and the device in the checkpoint; the card reads them, it does not recompute
    assert meta["data"] == {"fingerprint": data.fingerprint, "num_images": 16} and meta["device"] == "cpu"
    assert card["data"]["fingerprint_source"] == "recorded by training" and card["training"]["device"] == "cpu"
    training = card["training"]
    assert (
        (training["steps"], training["epochs_completed"]) == (meta["state"]["step"], meta["state"]["epoch"]) == (2, 1)
    )
    assert training["time_s"] == meta["state"]["elapsed"] > 0 and training["device"] == "cpu"
    quality = card["quality"]
    assert (quality["tracked"], quality["extractor"], quality["evaluations"]) == (key, "digits-classifier", 3)
    assert quality["last"][key] == 25.0 and quality["best"][key] == 20.0
    assert card["contract"]["inputs"] == [
        {
            "name": "z",
            "dtype": "float32",
            "shape": ["batch", 64],
            "distribution": "normal, mean 0.0, std 1.0, each element",
            "truncation": card["contract"]["inputs"][0]["truncation"],
        },
        {"name": "labels", "dtype": "int64", "shape": ["batch"], "range": [0, 9]},
    ]
    assert card["contract"]["outputs"] == [
        {"name": "images", "dtype": "uint8", "shape": ["batch", 1, 28, 28], "layout": "NCHW", "range": [0, 255]}
    ]
    assert card["versions"]["ganforge"] == ganforge.__version__ and card["versions"]["torch"] == torch.__version__
    assert card["versions"]["onnx"] == onnx.__version__
    assert card["export"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["export"]["opset"] == OPSET
    readme = (tmp_path / "export" / "README.md").read_text()
    assert card["export"]["sha256"] in readme and "uint8" in readme

    # from the generator-only export the card still finds the run's training record
    assert run_cli(capsys, "export", run / "generator.safetensors", "--out", tmp_path / "export" / "g.pt")[0] == 0
    card_g = json.loads((tmp_path / "export" / "g.pt.json").read_text())
    assert card_g["training"]["steps"] == 2 and card_g["quality"]["best"][key] == 20.0

    # a README.md that ganforge did not write is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    assert_one_line_error(capsys, ["export", run, "--out", mine / "g.onnx", "--card"], "README.md", "not a ganforge")
    assert (mine / "README.md").read_text() == "my notes" and not (mine / "g.onnx").exists()


def test_onnx_without_its_extra_is_a_one_line_error(trained_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    out = tmp_path / "g.onnx"
    assert_one_line_error(capsys, ["export", trained_runs["mnist-mlp"], "--out", out], "ganforge[export]", "onnx")
    assert not out.exists()


@pytest.mark.parametrize(
    "recipe,source,out_name,args,fragments",
    [
        ("mnist-mlp", "", "g.pth", ["--format", "reference", "--raw"], ["--raw applies to onnx and torchscript"]),
        ("mnist-quick", "", "g.pth", ["--format", "reference"], ["no original script", "dcgan28"]),
        ("mnist-mlp", "generator.safetensors", "d.onnx", ["--which", "d"], ["no discriminator"]),
        ("mnist-mlp", "", "g.bin", [], ["--format"]),
    ],
)
def test_bad_export_requests(trained_runs, tmp_path, capsys, recipe, source, out_name, args, fragments):
    out = tmp_path / out_name
    assert_one_line_error(capsys, ["export", trained_runs[recipe] / source, "--out", out, *args], *fragments)
    assert not out.exists()


# --- a network that cannot be exported: one line naming the layer ---------------------------------------------------
class NumpyScale(nn.Module):
    """Leaves the tensor graph: a trace would freeze its output for the traced input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy() * 2.0)


class DoubleFn(torch.autograd.Function):
    """A Python-side autograd function (no TorchScript form)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


class PythonFunction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DoubleFn.apply(x)


class CumulativeMax(nn.Module):
    """aten::cummax has no ONNX form at opset 17."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, 1)[0]


class ToyGenerator(Generator):
    def __init__(self, odd: nn.Module) -> None:
        super().__init__(latent_dim=4, num_classes=0, channels=1, resolution=2)
        self.body = nn.Sequential(nn.Linear(4, 4), odd, nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(z).view(z.shape[0], 1, 2, 2)  # [B, 1, 2, 2]


def _toy_graph(odd: nn.Module) -> GeneratorGraph:
    return GeneratorGraph(ToyGenerator(odd).eval(), [0.5], [0.5], raw=False)


def test_a_layer_that_leaves_the_graph_is_named():
    for export in (export_onnx, export_torchscript):
        with pytest.raises(ExportError) as error:
            export(_toy_graph(NumpyScale()))
        message = str(error.value)
        assert "\n" not in message and "layer 'body.1' (NumpyScale)" in message and "NumPy" in message


def test_an_operator_without_an_onnx_form_is_named():
    with pytest.raises(ExportError) as error:
        export_onnx(_toy_graph(CumulativeMax()))
    message = str(error.value)
    assert "\n" not in message and "layer 'body.1' (CumulativeMax)" in message and "aten::cummax" in message
    export_torchscript(_toy_graph(CumulativeMax()))  # TorchScript has it


def test_a_python_autograd_function_is_named_for_torchscript():
    with pytest.raises(ExportError) as error:
        export_torchscript(_toy_graph(PythonFunction()))
    message = str(error.value)
    assert "\n" not in message and "layer 'body.1' (PythonFunction)" in message and "DoubleFn" in message
    # the ONNX exporter inlines the function's forward (x * 2): it exports, and onnxruntime agrees
    session = ort.InferenceSession(export_onnx(_toy_graph(PythonFunction())))
    assert session.run(None, {"z": np.zeros((3, 4), np.float32)})[0].shape == (3, 1, 2, 2)


def test_the_cli_names_the_layer_of_a_registered_arch(tmp_path, capsys, monkeypatch):
    def build_toy(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        return ToyGenerator(NumpyScale()), nn.Identity()

    monkeypatch.setitem(MODELS._entries, "toy-numpy", build_toy)
    cfg = RunConfig(recipe="toy", model=ModelConfig(arch="toy-numpy", latent_dim=4, resolution=2))
    checkpoint = tmp_path / "toy.safetensors"
    save_tensors(
        checkpoint, module_tensors("generator", ToyGenerator(NumpyScale())), {"config": to_dict(cfg)}, "generator"
    )
    out = tmp_path / "toy.onnx"
    for fmt in ("onnx", "torchscript"):
        assert_one_line_error(capsys, ["export", checkpoint, "--format", fmt, "--out", out], "'body.1' (NumpyScale)")
    assert not out.exists() and not (tmp_path / "toy.onnx.json").exists()


# --- the original scripts' format, both ways ---------------------------------------------------------------------
def _reference_module():
    spec = importlib.util.spec_from_file_location("seed_reference", REPO / "benchmarks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


REFERENCE = _reference_module()
SEED_RECIPES = ["mnist-mlp", "mnist-conv", "mnist-cgan", "anime-dcgan", "mnist-mlp-bn"]


def original_network(recipe: str, which: str) -> nn.Module:
    """The original script's network as benchmarks/reference.py writes it (its inline nn.Sequentials are
    declared here from the spec in the same layer order; the classes it defines at module level are imported)."""
    # mnist-mlp-bn's original is Keras; its PyTorch form here is reference.py's nn.Sequential layout (so its
    # key names) with the spec's Keras values: LeakyReLU 0.3, BatchNorm epsilon 1e-3, D's Dense(1, sigmoid)
    slope = 0.3 if recipe == "mnist-mlp-bn" else 0.01
    if recipe in ("mnist-mlp", "mnist-mlp-bn") and which == "d":
        layers = [nn.Flatten(), nn.Linear(784, 512), nn.LeakyReLU(slope), nn.Linear(512, 256), nn.LeakyReLU(slope)]
        return nn.Sequential(*layers, nn.Linear(256, 1), nn.Sigmoid())
    if recipe == "mnist-mlp":
        return nn.Sequential(
            nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784), nn.Tanh()
        )
    if recipe == "mnist-mlp-bn":
        return nn.Sequential(
            *[nn.Linear(100, 256, bias=False), nn.BatchNorm1d(256, eps=1e-3), nn.LeakyReLU(slope)],
            *[nn.Linear(256, 512, bias=False), nn.BatchNorm1d(512, eps=1e-3), nn.LeakyReLU(slope)],
            *[nn.Linear(512, 784, bias=False), nn.Tanh()],
        )
    if recipe == "mnist-conv" and which == "g":
        return nn.Sequential(
            *[nn.Linear(100, 3136), REFERENCE.View(1, 56, 56), nn.BatchNorm2d(1), nn.ReLU(True)],
            *[nn.Conv2d(1, 50, 3, 1, 1), nn.BatchNorm2d(50), nn.ReLU(True)],
            *[nn.Conv2d(50, 25, 3, 1, 1), nn.BatchNorm2d(25), nn.ReLU(True), nn.Conv2d(25, 1, 2, 2, 0), nn.Tanh()],
        )
    if recipe == "mnist-conv":
        return nn.Sequential(
            *[nn.Conv2d(1, 32, 5, 1, 2), nn.LeakyReLU(0.2, True), nn.AvgPool2d(2, 2)],
            *[nn.Conv2d(32, 64, 5, 1, 2), nn.LeakyReLU(0.2, True), nn.AvgPool2d(2, 2), nn.Flatten()],
            *[nn.Linear(64 * 7 * 7, 1024), nn.LeakyReLU(0.2, True), nn.Linear(1024, 1), nn.Sigmoid()],
        )
    if recipe == "mnist-cgan":
        return REFERENCE.CondG() if which == "g" else REFERENCE.CondD()
    return REFERENCE.anime_g() if which == "g" else REFERENCE.anime_d()


def call_original(recipe: str, network: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The original's forward as its script calls it: G -> images [B, C, H, W]; D -> probabilities [B]."""
    b = x.shape[0]
    if recipe == "mnist-cgan":
        if x.dim() == 2:
            return network(x, torch.eye(10)[labels])
        fill = torch.eye(10).view(10, 10, 1, 1).expand(10, 10, 64, 64)[labels]  # the script's label planes
        return network(x, fill).view(-1)
    if x.dim() == 2:  # G
        out = network(x.view(b, 100, 1, 1) if recipe == "anime-dcgan" else x)
        return out.view(b, *((3, 96, 96) if recipe == "anime-dcgan" else (1, 28, 28)))
    return network(x).view(-1)


@pytest.mark.parametrize("recipe", SEED_RECIPES)
def test_reference_export_loads_into_the_original_and_gives_its_outputs(trained_runs, recipe, tmp_path, capsys):
    run = trained_runs[recipe]
    for which in ("g", "d"):
        args = ["export", run, "--format", "reference", "--which", which, "--out", tmp_path / f"{which}.pth"]
        assert run_cli(capsys, *args)[0] == 0
    generator = ganforge.load_generator(run)
    labels = torch.arange(6) % 10 if generator.num_classes else None
    z = generator.noise(6, seed=9)
    g_state = torch.load(tmp_path / "g.pth", weights_only=True)
    original_g = original_network(recipe, "g")
    original_g.load_state_dict(g_state, strict=True)
    with torch.no_grad():
        theirs = call_original(recipe, original_g.eval(), z, labels)
    ours = generator.decode(z, labels)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    assert torch.equal(generator.to_uint8(theirs), generator.to_uint8(ours))  # the same images

    original_d = original_network(recipe, "d")
    original_d.load_state_dict(torch.load(tmp_path / "d.pth", weights_only=True), strict=True)
    with torch.no_grad():
        probability = call_original(recipe, original_d.eval(), ours, labels)
        logits = generator.discriminator(ours, labels)
    torch.testing.assert_close(probability, d_probability(recipe, logits), rtol=0, atol=1e-6)


def d_probability(recipe: str, output: torch.Tensor) -> torch.Tensor:
    """What the original D outputs, from ganforge's D output: the sigmoid of the logit, or the output itself
    where ganforge keeps the original's own final sigmoid (mnist-mlp-bn: model.d_output_sigmoid)."""
    return output if get_recipe(recipe).model.d_output_sigmoid else torch.sigmoid(output)


def _randomised_original(recipe: str, which: str) -> nn.Module:
    """An original network with random weights and BatchNorm statistics that are not the initial ones."""
    torch.manual_seed(1)
    network = original_network(recipe, which)
    labels = torch.arange(4) % 10
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, 100) if which == "g" else _image_batch(recipe, 4)
            call_original(recipe, network.train(), x, labels)
    return network.eval()


def _image_batch(recipe: str, b: int) -> torch.Tensor:
    cfg = get_recipe(recipe).model
    return torch.rand(b, cfg.channels, cfg.resolution, cfg.resolution) * 2 - 1


@pytest.mark.parametrize("recipe", SEED_RECIPES)
def test_an_original_scripts_state_dict_loads_into_ganforge(recipe, tmp_path):
    cfg = get_recipe(recipe)
    generator, discriminator = build_models(cfg.model)
    labels = torch.arange(4) % 10 if cfg.model.num_classes else None
    for which, ours in (("g", generator), ("d", discriminator)):
        original = _randomised_original(recipe, which)
        torch.save(original.state_dict(), tmp_path / f"{which}.pth")
        assert load_reference_state_dict(tmp_path / f"{which}.pth", ours, recipe, which) is ours
        x = torch.randn(4, 100) if which == "g" else _image_batch(recipe, 4)
        with torch.no_grad():
            expected = call_original(recipe, original, x, labels)
            actual = ours.eval()(x, labels)
        torch.testing.assert_close(
            actual if which == "g" else d_probability(recipe, actual), expected, rtol=0, atol=1e-6
        )


def test_reference_loading_errors_and_other_sources(trained_runs, tmp_path):
    generator, _ = build_models(get_recipe("mnist-conv").model)
    whole = tmp_path / "whole.pth"
    torch.save(original_network("mnist-conv", "g"), whole)  # the module pickled, not its state dict
    nested = tmp_path / "nested.pth"
    torch.save({"G": original_network("mnist-conv", "g").state_dict()}, nested)
    other = tmp_path / "other.pth"
    torch.save(original_network("mnist-mlp", "g").state_dict(), other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    for path, fragments in (
        (whole, ["not a plain state dict", "weights_only=True", "Sequential"]),
        (nested, ["not a plain state dict", "'G'"]),
        (other, ["does not fit", "fc.weight", "[256, 100]"]),
        (junk, ["not a plain state dict"]),
    ):
        with pytest.raises(CheckpointError) as error:
            load_reference_state_dict(path, generator, "mnist-conv", "g")
        assert "\n" not in str(error.value) and all(f in str(error.value) for f in fragments), str(error.value)

    # ganforge's own files: a checkpoint, the exports, and the reference export read back
    run = trained_runs["mnist-quick"]
    generator, discriminator = build_models(get_recipe("mnist-quick").model)
    tensors, _, _ = load_tensors(run / "checkpoints" / "latest.safetensors")
    load_reference_state_dict(run / "generator.safetensors", generator, "dcgan28", "g", ema=True)
    assert all(torch.equal(v, tensors[f"ema.{k}"]) for k, v in generator.state_dict().items())
    load_reference_state_dict(run / "checkpoints" / "latest.safetensors", generator, "dcgan28", "g")
    assert all(torch.equal(v, tensors[f"generator.{k}"]) for k, v in generator.state_dict().items())
    load_reference_state_dict(run / "discriminator.safetensors", discriminator, "mnist-quick", "d")
    assert all(torch.equal(v, tensors[f"discriminator.{k}"]) for k, v in discriminator.state_dict().items())

    cgan = trained_runs["mnist-cgan"]
    exported = ganforge.load_generator(cgan).network.state_dict()
    wrapped = tmp_path / "dataparallel.pth"
    original = original_network("mnist-cgan", "g")
    original.load_state_dict(reference_state_dict(ganforge.load_generator(cgan).network, "cdcgan", "g"))
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, wrapped)  # nn.DataParallel's prefix
    fresh, _ = build_models(get_recipe("mnist-cgan").model)
    load_reference_state_dict(wrapped, fresh, "mnist-cgan", "g")
    assert all(torch.equal(v, exported[k]) for k, v in fresh.state_dict().items())


# --- the standalone example -------------------------------------------------------------------------------------
def test_onnx_example_writes_a_grid_without_torch(trained_runs, tmp_path, capsys):
    run = trained_runs["digits-quick"]
    model = tmp_path / "digits.onnx"
    assert run_cli(capsys, "export", run, "--out", model)[0] == 0
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # any `import torch` in the example fails\n"
        f"sys.argv = ['onnx_sample.py', {str(model)!r}, '--out', 'grid.png', '--seed', '3']\n"
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (10 * 30 + 2, 10 * 30 + 2)  # 100 images, one of each class per row, 2-pixel padding
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()

    # each tile is the generator's image for the example's own inputs
    example = runpy.run_path(str(EXAMPLE))
    session, info = example["load"](model)
    feeds = example["draw_inputs"](info, 100, 3)
    assert np.array_equal(grid[2:30, 32:60], example["generate"](session, info, feeds)[1, 0])
    generator = ganforge.load_generator(run)
    z, labels = torch.from_numpy(feeds["z"]), torch.from_numpy(feeds["labels"])
    raw = generator.decode(z, labels)
    tiles = np.stack(
        [grid[2 + 30 * (i // 10) : 30 + 30 * (i // 10), 2 + 30 * (i % 10) : 30 + 30 * (i % 10)] for i in range(100)]
    )
    assert_uint8_matches(generator.to_uint8(raw)[:, 0], tiles, ((raw * 0.5 + 0.5) * 255)[:, 0], 1e-4 * 0.5 * 255)


def test_a_spectral_norm_discriminator_exports_its_effective_weights():
    cfg = get_recipe("mnist-cgan").model
    cfg.spectral_norm = True
    _, discriminator = build_models(cfg)
    x, labels = _image_batch("mnist-cgan", 4), torch.arange(4)
    with torch.no_grad():
        discriminator.train()(x, labels)  # a power iteration: u and v move from their initial values
    discriminator.eval()
    state = reference_state_dict(discriminator, "mnist-cgan", "d")
    assert not any("parametrizations" in key for key in state)
    original = original_network("mnist-cgan", "d")
    original.load_state_dict(state, strict=True)
    with torch.no_grad():
        expected = torch.sigmoid(discriminator(x, labels))  # the parametrized network itself still runs
        torch.testing.assert_close(call_original("mnist-cgan", original.eval(), x, labels), expected, rtol=0, atol=1e-6)


def test_a_packed_discriminator_exports_one_logit_per_pack():
    cfg = get_recipe("stacked-mnist-modern")
    assert cfg.model.d_pack == 2
    torch.manual_seed(0)
    _, discriminator = build_models(cfg.model)
    discriminator.eval()
    session = ort.InferenceSession(export_onnx(DiscriminatorGraph(discriminator, [0.5], [0.5], raw=True)))
    assert session.get_outputs()[0].shape[0] == "packs"
    x = torch.rand(8, 3, 28, 28) * 2 - 1  # four packs
    with torch.no_grad():
        expected = discriminator(x)  # [4]
    actual = session.run(None, {"images": x.numpy()})[0]
    assert actual.shape == (4,) and np.abs(actual - expected.numpy()).max() <= 1e-5
