"""CLIP's two visual encoders (VisionTransformer and ModifiedResNet) as plain torch modules.

Written from the architecture as OpenAI describes and checkpoints it: parameter names equal the
`visual.*` keys of OpenAI's state dicts, so a checkpoint loads with `load_state_dict` and nothing
renamed. `forward` is `encode_image`: pixels [N, 3, R, R] -> features [N, D], not L2-normalized.

Export-friendly by construction: no tensor is created inside `forward` (so a traced graph carries no
device constant and runs on GPU too), and attention is written out with matmul/softmax so the ONNX
graph uses only basic operators.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .architectures import ResNetSpec, ViTSpec, VisualSpec


def _attention(query: torch.Tensor, key_value: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor,
               out_proj: nn.Linear, heads: int) -> torch.Tensor:
    """Multi-head attention, batch first: query [N, Lq, C], key_value [N, L, C] -> [N, Lq, C].

    `in_weight`/`in_bias` hold the q, k, v projections stacked, as nn.MultiheadAttention stores them.
    """
    batch, query_len, channels = query.shape
    head_dim = channels // heads
    w_q, w_k, w_v = in_weight.chunk(3)
    b_q, b_k, b_v = in_bias.chunk(3)
    q = F.linear(query, w_q, b_q).reshape(batch, query_len, heads, head_dim).transpose(1, 2)
    k = F.linear(key_value, w_k, b_k).reshape(batch, -1, heads, head_dim).transpose(1, 2)
    v = F.linear(key_value, w_v, b_v).reshape(batch, -1, heads, head_dim).transpose(1, 2)
    weights = torch.softmax((q * head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, query_len, channels)
    return out_proj(out)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Parameters laid out like nn.MultiheadAttention (in_proj_weight/bias, out_proj)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attention(x, x, self.in_proj_weight, self.in_proj_bias, self.out_proj, self.heads)


def activation_module(name: str) -> nn.Module:
    """The MLP's activation: OpenAI's QuickGELU, or exact GELU (LAION's open_clip models, most HF configs)."""
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int = 0, activation: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        mlp_width = mlp_width or 4 * width
        self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, mlp_width), gelu=activation_module(activation), c_proj=nn.Linear(mlp_width, width)))
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int = 0, activation: str = "quick_gelu",
                 eps: float = 1e-5):
        super().__init__()
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, mlp_width, activation, eps) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        width, grid = spec.width, spec.image_resolution // spec.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=spec.patch_size, stride=spec.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=spec.layer_norm_eps)
        self.transformer = Transformer(width, spec.layers, spec.heads, spec.mlp_width, spec.activation,
                                       spec.layer_norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=spec.layer_norm_eps)
        self.proj = nn.Parameter(torch.empty(width, spec.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [N, grid*grid, width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased strides: average pooling instead of strided convolutions."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map attends over all positions (QKV attention)."""

    def __init__(self, spatial: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(spatial * spatial + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding
        in_weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        in_bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        return _attention(x[:, :1], x, in_weight, in_bias, self.c_proj, self.heads)[:, 0]


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem, anti-aliased strides, attention pooling instead of average pooling."""

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        width = spec.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for index, blocks in enumerate(spec.layers):
            planes, stride = width * 2 ** index, 1 if index == 0 else 2
            layer = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            layer += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.attnpool = AttentionPool2d(spec.image_resolution // 32, width * 32, spec.heads, spec.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(pixels)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def build_visual(spec: VisualSpec) -> nn.Module:
    """An uninitialized encoder of the given architecture (parameters hold arbitrary values)."""
    return VisionTransformer(spec) if isinstance(spec, ViTSpec) else ModifiedResNet(spec)
