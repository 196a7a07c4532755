"""Generic checks that every registered model gets (registry-driven).

Small ``*_test`` presets run the full set (shape, backward, save/load, determinism,
intermediates); every preset, at full size, is built on the meta device and run for
shapes, so big models are covered without allocating their weights.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vitkit
from vitkit.errors import VitkitError
from vitkit.registry import get_entry

TEST_MODELS = vitkit.list_models("*test*")
ALL_MODELS = vitkit.list_models()


def _input(model, batch: int = 2, device=None) -> torch.Tensor:
    h, w = model.config.img_size
    return torch.randn(batch, model.config.in_chans, h, w, device=device)


def _logits(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _expected_shape(model, batch: int):
    h, w = model.config.img_size
    if "seg" in get_entry(model_name_of(model)).tags:
        return (batch, model.config.num_classes, h, w)
    return (batch, model.config.num_classes)


_NAMES: dict[int, str] = {}


def model_name_of(model) -> str:
    return _NAMES[id(model)]


def build(name: str, **kw):
    model = vitkit.create_model(name, **kw)
    _NAMES[id(model)] = name
    return model


def test_there_are_test_presets_for_every_family():
    families = {get_entry(n).cls.family for n in ALL_MODELS}
    tested = {get_entry(n).cls.family for n in TEST_MODELS}
    assert families == tested, f"families without a *_test preset: {families - tested}"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_output_shape_and_backward(name):
    model = build(name).train()
    x = _input(model)
    out = model(x)
    logits = _logits(out)
    assert logits.shape == _expected_shape(model, 2)
    assert torch.isfinite(logits).all()
    parts = out if isinstance(out, tuple) else (out,)
    sum(o.float().square().mean() for o in parts).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameters got no gradient"
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_save_load_round_trip(name, tmp_path):
    model = build(name).eval()
    x = _input(model)
    model.save_pretrained(tmp_path / "m")
    again = vitkit.create_model(str(tmp_path / "m")).eval()
    assert type(again) is type(model) and again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    fresh = vitkit.create_model(name, pretrained=tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_deterministic(name):
    torch.manual_seed(1)
    a = build(name).eval()
    torch.manual_seed(1)
    b = build(name).eval()
    x = _input(a)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_is_forward_head_of_forward_features(name):
    """The contract of models/base.py, up to fp32 rounding. Both paths run the same operations on
    the same weights; a ViT's forward skips the last block's rows its head does not read, so a sum
    there may be taken in another order. A sum of K terms rounds at most K times, each by at most
    eps relative: K eps times the output's scale bounds the difference (K = the widest fan-in)."""
    torch.manual_seed(0)
    model = build(name).eval()
    x = _input(model, batch=3)
    with torch.no_grad():
        out, ref = model(x), model.forward_head(model.forward_features(x))
    fan_in = max(m.weight[0].numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    tol = fan_in * torch.finfo(torch.float32).eps * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_intermediates(name):
    model = build(name).eval()
    x = _input(model)
    n = len(model.feature_info)
    maps = model.forward_intermediates(x, list(range(n)), intermediates_only=True)
    assert len(maps) == n
    h, w = model.config.img_size
    for fmap, info in zip(maps, model.feature_info, strict=True):
        assert fmap.ndim == 4 and fmap.shape[0] == 2
        assert fmap.shape[1] == info.channels
        assert fmap.shape[2] == -(-h // info.reduction) and fmap.shape[3] == -(-w // info.reduction)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_wrong_channel_count_is_a_clear_error(name):
    model = build(name).eval()
    h, w = model.config.img_size
    bad = torch.randn(1, model.config.in_chans + 1, h, w)
    with pytest.raises(VitkitError, match="channel"):
        model(bad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_preset_builds_full_size_on_meta(name):
    """Full-size presets: build without allocating (meta device) and check output shapes."""
    with torch.device("meta"):
        model = build(name).eval()
        x = _input(model, batch=1, device="meta")
        out = _logits(model(x))
    assert out.shape == _expected_shape(model, 1)
    assert sum(p.numel() for p in model.parameters()) > 0
