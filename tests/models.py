"""Small seeded models built in code, for every test that needs a real network to chew on.

`MODELS` maps a name to a factory returning `(model, example_inputs)`; parametrize over it:

    @pytest.mark.parametrize("name", MODEL_NAMES)
    def test_something(name):
        model, inputs = MODELS[name]()

HF transformers models (random init, tiny configs, nothing downloaded) are registered only
when transformers imports; `FX_TRACEABLE` names the models torch.fx.symbolic_trace can trace.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
MODELS: dict[str, Factory] = {}
FX_TRACEABLE: set[str] = set()
HF_MODELS: set[str] = set()


def register(name: str, *, fx: bool = True, hf: bool = False) -> Callable[[Factory], Factory]:
    """Add a factory to MODELS; `fx` says whether torch.fx.symbolic_trace can trace the model."""
    def add(factory: Factory) -> Factory:
        def seeded() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
            torch.manual_seed(0)
            model, inputs = factory()
            return model.eval(), inputs
        MODELS[name] = seeded
        if fx:
            FX_TRACEABLE.add(name)
        if hf:
            HF_MODELS.add(name)
        return seeded
    return add


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running stats and affine params, so BN folding/inference is really exercised."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


# ---- plain PyTorch blocks ----------------------------------------------------------------

@register("mlp")
def mlp():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 10))
    return model, (torch.randn(4, 16),)


@register("cnn_bn")
def cnn_bn():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return _randomize_batchnorm(model), (torch.randn(2, 3, 16, 16),)


class ResidualBlock(nn.Module):
    """ResNet basic block with a projection shortcut."""

    def __init__(self, cin: int = 8, cout: int = 16, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register("residual")
def residual():
    return _randomize_batchnorm(ResidualBlock()), (torch.randn(2, 8, 16, 16),)


class DepthwiseSeparable(nn.Module):
    """MobileNet block: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self, cin: int = 8, cout: int = 16) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.pointwise(self.act(self.bn1(self.depthwise(x))))))


@register("depthwise_separable")
def depthwise_separable():
    return _randomize_batchnorm(DepthwiseSeparable()), (torch.randn(2, 8, 12, 12),)


class DenseBlock(nn.Module):
    """DenseNet-style: each layer sees the concat of everything before it."""

    def __init__(self, cin: int = 8, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(cin + i * growth), nn.ReLU(), nn.Conv2d(cin + i * growth, growth, 3, padding=1))
            for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


@register("dense_concat")
def dense_concat():
    return _randomize_batchnorm(DenseBlock()), (torch.randn(2, 8, 8, 8),)


class ShuffleBlock(nn.Module):
    """Grouped 1x1 conv, channel shuffle (view/transpose/view), depthwise conv, grouped conv."""

    def __init__(self, channels: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.gconv1 = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gconv2 = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.gconv1(x)))
        n, c, h, w = out.shape
        out = out.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        out = self.gconv2(self.bn2(self.dwconv(out)))
        return torch.relu(out + x)


@register("grouped_shuffle")
def grouped_shuffle():
    return _randomize_batchnorm(ShuffleBlock()), (torch.randn(2, 16, 8, 8),)


class SqueezeExcitation(nn.Module):
    """Conv, then channel gating from a pooled bottleneck MLP (SENet)."""

    def __init__(self, channels: int = 16, reduction: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(out.mean((2, 3), keepdim=True)))))
        return out * scale


@register("squeeze_excitation")
def squeeze_excitation():
    return SqueezeExcitation(), (torch.randn(2, 3, 8, 8),)


@register("transformer_encoder", fx=False)
def transformer_encoder():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    return model, (torch.randn(2, 6, 32),)


class RepVGGBlock(nn.Module):
    """RepVGG training-time block: 3x3 conv+BN, 1x1 conv+BN and identity BN branches, summed."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv3 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv3(x) + self.conv1(x) + self.identity(x))


@register("repvgg")
def repvgg():
    return _randomize_batchnorm(RepVGGBlock()), (torch.randn(2, 8, 8, 8),)


def _ffn(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))


class MultiTaskDAG(nn.Module):
    """A shared trunk wired as a DAG (residual blocks, a two-branch join, an edge across blocks), two task heads."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.block1, self.block2a, self.block2b, self.block3 = (_ffn(width) for _ in range(4))
        self.head_cls = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 5))
        self.head_reg = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = torch.relu(self.stem(x))
        x1 = x0 + self.block1(x0)
        x2 = x1 + self.block2a(x1) + self.block2b(x1)
        x3 = x2 + self.block3(x2 + x0)
        return self.head_cls(x3), self.head_reg(x2)


