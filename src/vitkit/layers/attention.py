"""Multi-head self-attention (Vaswani et al.; ViT eq. 2) on ``scaled_dot_product_attention``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def explicit_is_faster(q: torch.Tensor) -> bool:
    """bf16 on the CPU: the explicit attention matrix beats ``scaled_dot_product_attention`` (whose CPU
    kernel is faster in fp32, and on GPUs in every dtype). Under torch.fx tracing (no dtype yet): the fused kernel."""
    return not isinstance(q, torch.fx.Proxy) and q.device.type == "cpu" and q.dtype == torch.bfloat16


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v with the attention matrix formed: output (B, heads, n, d), matrix (B, heads, n, N)."""
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, n, N)
    return F.dropout(attn, dropout, dropout > 0) @ v, attn


class Attention(nn.Module):
    """MSA(z) = concat_h softmax(q_h k_h^T / sqrt(d)) v_h, then a linear projection.

    The fused SDPA kernel computes it, except in two cases where the attention matrix is formed
    explicitly (two batched matmuls around a softmax): when ``capture`` is set (by the explain tools),
    which keeps the matrix in ``last_attn`` (B, heads, n, N); and for bf16 on the CPU, where torch's
    fused CPU kernel is 1.6x (forward) to 2.7x (forward + backward) slower than the two bf16 matmuls
    for ViT-S/16's 197 tokens (:func:`explicit_is_faster`; measured in docs/explain_export_bench.md).
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
        self.core_dtype: torch.dtype | None = None  # dtype of q k^T, softmax and the product with v (None: q's)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        q, k = self.q_norm(q[:, :, :num_queries]), self.k_norm(k)  # queries: the first n tokens (all if None)
        dtype = q.dtype
        if self.core_dtype is not None:  # e.g. bf16 attention between static int8 Linears
            q, k, v = q.to(self.core_dtype), k.to(self.core_dtype), v.to(self.core_dtype)
        if self.capture or explicit_is_faster(q):
            x, attn = explicit_attention(q, k, v, self.attn_drop if self.training else 0.0)
            if self.capture:
                self.last_attn = attn.detach()
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, -1, d).to(dtype)  # (B, N or n, D)
        return self.proj_drop(self.proj(x))
