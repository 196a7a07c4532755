"""ViT specifics: SPEC §1 equations, pooling, distillation, pos-embedding resampling, errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.errors import VitkitError
from vitkit.layers import resample_pos_embed
from vitkit.models.vit import DistilledOutput


def _literal_vit(model, x):
    """A slow, literal transcription of SPEC §1 (eqs. 1-4) using the model's weights."""
    c = model.config
    p = c.patch_size
    b, ch, h, w = x.shape
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, ch * p * p)  # (B, N, C p^2)
    E = model.patch_embed.proj.weight.reshape(c.embed_dim, -1).T  # (C p^2, D)
    z = patches @ E + model.patch_embed.proj.bias
    prefix = [t.expand(b, -1, -1) for t in (model.cls_token, model.dist_token) if t is not None]
    z = torch.cat(prefix + [z], 1) + model.pos_embed
    dh = c.embed_dim // c.num_heads
    for blk in model.blocks:
        y = F.layer_norm(z, (c.embed_dim,), blk.norm1.weight, blk.norm1.bias, c.norm_eps)
        q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).chunk(3, dim=-1)
        heads = []
        for i in range(c.num_heads):
            s = slice(i * dh, (i + 1) * dh)
            a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / dh**0.5, dim=-1)
            heads.append(a @ v[..., s])
        z = z + blk.attn.proj(torch.cat(heads, -1))
        y = F.layer_norm(z, (c.embed_dim,), blk.norm2.weight, blk.norm2.bias, c.norm_eps)
        z = z + blk.mlp.fc2(F.gelu(blk.mlp.fc1(y)))
    if c.global_pool == "avg":
        pooled = model.fc_norm(z[:, model.num_prefix:].mean(1))
    else:
        pooled = model.norm(z)[:, 0]
    return model.head(pooled)


@pytest.mark.parametrize("name", ["vit_test", "vit_test_avg"])
def test_matches_literal_equations(name):
    model = vitkit.create_model(name).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _literal_vit(model, x), rtol=1e-4, atol=1e-5)


def test_distilled_heads_train_tuple_eval_average():
    model = vitkit.create_model("deit_test_distilled")
    x = torch.randn(2, 3, 16, 16)
    model.train()
    out = model(x)
    assert isinstance(out, DistilledOutput) and out.logits.shape == out.dist_logits.shape == (2, 5)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(model(x), expected)


def test_pre_logits_gives_features():
    model = vitkit.create_model("vit_test").eval()
    feats = model.forward_features(torch.randn(2, 3, 16, 16))
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


