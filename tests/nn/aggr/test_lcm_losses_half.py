"""LCMAggregation's regularisers in float16: the squared gaps are averaged in float32."""

import copy

import pytest
import torch

from graphseq.nn.aggr import LCMAggregation


@pytest.mark.parametrize("loss", ["associativity_loss", "identity_loss"])
def test_lcm_losses_do_not_overflow_in_float16(loss):
    torch.manual_seed(0)
    aggr = LCMAggregation(8, 8)
    x = torch.randn(64, 8)
    x[:4] *= 3000.0  # a few large elements: squared gaps above 65,504, their mean below it
    half = copy.deepcopy(aggr).half()
    ref = getattr(copy.deepcopy(half).float(), loss)(
        x.half().float(), generator=torch.Generator().manual_seed(0)
    )
    out = getattr(half, loss)(x.half(), generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16
    assert torch.isfinite(ref) and ref < 65504
    assert torch.isfinite(out)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=0.0)
