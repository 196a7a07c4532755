"""Visual Transformer layers (Wu et al., arXiv 2006.03677 / ICCV 2021; SPEC §3).

Notation: X (B, HW, C) is a flattened feature map, T (B, L, C_T) are L visual tokens.
Each VT module = tokenizer (+ position encoding) + transformer + projector.

Shape checks, the pooling matrix and einops' ``rearrange`` are recorded by ``torch.fx`` as single
calls (``torch.fx.wrap``), so ``torch.fx.symbolic_trace`` traces the VT modules.

Every attention here is formed explicitly (L is small) and, as in the equations, without
a 1/sqrt(d) scale. Set ``capture = True`` on a layer to keep its last attention map,
detached, in ``last_attn``:

    FilterTokenizer / RecurrentTokenizer / PoolingTokenizer   A     (B, HW, L)
    TokenTransformer                                          attn  (B, heads, L, L)
    Projector                                                 attn  (B, HW, L)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vitkit.errors import VitkitError
from vitkit.layers.block import DropPath
from vitkit.layers.helpers import maybe_checkpoint

torch.fx.wrap("rearrange")  # einops needs real tensors; traced as one call


@dataclass(frozen=True)
class VTConfig:
    """How the VT modules of a model are built (all fields are ablation switches)."""

    num_tokens: int = 16  # L
    token_channels: int | None = None  # C_T; None = C (value projections then optional)
    tokenizer: Literal["filter", "pooling"] = "filter"  # the first module's tokenizer
    recurrent: bool = True  # later modules: recurrent tokenizer (False: same kind as the first)
    tokenizer_value: bool = False  # 1x1 value projection of X before T = A^T X
    pos_encoding: bool = False  # P = downsample(A)^T W_{A->P}, concatenated to T
    pos_grid: int = 7  # A is resized to pos_grid x pos_grid before W_{A->P}
    pos_channels: int = 32  # C_P
    transformer: Literal["iccv", "seed", "none"] = "iccv"
    num_heads: int = 1
    qk_ratio: float = 0.5  # K, Q (and the projector's W_Q, W_K): C_T x (qk_ratio * C_T)
    ffn_ratio: float = 1.0  # ICCV form: F1 is C_T x (ffn_ratio * C_T)
    projector: bool = True
    projector_value: bool = False  # early version: T W_V before the product

    def validate(self, channels: int) -> None:
        if self.num_tokens < 1:
            raise VitkitError(f"num_tokens (L) must be >= 1, got {self.num_tokens}; use e.g. vt.num_tokens=16")
        ct = self.token_channels or channels
        if ct < 1 or self.num_heads < 1 or self.pos_grid < 1 or self.pos_channels < 1:
            raise VitkitError("token_channels, num_heads, pos_grid and pos_channels must be >= 1")
        if ct % self.num_heads or qk_dim(ct, self.qk_ratio) % self.num_heads:
            raise VitkitError(f"token channels {ct} and key dim {qk_dim(ct, self.qk_ratio)} must be divisible "
                              f"by num_heads {self.num_heads}; change vt.num_heads or vt.qk_ratio")
        if self.ffn_ratio <= 0:
            raise VitkitError(f"ffn_ratio must be > 0, got {self.ffn_ratio}")


def qk_dim(channels: int, ratio: float) -> int:
    """Key/query width: ``ratio * channels`` rounded, at least 1."""
    return max(1, int(round(channels * ratio)))


def check_features(x: torch.Tensor, channels: int, who: str) -> None:
    """A flattened feature map X must be (B, HW, C) with the channel count the layer was built for."""
    if x.ndim != 3 or x.shape[-1] != channels:
        raise VitkitError(f"{who} expects a flattened feature map (B, HW, {channels}) but got shape "
                          f"{tuple(x.shape)}; feed the backbone stage with {channels} channels")


def check_map(x: torch.Tensor, channels: int, who: str) -> None:
    """A feature map must be (B, C, H, W) with the channel count the layer was built for."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise VitkitError(f"{who} expects a feature map (B, {channels}, H, W) but got {tuple(x.shape)}; "
                          f"feed the backbone stage with {channels} channels")


torch.fx.wrap("check_features")  # traced as calls: the checks run on the real shapes
torch.fx.wrap("check_map")


