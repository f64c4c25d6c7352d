"""A small patch transformer (ViT-style) for the 8×8 digits task.

Every projection is an ``nn.Linear`` (patch embedding, q / k / v / out, the MLP and
the head) and attention is written with ``torch.matmul`` / ``softmax``, so
``hwquant.quantize`` swaps every weight layer and SmoothQuant finds the
LayerNorm → Linear pairs (q, k and v share one LayerNorm).

>>> import torch
>>> model = DigitsTransformer()
>>> model(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> sorted(n for n, m in model.named_modules() if n.startswith("blocks.0.attn."))
['blocks.0.attn.k', 'blocks.0.attn.out', 'blocks.0.attn.q', 'blocks.0.attn.v']
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hwquant.models.registry import record_architecture, register_model

__all__ = ["Attention", "DigitsTransformer", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head self-attention from four ``nn.Linear`` projections:
    softmax(q kᵀ / √d) v per head, heads concatenated, then ``out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:
        # [B, N, dim] -> [B, heads, N, head_dim]
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).flatten(2)  # [B, N, dim]
        return self.out(y)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x))))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class DigitsTransformer(nn.Module):
    """Patch transformer for ``channels``×``image_size``×``image_size`` images:
    ``patch``×``patch`` patches → Linear embedding + learned position embedding →
    ``depth`` pre-LN blocks → LayerNorm → mean over tokens → Linear head.

    With the defaults (8×8 digits, 2×2 patches) there are 16 tokens of width 32.
    """

    def __init__(
        self,
        patch: int = 2,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 2,
        num_classes: int = 10,
        image_size: int = 8,
        channels: int = 1,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        self.patch, self.grid = patch, image_size // patch
        tokens = self.grid**2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(
            *(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        if type(self) is DigitsTransformer:  # a subclass is not rebuilt by this name
            record_architecture(
                self,
                "DigitsTransformer",
                patch=patch,
                dim=dim,
                depth=depth,
                heads=heads,
                mlp_ratio=mlp_ratio,
                num_classes=num_classes,
                image_size=image_size,
                channels=channels,
            )

    def forward(self, x: Tensor) -> Tensor:
        p, g = self.patch, self.grid
        # [B, C, g·p, g·p] -> [B, C, g, p, g, p] -> [B, g, g, C, p, p] -> [B, tokens, C·p·p]
        patches = x.unflatten(2, (g, p)).unflatten(4, (g, p)).permute(0, 2, 4, 1, 3, 5)
        patches = patches.flatten(3).flatten(1, 2)
        h = self.embed(patches) + self.pos
        h = self.norm(self.blocks(h))
        return self.head(h.mean(1))


register_model("DigitsTransformer", DigitsTransformer)
