"""Package hygiene: importing touches no GPU and no network; `python -m ganforge` works."""

import subprocess
import sys

CHECK = """
import pkgutil, socket, importlib
def no_network(*args, **kwargs):
    raise AssertionError("network touched at import")
socket.socket.connect = no_network
socket.create_connection = no_network
import ganforge
for module in pkgutil.walk_packages(ganforge.__path__, "ganforge."):
    if module.name != "ganforge.__main__":
        importlib.import_module(module.name)
from ganforge.cli import build_parser
build_parser()
import torch
assert not torch.cuda.is_initialized(), "CUDA initialised at import"
print("ok")
"""


def test_import_touches_no_gpu_and_no_network():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "ganforge", "recipes"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mnist-mlp" in result.stdout