class _Capture(nn.Module):
    """Keeps the last attention map in ``last_attn`` while ``capture`` is set."""

    def __init__(self):
        super().__init__()
        self.capture = False
        self.last_attn: torch.Tensor | None = None

    def _keep(self, attn: torch.Tensor) -> None:
        if self.capture:
            self.last_attn = attn.detach()


def _value(channels: int, token_channels: int, wanted: bool) -> nn.Module:
    return nn.Linear(channels, token_channels, bias=False) if wanted or channels != token_channels else nn.Identity()


class FilterTokenizer(_Capture):
    """Filter-based tokenizer (§3): A = softmax_HW(X W_A), T = A^T X. Returns (T, A)."""

    def __init__(self, channels: int, num_tokens: int, token_channels: int | None = None, value: bool = False):
        super().__init__()
        if num_tokens < 1:
            raise VitkitError(f"num_tokens (L) must be >= 1, got {num_tokens}")
        self.channels, self.num_tokens = channels, num_tokens
        self.w_a = nn.Linear(channels, num_tokens, bias=False)  # W_A: C x L
        self.value = _value(channels, token_channels or channels, value)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(x, self.channels, type(self).__name__)
        a = self.w_a(x).softmax(dim=1)  # (B, HW, L), softmax over the HW pixels
        self._keep(a)
        return torch.einsum("bnl,bnc->blc", a, self.value(x)), a  # T = A^T X: (B, L, C_T)


class RecurrentTokenizer(_Capture):
    """Recurrent tokenizer (§3): W_R = T_in W_{T->R}, T = softmax_HW(X W_R^T)^T X. Returns (T, A)."""

    def __init__(self, channels: int, token_channels: int | None = None, value: bool = False):
        super().__init__()
        self.channels, ct = channels, token_channels or channels
        self.w_tr = nn.Linear(ct, channels, bias=False)  # W_{T->R}: C_T x C
        self.value = _value(channels, ct, value)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(x, self.channels, type(self).__name__)
        w_r = self.w_tr(tokens)  # (B, L, C)
        a = torch.einsum("bnc,blc->bnl", x, w_r).softmax(dim=1)  # (B, HW, L), softmax over HW
        self._keep(a)
        return torch.einsum("bnl,bnc->blc", a, self.value(x)), a  # (B, L, C_T)


def token_grid(num_tokens: int) -> tuple[int, int]:
    """The most square (gh, gw) with gh * gw = L (e.g. 16 -> 4x4, 8 -> 2x4)."""
    gh = max(d for d in range(1, math.isqrt(num_tokens) + 1) if num_tokens % d == 0)
    return gh, num_tokens // gh


