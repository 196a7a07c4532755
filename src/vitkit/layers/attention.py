"""Multi-head self-attention (Vaswani et al.; ViT eq. 2) on ``scaled_dot_product_attention``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """MSA(z) = concat_h softmax(q_h k_h^T / sqrt(d)) v_h, then a linear projection.

    The fused SDPA kernel is used unless ``capture`` is set (by the explain tools); then
    the attention matrix is formed explicitly and kept in ``last_attn`` (B, heads, n, N).
    With ``num_queries=n`` only the first n tokens query (keys and values still come from all
    N tokens): the output is (B, n, D), the first n rows of the full output.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.capture = False
        self.last_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        q, k = self.q_norm(q[:, :, :num_queries]), self.k_norm(k)  # queries: the first n tokens (all if None)
        if self.capture:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)  # (B, heads, n, N)
            self.last_attn = attn.detach()
            x = F.dropout(attn, self.attn_drop, self.training) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, -1, d)  # (B, N or n, D)
        return self.proj_drop(self.proj(x))