def test_resample_identity_and_constant_field():
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, (4, 4), (4, 4)) is pos
    const = torch.ones(1, 1 + 16, 8)
    const[:, 0] = 7.0
    out = resample_pos_embed(const, (6, 3), (4, 4))
    assert out.shape == (1, 1 + 18, 8)
    torch.testing.assert_close(out[:, 0], const[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.ones(1, 18, 8))


def test_any_divisible_size_and_non_square_at_call_time():
    model = vitkit.create_model("vit_test").eval()
    for h, w in [(16, 16), (32, 16), (8, 24)]:
        assert model(torch.randn(1, 3, h, w)).shape == (1, 5)
    maps = model.forward_intermediates(torch.randn(1, 3, 32, 16), [-1], intermediates_only=True)
    assert maps[0].shape == (1, 32, 8, 4)


def test_load_at_another_image_size_resamples(tmp_path):
    model = vitkit.create_model("vit_test").eval()
    model.save_pretrained(tmp_path)
    big = vitkit.create_model("vit_test", pretrained=tmp_path, img_size=32).eval()
    assert big.pos_embed.shape == (1, 1 + 64, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # on-the-fly resampling of the small model == resampled weights
        torch.testing.assert_close(big(x), model(x))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: vitkit.create_model("vit_tset"), "did you mean vit_test"),
        (lambda: vitkit.create_model("vit_test", dept=3), "did you mean depth"),
        (lambda: vitkit.create_model("vit_test", depth="two"), "bad value for 'depth'"),
        (lambda: vitkit.create_model("vit_test", embed_dim=30, num_heads=4), "not divisible by num_heads"),
        (lambda: vitkit.create_model("vit_test", class_token=False), "global_pool='avg'"),
        (lambda: vitkit.create_model("deit_test_distilled", global_pool="avg"), "distillation token un-normalised"),
        (lambda: vitkit.create_model("deit_test_distilled", fc_norm=True), "distillation token un-normalised"),
        (lambda: vitkit.create_model("vit_test")(torch.randn(1, 1, 16, 16)), "3-channel"),
        (lambda: vitkit.create_model("vit_test")(torch.randn(1, 3, 18, 16)), "not divisible by the patch size"),
        (lambda: vitkit.create_model("vit_test")(torch.randn(3, 16, 16)), r"\(B, C, H, W\)"),
        (lambda: vitkit.create_model("vit_test", img_size=18), "not divisible by the patch size"),
        (lambda: vitkit.create_model("vit_test", hybrid_backbone="vgg"), "unknown hybrid backbone"),
        (lambda: vitkit.create_model("vit_test", conv_stem=(8, 16, 32)), "total stride 8 but patch_size is 4"),
        (lambda: vitkit.create_model("vit_convstem_test", conv_stem_strides=(2,)), "each of the 2 conv_stem convs"),
        (lambda: vitkit.create_model("vit_convstem_test", conv_stem_strides=(2, 3)), "a stride of 1 or 2"),
        (lambda: vitkit.create_model("vit_convstem_test", hybrid_backbone="resnet18"), "either conv_stem or hybrid"),
    ],
)
def test_user_mistakes_are_one_line_errors(make, match):
    with pytest.raises(VitkitError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_corrupt_truncated_and_mismatched_weights(tmp_path):
    model = vitkit.create_model("vit_test")
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(VitkitError, match="not found"):
        vitkit.create_model("vit_test", pretrained=tmp_path / "missing")
    with pytest.raises(VitkitError, match="do not fit.*missing: dist_token"):
        vitkit.create_model("deit_test_distilled", pretrained=tmp_path / "ok")
    with pytest.raises(VitkitError, match="shape mismatch.*blocks.0.mlp.fc1.weight"):
        vitkit.create_model("vit_test", pretrained=tmp_path / "ok", mlp_ratio=4.0)
    assert vitkit.create_model("vit_test", pretrained=tmp_path / "ok", num_classes=3).adaptation.reinitialised == [
        "head (5 -> 3 classes)"]  # another class count is adapted (a new head), not an error
    weights = tmp_path / "ok" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # config.json records the SHA-256: caught before parsing
    with pytest.raises(VitkitError, match="do not match the SHA-256 .*corrupt or altered"):
        vitkit.create_model("vit_test", pretrained=tmp_path / "ok")
    with pytest.raises(VitkitError, match="corrupt or truncated"):  # a bare file: the safetensors header
        vitkit.create_model("vit_test", pretrained=weights)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(VitkitError, match="corrupt or (truncated|altered)"):
        vitkit.create_model(str(tmp_path / "ok"))
    (tmp_path / "ok" / "config.json").write_text("{not json")
    with pytest.raises(VitkitError, match="model config .*config.json is not valid JSON"):
        vitkit.create_model(str(tmp_path / "ok"))


def test_saved_config_is_self_describing(tmp_path):
    vitkit.create_model("vit_test", depth=1).save_pretrained(tmp_path, extra={"class_names": list("abcde")})
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["family"] == "vit" and meta["config"]["depth"] == 1 and meta["class_names"] == list("abcde")
    assert vitkit.create_model(str(tmp_path)).config.depth == 1


def test_paper_sizes_match_timm_parameter_counts():
    timm = pytest.importorskip("timm")
    ours_224 = vitkit.list_models("vit_*_224") + vitkit.list_models("deit_*_224")
    names = [n for n in ours_224 if "hybrid" not in n and timm.is_model(n)]
    assert len(names) >= 12
    for name in names:
        with torch.device("meta"):
            ours = vitkit.create_model(name)
            ref = timm.create_model(name, pretrained=False, num_classes=1000)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert count(ours) == count(ref), name


def test_conv_stem_any_size_rounds_up_and_matches_its_layers():
    """ViT_C stem: stride-2 convs round up (28 px, 3 convs -> 4x4 tokens); its output is the stem's."""
    model = vitkit.create_model("vit_convstem_test", img_size=28, patch_size=8, conv_stem=(4, 8, 8)).eval()
    assert model.grid == (4, 4) and model.pos_embed.shape[1] == 1 + 16
    x = torch.randn(2, 3, 28, 28)
    tokens, grid = model.patch_embed(x)
    assert grid == (4, 4) and tokens.shape == (2, 16, 32)
    maps = model.patch_embed.stem(x)  # (B, D, 4, 4)
    torch.testing.assert_close(tokens, maps.flatten(2).transpose(1, 2))
    assert model(torch.randn(1, 3, 30, 21)).shape == (1, 5)  # 4x3 grid: E_pos resampled


def test_conv_stem_strides_keep_resolution_where_the_stride_is_1():
    """ViT_C stem with stride-1 convs between the stride-2 ones: the grid follows the product of the strides."""
    model = vitkit.create_model("vit_convstem_test", img_size=28, patch_size=4, conv_stem=(4, 4, 8),
                                conv_stem_strides=(2, 1, 2)).eval()
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [m.stride[0] for m in convs] == [2, 1, 2, 1]  # the last is the 1x1 projection to D
    assert model.grid == (7, 7) and model.patch_embed.grid(30, 21) == (8, 6)
    x = torch.randn(2, 3, 30, 21)
    tokens, grid = model.patch_embed(x)
    assert grid == (8, 6) and tokens.shape == (2, 48, 32)
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name, overrides", [
    ("vit_test", {}), ("deit_test_distilled", {}), ("vit_test", dict(qk_norm=True, init_values=0.1, qkv_bias=False)),
    ("vit_convstem_test", {}),
])
def test_prefix_only_last_block_gives_the_full_path_logits_with_less_work(name, overrides):
    """forward() runs the last block for the prefix tokens only: logits and gradients equal the full
    path's (forward_head(forward_features)), with fewer FLOPs; explain sees every token's attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitkit.tools.explain import explain_vit

    torch.manual_seed(0)
    model = vitkit.create_model(name, **overrides).eval()
    x = torch.randn(3, 3, 16, 16)
    full = lambda: model.forward_head(model.forward_features(x))  # noqa: E731
    torch.testing.assert_close(model(x), full(), rtol=1e-5, atol=1e-6)
    flops = []
    for fn in (lambda: model(x), full):
        with FlopCounterMode(display=False) as counter:
            fn()
        flops.append(counter.get_total_flops())
    assert flops[0] < flops[1]
    assert explain_vit(model, x).attentions[-1].shape[-2] == model.pos_embed.shape[1]  # all queries
    model.train()
    grads = []
    for fn in (lambda: model(x), full):
        model.zero_grad()
        out = fn()
        sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_bf16_on_cpu_forms_the_attention_matrix_within_bf16_rounding(monkeypatch):
    """bf16 on the CPU attends through the explicit matrix (two bf16 matmuls, faster there than torch's fused
    kernel), and so does fp32 with at most 32 keys; fp32 with more keys keeps the fused kernel.
    Error bound of the explicit bf16 path against exact (fp64) attention
    on the same bf16 q, k, v, with u = 2^-8 (bf16's unit roundoff) and fp32 accumulation in the matmuls:
    scores are rounded once (|ds| <= u|s|), which moves each softmax weight by at most a factor
    exp(2u max|s|) ~ 1 + 2u max|s|; the weights are rounded once (u); the output, a weighted mean of v,
    is rounded once (u max|v|). So |do| <= u (2 max|s| + 2) max|v|."""
    from vitkit.layers import attention as attn_mod

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16).bfloat16() for _ in range(3))
    out, _ = attn_mod.explicit_attention(q, k, v)
    qd, kd, vd = (t.double() for t in (q, k, v))
    scores = qd @ kd.transpose(-2, -1) / 16**0.5
    exact = scores.softmax(-1) @ vd
    bound = 2**-8 * (2 * scores.abs().max() + 2) * vd.abs().max()
    assert out.dtype == torch.bfloat16 and (out.double() - exact).abs().max() <= bound

    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(attn_mod.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    layer = attn_mod.Attention(32, 4).eval()
    many = torch.randn(2, attn_mod.EXPLICIT_FP32_MAX_TOKENS + 1, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(many)
    assert calls == [] and low.dtype == torch.bfloat16
    layer(many[:, :attn_mod.EXPLICIT_FP32_MAX_TOKENS])
    assert calls == []
    layer(many)
    assert calls == [1]