def pooling_matrix(size: tuple[int, int], grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """A (HW, L) of adaptive average pooling: A[p, l] = 1/|cell l| if pixel p lies in cell l."""
    (h, w), (gh, gw) = size, grid
    ph = F.adaptive_avg_pool1d(torch.eye(h, dtype=like.dtype, device=like.device)[:, None], gh)[:, 0]  # (H, gh)
    pw = F.adaptive_avg_pool1d(torch.eye(w, dtype=like.dtype, device=like.device)[:, None], gw)[:, 0]  # (W, gw)
    return torch.einsum("yi,xj->yxij", ph, pw).reshape(h * w, gh * gw)


torch.fx.wrap("pooling_matrix")  # built from the map size, known when the traced graph runs


class PoolingTokenizer(_Capture):
    """Pooling tokenizer (ablation, §3): average-pool the map to L cells, T = A_pool^T X."""

    def __init__(self, channels: int, num_tokens: int, token_channels: int | None = None, value: bool = False):
        super().__init__()
        if num_tokens < 1:
            raise VitkitError(f"num_tokens (L) must be >= 1, got {num_tokens}")
        self.channels, self.grid = channels, token_grid(num_tokens)
        self.value = _value(channels, token_channels or channels, value)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(x, self.channels, type(self).__name__)
        a = pooling_matrix(size, self.grid, x).expand(x.shape[0], -1, -1)  # (B, HW, L)
        self._keep(a)
        return torch.einsum("bnl,bnc->blc", a, self.value(x)), a  # (B, L, C_T)


class TokenPositionEncoding(nn.Module):
    """Position encoding (§3, early version): P = downsample(A)^T W_{A->P}; T <- conv1d_1([T, P])."""

    def __init__(self, token_channels: int, pos_channels: int = 32, grid: int = 7, restore: bool = True):
        super().__init__()
        self.grid = grid
        self.w_ap = nn.Linear(grid * grid, pos_channels, bias=False)  # W_{A->P}: 49 x C_P
        self.restore = nn.Conv1d(token_channels + pos_channels, token_channels, 1) if restore else None

    def forward(self, tokens: torch.Tensor, a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        a_map = rearrange(a, "b (h w) l -> b l h w", h=size[0], w=size[1])
        a_small = F.interpolate(a_map, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        p = self.w_ap(a_small.flatten(2))  # (B, L, C_P)
        t = torch.cat([tokens, p], dim=-1)  # (B, L, C_T + C_P)
        if self.restore is None:
            return t
        return self.restore(t.transpose(1, 2)).transpose(1, 2)  # (B, L, C_T)


class TokenTransformer(_Capture):
    """Token transformer (§3). form "seed": T_out = T_in + softmax_L((T K)(T Q)^T)(T V) F;
    form "iccv": T' = T_in + softmax_L((T K)(T Q)^T) T_in, T_out = T' + ReLU(T' F1) F2.

    softmax_L runs over the last axis (the attended token). With several heads, K, Q and
    the values are split along channels, attended per head and concatenated. ``drop_path``:
    stochastic depth on each residual branch (identity at 0, the default, and at eval).
    """

    def __init__(self, channels: int, form: Literal["seed", "iccv"] = "iccv", num_heads: int = 1,
                 qk_ratio: float = 0.5, ffn_ratio: float = 1.0, drop_path: float = 0.0):
        super().__init__()
        d = qk_dim(channels, qk_ratio)
        if channels % num_heads or d % num_heads:
            raise VitkitError(f"channels {channels} and key dim {d} must be divisible by num_heads {num_heads}")
        if form not in ("seed", "iccv"):
            raise VitkitError(f"unknown transformer form '{form}'; use 'seed' or 'iccv'")
        self.form, self.num_heads = form, num_heads
        self.drop_path = DropPath(drop_path)
        self.k = nn.Linear(channels, d, bias=False)
        self.q = nn.Linear(channels, d, bias=False)
        if form == "seed":
            self.v = nn.Linear(channels, channels, bias=False)
            self.f = nn.Linear(channels, channels, bias=False)
        else:
            hidden = max(1, int(round(channels * ffn_ratio)))
            self.f1 = nn.Linear(channels, hidden, bias=False)
            self.f2 = nn.Linear(hidden, channels, bias=False)

    def attend(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax_L((T K)(T Q)^T) V per head: (B, L, C) -> (B, L, C)."""
        k, q, v = (rearrange(z, "b l (h d) -> b h l d", h=self.num_heads) for z in (self.k(t), self.q(t), v))
        attn = (k @ q.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, L, L)
        self._keep(attn)
        return rearrange(attn @ v, "b h l d -> b l (h d)")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.form == "seed":
            return t + self.drop_path(self.f(self.attend(t, self.v(t))))
        t1 = t + self.drop_path(self.attend(t, t))  # (B, L, C)
        return t1 + self.drop_path(self.f2(F.relu(self.f1(t1))))


class Projector(_Capture):
    """Projector (§3): X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T) T  (T W_V in the early version);
    ``drop_path``: stochastic depth on the residual branch."""

    def __init__(self, channels: int, token_channels: int | None = None, qk_ratio: float = 0.5,
                 value: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = DropPath(drop_path)
        ct = token_channels or channels
        d = qk_dim(ct, qk_ratio)
        self.channels = channels
        self.w_q = nn.Linear(channels, d, bias=False)  # W_Q: C x D
        self.w_k = nn.Linear(ct, d, bias=False)  # W_K: C_T x D
        self.w_v = nn.Linear(ct, channels, bias=False) if value or ct != channels else nn.Identity()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, type(self).__name__)
        attn = torch.einsum("bnd,bld->bnl", self.w_q(x), self.w_k(tokens)).softmax(dim=-1)  # (B, HW, L)
        self._keep(attn)
        return x + self.drop_path(attn @ self.w_v(tokens))  # (B, HW, C)


class VTModule(nn.Module):
    """One VT module (§3): tokenizer (+ position encoding) + transformer + projector, on NCHW maps.
    ``drop_path``: stochastic depth on the transformer's and the projector's residual branches."""

    def __init__(self, channels: int, cfg: VTConfig, first: bool = True, drop_path: float = 0.0):
        super().__init__()
        cfg.validate(channels)
        ct = cfg.token_channels or channels
        self.channels = channels
        kind = cfg.tokenizer if first or not cfg.recurrent else "recurrent"
        if kind == "filter":
            self.tokenizer = FilterTokenizer(channels, cfg.num_tokens, ct, cfg.tokenizer_value)
        elif kind == "pooling":
            self.tokenizer = PoolingTokenizer(channels, cfg.num_tokens, ct, cfg.tokenizer_value)
        else:
            self.tokenizer = RecurrentTokenizer(channels, ct, cfg.tokenizer_value)
        self.pos = TokenPositionEncoding(ct, cfg.pos_channels, cfg.pos_grid) if cfg.pos_encoding else None
        self.transformer = (TokenTransformer(ct, cfg.transformer, cfg.num_heads, cfg.qk_ratio, cfg.ffn_ratio,
                                             drop_path) if cfg.transformer != "none" else None)
        self.projector = (Projector(channels, ct, cfg.qk_ratio, cfg.projector_value, drop_path)
                          if cfg.projector else None)

    def tokenize(self, x: torch.Tensor, size: tuple[int, int], tokens: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, HW, C) -> T (B, L, C_T), position-encoded if configured."""
        if isinstance(self.tokenizer, RecurrentTokenizer):
            if tokens is None:
                raise VitkitError("a recurrent tokenizer needs the previous module's tokens; make the first "
                                  "module filter- or pooling-based")
            t, a = self.tokenizer(x, tokens)
        elif isinstance(self.tokenizer, PoolingTokenizer):
            t, a = self.tokenizer(x, size)
        else:
            t, a = self.tokenizer(x)
        return t if self.pos is None else self.pos(t, a, size)

    def project(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """X_out (B, HW, C) from X and the transformed tokens (identity without a projector)."""
        return x if self.projector is None else self.projector(x, tokens)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W), T_in -> (B, C, H, W), T_out (B, L, C_T)."""
        check_map(x, self.channels, "VTModule")
        h, w = x.shape[-2:]
        xf = rearrange(x, "b c h w -> b (h w) c")  # (B, HW, C)
        t = self.tokenize(xf, (h, w), tokens)
        if self.transformer is not None:
            t = self.transformer(t)
        xf = self.project(xf, t)
        return rearrange(xf, "b (h w) c -> b c h w", h=h, w=w), t


class VTStack(nn.ModuleList):
    """VT modules applied in turn, tokens passed on: (B, C, H, W) -> map, tokens (B, L, C_T).
    With ``grad_checkpointing`` set, each module is recomputed in the backward pass."""

    grad_checkpointing = False

    def states(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(map, tokens) after each module."""
        outs = []
        for module in self:
            x, tokens = maybe_checkpoint(module, x, tokens, enable=self.grad_checkpointing)
            outs.append((x, tokens))
        return outs

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states(x, tokens)[-1]


def vt_stack(channels: int, cfg: VTConfig, num_modules: int, last_projector: bool = True,
             drop_path: Sequence[float] = ()) -> VTStack:
    """``num_modules`` VT modules: the first uses ``cfg.tokenizer``, the rest are recurrent.
    ``drop_path``: one stochastic-depth rate per module (default: none dropped)."""
    if num_modules < 1:
        raise VitkitError(f"a VT stack needs at least one module, got {num_modules}")
    rates = list(drop_path) or [0.0] * num_modules
    last_cfg = cfg if last_projector else dataclasses.replace(cfg, projector=False)
    return VTStack(VTModule(channels, last_cfg if i == num_modules - 1 else cfg, first=i == 0, drop_path=rates[i])
                   for i in range(num_modules))
