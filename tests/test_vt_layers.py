"""VT layers against literal, slow transcriptions of SPEC §3 (loops over the batch, explicit softmax)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitkit.errors import VitkitError
from vitkit.layers.vt import (
    FilterTokenizer,
    PoolingTokenizer,
    Projector,
    RecurrentTokenizer,
    TokenPositionEncoding,
    TokenTransformer,
    VTConfig,
    VTModule,
    vt_stack,
)

B, H, W, C, L = 2, 5, 6, 12, 4


def softmax(z: torch.Tensor, axis: int) -> torch.Tensor:
    """exp(z) / sum exp(z) over ``axis`` (max subtracted for stability)."""
    e = torch.exp(z - z.amax(dim=axis, keepdim=True))
    return e / e.sum(dim=axis, keepdim=True)


def w(linear) -> torch.Tensor:
    """The paper's right-multiplied matrix (in x out) of an nn.Linear."""
    return linear.weight.T


def _randomise(module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def test_filter_tokenizer_matches_formula():
    tok = FilterTokenizer(C, L)
    x = torch.randn(B, H * W, C)
    t, a = tok(x)
    for b in range(B):
        a_ref = softmax(x[b] @ w(tok.w_a), axis=0)  # A = softmax_HW(X W_A): (HW, L)
        torch.testing.assert_close(a[b], a_ref)
        torch.testing.assert_close(t[b], a_ref.T @ x[b])  # T = A^T X


def test_filter_tokenizer_value_projection():
    tok = FilterTokenizer(C, L, token_channels=8, value=True)
    x = torch.randn(B, H * W, C)
    t, _ = tok(x)
    assert t.shape == (B, L, 8)
    for b in range(B):
        a_ref = softmax(x[b] @ w(tok.w_a), axis=0)
        torch.testing.assert_close(t[b], a_ref.T @ (x[b] @ w(tok.value)))


def test_recurrent_tokenizer_matches_formula():
    tok = RecurrentTokenizer(C)
    x, t_in = torch.randn(B, H * W, C), torch.randn(B, L, C)
    t, a = tok(x, t_in)
    for b in range(B):
        w_r = t_in[b] @ w(tok.w_tr)  # W_R = T_in W_{T->R}: (L, C)
        a_ref = softmax(x[b] @ w_r.T, axis=0)  # softmax over HW
        torch.testing.assert_close(a[b], a_ref)
        torch.testing.assert_close(t[b], a_ref.T @ x[b])


def _cell(i: int, n: int, g: int) -> slice:
    return slice(math.floor(i * n / g), math.ceil((i + 1) * n / g))


def test_pooling_tokenizer_is_average_over_cells():
    tok = PoolingTokenizer(C, 6)  # grid 2 x 3
    x = torch.randn(B, H * W, C)
    t, _ = tok(x, (H, W))
    for b in range(B):
        fmap = x[b].T.reshape(C, H, W)
        for i in range(2):
            for j in range(3):
                cell = fmap[:, _cell(i, H, 2), _cell(j, W, 3)]
                torch.testing.assert_close(t[b, i * 3 + j], cell.mean(dim=(1, 2)))


@pytest.mark.parametrize("make", [
    lambda: (FilterTokenizer(C, L), lambda m, x: m(x)),
    lambda: (RecurrentTokenizer(C), lambda m, x: m(x, torch.randn(B, L, C))),
    lambda: (PoolingTokenizer(C, L), lambda m, x: m(x, (H, W))),
])
def test_tokenizer_attention_sums_to_one_over_hw(make):
    tok, call = make()
    _randomise(tok)
    _, a = call(tok, torch.randn(B, H * W, C) * 3)
    assert a.shape == (B, H * W, L)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(B, L))
    assert (a >= 0).all()


def test_position_encoding_matches_formula():
    pos = TokenPositionEncoding(C, pos_channels=3, grid=3)
    _randomise(pos)
    tokens = torch.randn(B, L, C)
    a = softmax(torch.randn(B, H * W, L), axis=1)
    out = pos(tokens, a, (H, W))
    for b in range(B):
        a_map = a[b].T.reshape(L, H, W)  # (L, H, W)
        down = F.interpolate(a_map[None], size=(3, 3), mode="bilinear", align_corners=False)[0].reshape(L, 9)
        p = down @ w(pos.w_ap)  # P = downsample(A)^T W_{A->P}: (L, C_P)
        cat = torch.cat([tokens[b], p], dim=1)  # (L, C + C_P)
        ref = cat @ pos.restore.weight[:, :, 0].T + pos.restore.bias  # kernel-1 1D convolution
        torch.testing.assert_close(out[b], ref)
    assert TokenPositionEncoding(C, 3, 3, restore=False)(tokens, a, (H, W)).shape == (B, L, C + 3)


def _heads(z: torch.Tensor, n: int) -> list[torch.Tensor]:
    d = z.shape[-1] // n
    return [z[:, i * d:(i + 1) * d] for i in range(n)]


@pytest.mark.parametrize("num_heads", [1, 2])
def test_token_transformer_seed_form(num_heads):
    tr = TokenTransformer(C, "seed", num_heads=num_heads, qk_ratio=0.5)
    _randomise(tr)
    t = torch.randn(B, L, C)
    out = tr(t)
    for b in range(B):
        k, q, v = t[b] @ w(tr.k), t[b] @ w(tr.q), t[b] @ w(tr.v)
        heads = zip(_heads(k, num_heads), _heads(q, num_heads), _heads(v, num_heads), strict=True)
        mixed = torch.cat([softmax(kh @ qh.T, axis=1) @ vh for kh, qh, vh in heads], 1)
        torch.testing.assert_close(out[b], t[b] + mixed @ w(tr.f))  # T_in + softmax((TK)(TQ)^T)(TV)F


