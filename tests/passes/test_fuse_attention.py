"""fuse-attention: the explicit attention chain becomes scaled_dot_product_attention."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.models import MODELS
from tests.passes.helpers import ops, optimize_checked


class Attention(nn.Module):
    def __init__(self, mask=False, divide=False, keep_probs=False):
        super().__init__()
        self.mask, self.divide, self.keep_probs = mask, divide, keep_probs

    def forward(self, q, k, v, m):
        scores = q @ k.transpose(-2, -1)
        scores = scores / math.sqrt(q.shape[-1]) if self.divide else scores * 0.3
        if self.mask:
            scores = scores + m
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v
        return (out, probs) if self.keep_probs else out


def inputs():
    return tuple(torch.randn(2, 4, 6, 8) for _ in range(3)) + (torch.randn(1, 1, 6, 6),)


@pytest.mark.parametrize("kw", [{}, {"mask": True}, {"divide": True, "mask": True}])
def test_attention_fuses(kw):
    result = optimize_checked(Attention(**kw), inputs(), "fuse-attention")
    assert ops(result.graph) == ["aten.scaled_dot_product_attention"]


def test_returned_probabilities_block_fusion():
    result = optimize_checked(Attention(keep_probs=True), inputs(), "fuse-attention")
    assert not result.changed and "aten.softmax.int" in ops(result.graph)


@pytest.mark.parametrize("name", ["hf_bert", "hf_vit"])
def test_hf_models_fuse(name):
    if name not in MODELS:
        pytest.skip("transformers is not installed")
    model, x = MODELS[name]()
    result = optimize_checked(model, x, "fuse")
    assert ops(result.graph).count("aten.scaled_dot_product_attention") == 2
    assert result.report[-1].nodes[1] < result.report[0].nodes[0]
