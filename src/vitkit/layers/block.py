"""Pre-norm transformer encoder block (ViT eqs. 2-3) with drop-path and layer-scale."""
from __future__ import annotations

import torch
from torch import nn

from vitkit.layers.attention import Attention
from vitkit.layers.mlp import Mlp


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a sample's residual branch with prob p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerScale(nn.Module):
    """CaiT layer-scale: multiply a residual branch by a learned per-channel gamma."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """z' = z + MSA(LN(z));  z_out = z' + MLP(LN(z')).

    ``num_queries=n`` returns only the first n output tokens (B, n, D): those tokens query all N
    (keys and values from every token), and only their rows go through the projection and MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: float | None = None, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, norm_eps)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        # (B, n, D); all N tokens if None. A copy when sliced: inductor's int8 fusion (torch 2.14,
        # torchao 0.18) computes the sliced residual wrongly under freezing; x itself needs none.
        y = x[:, :num_queries].contiguous()
        y = y + self.drop_path1(self.ls1(self.attn(self.norm1(x), num_queries)))
        return y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