@pytest.mark.parametrize("num_heads", [1, 3])
def test_token_transformer_iccv_form(num_heads):
    tr = TokenTransformer(C, "iccv", num_heads=num_heads, qk_ratio=0.5, ffn_ratio=2.0)
    _randomise(tr)
    t = torch.randn(B, L, C)
    out = tr(t)
    for b in range(B):
        k, q = t[b] @ w(tr.k), t[b] @ w(tr.q)
        mixed = torch.cat([softmax(kh @ qh.T, axis=1) @ th for kh, qh, th in
                           zip(_heads(k, num_heads), _heads(q, num_heads), _heads(t[b], num_heads), strict=True)], 1)
        t1 = t[b] + mixed  # T'_out
        torch.testing.assert_close(out[b], t1 + torch.relu(t1 @ w(tr.f1)) @ w(tr.f2))


@pytest.mark.parametrize("value", [False, True])
def test_projector_matches_formula(value):
    proj = Projector(C, C, qk_ratio=0.5, value=value)
    _randomise(proj)
    x, t = torch.randn(B, H * W, C), torch.randn(B, L, C)
    out = proj(x, t)
    for b in range(B):
        attn = softmax((x[b] @ w(proj.w_q)) @ (t[b] @ w(proj.w_k)).T, axis=1)  # softmax over L: (HW, L)
        v = t[b] @ w(proj.w_v) if value else t[b]
        torch.testing.assert_close(out[b], x[b] + attn @ v)


def test_projector_with_zeroed_residual_leaves_x_unchanged():
    proj = Projector(C, C, value=True)
    _randomise(proj)
    with torch.no_grad():
        proj.w_v.weight.zero_()
    x = torch.randn(B, H * W, C)
    torch.testing.assert_close(proj(x, torch.randn(B, L, C)), x, rtol=0, atol=0)
    plain = Projector(C, C)
    torch.testing.assert_close(plain(x, torch.zeros(B, L, C)), x, rtol=0, atol=0)


def test_vt_module_chains_the_layers():
    cfg = VTConfig(num_tokens=L, pos_encoding=True, pos_grid=2, pos_channels=3, transformer="seed")
    m = VTModule(C, cfg, first=True)
    _randomise(m)
    x = torch.randn(B, C, H, W)
    out, tokens = m(x)
    xf = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    t, a = m.tokenizer(xf)
    t = m.transformer(m.pos(t, a, (H, W)))
    torch.testing.assert_close(tokens, t)
    torch.testing.assert_close(out, m.projector(xf, t).transpose(1, 2).reshape(B, C, H, W))


@pytest.mark.parametrize("kw", [dict(), dict(token_channels=8, num_heads=2), dict(tokenizer="pooling"),
                                dict(transformer="none", projector=False), dict(num_tokens=7, recurrent=False)])
def test_token_count_and_shapes_follow_config(kw):
    cfg = VTConfig(num_tokens=kw.pop("num_tokens", L), **kw)
    stack = vt_stack(C, cfg, 3)
    kinds = [type(m.tokenizer).__name__ for m in stack]
    first = "PoolingTokenizer" if cfg.tokenizer == "pooling" else "FilterTokenizer"
    assert kinds == [first] + (["RecurrentTokenizer"] * 2 if cfg.recurrent else [first] * 2)
    x = torch.randn(B, C, H, W)
    out, tokens = stack(x)
    assert out.shape == x.shape
    assert tokens.shape == (B, cfg.num_tokens, cfg.token_channels or C)
    assert all((m.transformer is None) == (cfg.transformer == "none") for m in stack)
    assert all((m.projector is None) == (not cfg.projector) for m in stack)


def test_capture_keeps_attention_maps():
    stack = vt_stack(C, VTConfig(num_tokens=L, num_heads=2), 2)
    for m in stack.modules():
        if hasattr(m, "capture"):
            m.capture = True
    stack(torch.randn(B, C, H, W))
    for m in stack:
        assert m.tokenizer.last_attn.shape == (B, H * W, L)
        assert m.transformer.last_attn.shape == (B, 2, L, L)
        assert m.projector.last_attn.shape == (B, H * W, L)
        torch.testing.assert_close(m.projector.last_attn.sum(-1), torch.ones(B, H * W))


def test_bad_input_is_a_clear_error():
    with pytest.raises(VitkitError, match="channels"):
        FilterTokenizer(C, L)(torch.randn(B, H * W, C + 1))
    with pytest.raises(VitkitError, match="channels"):
        VTModule(C, VTConfig(num_tokens=L))(torch.randn(B, C - 1, H, W))
    with pytest.raises(VitkitError, match="num_tokens"):
        FilterTokenizer(C, 0)
    with pytest.raises(VitkitError, match="num_tokens"):
        VTModule(C, VTConfig(num_tokens=0))
    with pytest.raises(VitkitError, match="num_heads"):
        VTModule(C, VTConfig(num_heads=5))
    with pytest.raises(VitkitError, match="recurrent"):
        VTModule(C, VTConfig(), first=False)(torch.randn(B, C, H, W))
