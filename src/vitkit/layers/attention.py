"""Multi-head self-attention (Vaswani et al.; ViT eq. 2): torch's fused kernel or the explicit attention matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPLICIT_FP32_MAX_TOKENS = 32  # fp32 on the CPU: the explicit matrix wins up to here (benchmarks/attention_kernels.py)


def explicit_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the explicit attention matrix beats ``scaled_dot_product_attention`` here: on the CPU in bf16
    (1.5-2.2x forward, 2.3-6.6x forward + backward at 65-577 tokens on a Zen 4 EPYC), and in fp32 for at most
    32 keys (1.3x at 16); torch's fused kernel everywhere else (fp32 at 122-577 tokens, and GPUs)."""
    if q.device.type != "cpu":
        return False
    return q.dtype == torch.bfloat16 or (q.dtype == torch.float32 and k.shape[-2] <= EXPLICIT_FP32_MAX_TOKENS)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v with the attention matrix formed: output (B, heads, n, d), matrix (B, heads, n, N)."""
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, n, N)
    return F.dropout(attn, dropout, dropout > 0) @ v, attn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v through the faster kernel for these tensors (:func:`explicit_is_faster`)."""
    if explicit_is_faster(q, k):
        return explicit_attention(q, k, v, dropout)[0]
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


torch.fx.wrap("attend")  # torch.fx traces keep the call, so the kernel is chosen when the graph runs


class Attention(nn.Module):
    """MSA(z) = concat_h softmax(q_h k_h^T / sqrt(d)) v_h, then a linear projection.

    The fused SDPA kernel computes it, except in two cases where the attention matrix is formed
    explicitly (two batched matmuls around a softmax): when ``capture`` is set (by the explain tools),
    which keeps the matrix in ``last_attn`` (B, heads, n, N); and on the CPU where that is faster than
    torch's fused kernel: bf16, and fp32 with few tokens (:func:`explicit_is_faster`).
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
            q, k, v = q.to(self.core_dtype), k.to(self.core_dtype), v.to(self.core_dtype)  # back to dtype below
        dropout = self.attn_drop if self.training else 0.0
        if self.capture:
            x, attn = explicit_attention(q, k, v, dropout)
            self.last_attn = attn.detach()
        else:
            x = attend(q, k, v, dropout)
        x = x.transpose(1, 2).reshape(b, -1, d)  # (B, N or n, D)
        if self.core_dtype is not None:
            x = x.to(dtype)
        return self.proj_drop(self.proj(x))
