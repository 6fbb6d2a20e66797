"""The CPU fast path changes kernels, never the maths: OneDNNLinear against nn.Linear."""

import copy

import pytest
import torch
from torch import nn

from ganforge.training.fastpath import OneDNNLinear, _onednn_available, use_onednn_linear

pytestmark = pytest.mark.skipif(not _onednn_available(), reason="this PyTorch build has no oneDNN linear")


@pytest.mark.parametrize("rows", [3, 64, 200])  # both sides of the grad-input switch-over
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [(37, 29, 11), (400, 300, 20)])  # products below and above oneDNN's share
def test_onednn_linear_matches_nn_linear_forward_and_backward(rows, bias, sizes):
    torch.manual_seed(0)
    n_in, n_hidden, n_out = sizes
    reference = nn.Sequential(
        nn.Linear(n_in, n_hidden, bias=bias), nn.LeakyReLU(0.2), nn.Linear(n_hidden, n_out, bias=bias)
    )
    fast = copy.deepcopy(reference)
    assert use_onednn_linear(fast) == 2
    assert all(type(m) is OneDNNLinear for m in fast if isinstance(m, nn.Linear))
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(rows, n_in)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fast = reference(x_ref), fast(x_fast)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for p_fast, p_ref in zip(fast.parameters(), reference.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-5, atol=1e-5)


def test_onednn_linear_without_input_gradient_and_under_autocast():
    torch.manual_seed(1)
    layer = nn.Linear(8, 16)
    use_onednn_linear(layer)
    x = torch.randn(5, 3, 8)  # extra leading dimensions are flattened and restored
    out = layer(x)
    assert out.shape == (5, 3, 16)
    out.sum().backward()  # x needs no gradient: only the weight and bias get one
    assert layer.weight.grad is not None and layer.bias.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # falls back to F.linear, which autocast handles
        assert layer(x).dtype == torch.bfloat16


def test_small_heads_keep_plain_linear():
    head = nn.Linear(256, 1)
    assert use_onednn_linear(head) == 0 and type(head) is nn.Linear
