"""first_order_only: hand-written backward passes refuse to record a graph instead of giving a
partial second derivative."""

import pytest
import torch

from graphseq.kernels import linear_scan
from graphseq.kernels._autograd import first_order_only


class _Mul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    @first_order_only("toy product", "use x * w")
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, g * x


class _MulOnce(_Mul):
    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, g * x


def _penalty_grad(fn):
    """d/dw of |d/dx (fn(x, w) + x^2 w).sum()|^2: the weight-only second derivative of a
    gradient penalty, where part of d/dx comes from differentiable ops."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([3.0, -1.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((fn(x, w) + x.square() * w).sum(), x, create_graph=True)
    return torch.autograd.grad(g.square().sum(), w)[0]


def test_once_differentiable_drops_the_kernel_share_silently():
    """Why the guard exists: PyTorch's decorator lets this through with a wrong answer."""
    exact = _penalty_grad(lambda x, w: x * w)
    silent = _penalty_grad(_MulOnce.apply)
    assert not torch.allclose(silent, exact)


def test_first_order_only_refuses_create_graph_and_allows_first_order():
    with pytest.raises(RuntimeError, match=r"toy product: .*once_differentiable.*use x \* w"):
        _penalty_grad(_Mul.apply)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Mul.apply, (x, w))
    _Mul.apply(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.detach())


def test_a_kernel_op_refuses_double_backward_and_its_reference_does_not():
    a = torch.rand(1, 5, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 5, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"linear_scan.*backend='reference'"):
        torch.autograd.grad(linear_scan(a, b, backend="torch")[0].sum(), b, create_graph=True)
    h, _ = linear_scan(a, b, backend="reference")
    (g,) = torch.autograd.grad(h.sum(), b, create_graph=True)
    torch.autograd.grad(g.sum(), a)
