"""The checkpoint file format: pickle-free, atomic, and clear about damaged or foreign files."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ganforge import checkpoint as ckpt
from ganforge.errors import CheckpointError


def test_round_trip_of_tensors_and_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7, dtype=torch.int64)}
    ckpt.save_tensors(path, tensors, {"epoch": 3, "name": "x"}, kind="training")
    loaded, meta, kind = ckpt.load_tensors(path)
    assert kind == "training" and meta == {"epoch": 3, "name": "x"}
    assert torch.equal(loaded["w"], tensors["w"]) and loaded["step"].item() == 7


def test_optimizer_state_flattens_and_restores_bit_exactly(tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = ckpt.flatten_state("optim", opt.state_dict(), tensors)
    json.dumps(skeleton)  # the non-tensor part is plain JSON
    path = tmp_path / "o.safetensors"
    ckpt.save_tensors(path, tensors, {"optim": skeleton}, kind="training")
    loaded, meta, _ = ckpt.load_tensors(path)
    restored = ckpt.unflatten_state(meta["optim"], loaded)
    fresh = torch.optim.Adam(torch.nn.Linear(4, 2).parameters(), lr=1.0)
    fresh.load_state_dict(restored)
    original = opt.state_dict()
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(fresh.state_dict()["state"][index][key], value)
    assert fresh.param_groups[0]["lr"] == 1e-3 and tuple(fresh.param_groups[0]["betas"]) == (0.5, 0.999)


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    ckpt.save_tensors(path, {"w": torch.zeros(2)}, {"v": 1}, kind="training")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises(OSError):
        ckpt.save_tensors(path, {"w": torch.ones(2)}, {"v": 2}, kind="training")
    monkeypatch.undo()
    _, meta, _ = ckpt.load_tensors(path)
    assert meta == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.safetensors"]  # no temp file left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.safetensors"
    ckpt.save_tensors(path, {"w": torch.randn(100)}, {}, kind="training")
    data = path.read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|damaged"):
            ckpt.load_tensors(path)


def test_foreign_and_newer_files_are_rejected(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        ckpt.load_tensors(text)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a ganforge checkpoint"):
        ckpt.load_tensors(plain)
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(1)}, newer, metadata={"format": ckpt.FORMAT, "format_version": "99", "meta": "{}"})
    with pytest.raises(CheckpointError, match="format 99, newer"):
        ckpt.load_tensors(newer)


def test_header_length_beyond_the_file_is_truncated(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load_tensors(path)


def test_loading_into_another_architecture_names_the_mismatch(tmp_path):
    tensors = ckpt.module_tensors("generator", torch.nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="another architecture"):
        ckpt.load_module("generator", torch.nn.Linear(4, 2), tensors, tmp_path / "x")