@register("multitask_dag")
def multitask_dag():
    return MultiTaskDAG(), (torch.randn(4, 16),)


class TopKMoE(nn.Module):
    """A user-written top-k MoE: softmax router, experts in an nn.ModuleList, renormalised top-k, index_add."""

    def __init__(self, width: int = 16, hidden: int = 32, experts: int = 8, top_k: int = 2) -> None:
        super().__init__()
        self.gate = nn.Linear(width, experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
                                     for _ in range(experts))
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, index = torch.topk(torch.softmax(self.gate(x), dim=-1), self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(index == e)
            out = out.index_add(0, token, expert(x[token]) * weights[token, slot, None])
        return out


class SwiGLUExpert(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(width, hidden), nn.Linear(hidden, width), nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class ScatterMoE(nn.Module):
    """Top-k MoE with SwiGLU experts, un-normalised top-k probabilities and a scatter_add combine."""

    def __init__(self, width: int = 16, hidden: int = 24, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(SwiGLUExpert(width, hidden) for _ in range(experts))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, index = torch.topk(torch.softmax(self.router(x), dim=-1), self.k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(index == e)
            y = expert(x[token]) * weights[token, slot, None]
            out = out.scatter_add(0, token[:, None].expand(-1, x.shape[1]), y)
        return out


class MoENet(nn.Module):
    """Tokens in, a residual MoE layer, a head: the MoE inside a network."""

    def __init__(self, moe: nn.Module) -> None:
        super().__init__()
        self.embed, self.moe, self.head = nn.Linear(12, 16), moe, nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(h + self.moe(h))


class GlobalLocal(nn.Module):
    """A trained global expert, a small local expert for one user's data, and a learned gate between them."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.global_expert = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                           nn.Linear(128, classes))
        self.local_expert = nn.Sequential(nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, classes))
        self.gate = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        return g * self.global_expert(x) + (1 - g) * self.local_expert(x)


@register("topk_moe", fx=False)
def topk_moe():
    return MoENet(TopKMoE()), (torch.randn(12, 12),)


@register("scatter_moe", fx=False)
def scatter_moe():
    return MoENet(ScatterMoE()), (torch.randn(12, 12),)


@register("global_local")
def global_local():
    return GlobalLocal(), (torch.randn(4, 16),)


# ---- HF transformers (random init, tiny configs) ------------------------------------------

try:
    import transformers
    from transformers.utils import logging as _hf_logging

    _hf_logging.set_verbosity_error()
except ImportError:  # transformers is in the dev extra; without it the HF models are skipped
    transformers = None

TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


def _token_ids(vocab: int = 100, batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))


if transformers is not None:

    @register("hf_bert", fx=False, hf=True)
    def hf_bert():
        config = transformers.BertConfig(**TINY_TEXT, max_position_embeddings=64, attn_implementation="eager")
        return transformers.BertModel(config), (_token_ids(),)

    @register("hf_gpt2", fx=False, hf=True)
    def hf_gpt2():
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100,
                                         use_cache=False, attn_implementation="eager")
        return transformers.GPT2Model(config), (_token_ids(),)

    @register("hf_llama", fx=False, hf=True)
    def hf_llama():
        config = transformers.LlamaConfig(**TINY_TEXT, num_key_value_heads=2, max_position_embeddings=64,
                                          use_cache=False, attn_implementation="eager")
        return transformers.LlamaModel(config), (_token_ids(),)

    @register("hf_vit", fx=False, hf=True)
    def hf_vit():
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, image_size=16, patch_size=4, num_channels=3,
                                        attn_implementation="eager")
        return transformers.ViTModel(config, add_pooling_layer=False), (torch.randn(2, 3, 16, 16),)

    @register("hf_resnet", fx=False, hf=True)
    def hf_resnet():
        config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                           depths=[1, 1], layer_type="basic")
        return _randomize_batchnorm(transformers.ResNetModel(config)), (torch.randn(2, 3, 32, 32),)


MODEL_NAMES = sorted(MODELS)


@functools.lru_cache(maxsize=None)
def captured(name: str, method: str = "export"):
    """(model, inputs, graph) for a MODELS entry, captured once per test session.

    Shared between tests: read it, or `graph.clone()` before editing.
    """
    import torchcarve as tc

    model, inputs = MODELS[name]()
    return model, inputs, tc.capture(model, inputs, method=method)
