"""ResNet baselines, VT-ResNet and the segmentation models (FPN, VT-FPN, ViT head)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import vitkit
from vitkit.errors import VitkitError
from vitkit.layers.vt import FilterTokenizer, RecurrentTokenizer, TokenTransformer
from vitkit.models.segmentation import FPNNeck, VTFPNNeck
from vitkit.registry import get_entry


def _x(model, batch=2, size=None, device=None):
    h, w = (size, size) if size else model.config.img_size
    return torch.randn(batch, model.config.in_chans, h, w, device=device)


def test_every_family_has_paper_small_and_test_presets():
    for tag, needed in (("resnet", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet18_28"]),
                        ("vt", ["vt_resnet18", "vt_resnet34", "vt_resnet50", "vt_resnet101", "vt_resnet18_28",
                                "vt_resnet18_32", "vt_resnet_test"]),
                        ("seg", ["fpn_resnet50_512", "vt_fpn_resnet50_512", "fpn_resnet18_64", "vt_fpn_resnet18_64",
                                 "vit_seg_small_patch16_224", "fpn_test", "vt_fpn_test", "vit_seg_test"])):
        assert set(needed) <= set(vitkit.list_models(tag=tag))
    assert get_entry("vt_resnet18_28").config.in_chans == 1 and get_entry("vt_resnet18_32").config.in_chans == 3


def test_resnet_matches_torchvision_layout():
    with torch.device("meta"):
        ours = vitkit.create_model("resnet50")
        ref = torchvision.models.resnet50(weights=None)
    mine = {k.removeprefix("trunk."): v.shape for k, v in ours.state_dict().items()}
    assert mine == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("depth,modules", [(18, 2), (34, 3), (50, 3), (101, 3)])
def test_vt_resnet_paper_structure(depth, modules):
    with torch.device("meta"):
        model = vitkit.create_model(f"vt_resnet{depth}").eval()
        maps = model.forward_intermediates(_x(model, 1, device="meta"), [2, 3], intermediates_only=True)
        tokens = model.forward_features(_x(model, 1, device="meta"))
    channels = 256 if depth < 50 else 1024
    assert not hasattr(model.trunk, "layer4")
    assert len(model.vt) == modules
    assert isinstance(model.vt[0].tokenizer, FilterTokenizer)
    assert all(isinstance(m.tokenizer, RecurrentTokenizer) for m in model.vt[1:])
    assert model.vt[-1].projector is None and all(m.projector is not None for m in model.vt[:-1])
    assert maps[0].shape == (1, channels, 14, 14) and maps[1].shape == maps[0].shape  # stage-4 input
    assert tokens.shape == (1, 16, channels)


def test_vt_resnet_head_is_mean_over_tokens_then_fc():
    model = vitkit.create_model("vt_resnet_test").eval()
    x = _x(model)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, L, C)
        torch.testing.assert_close(model(x), model.fc(tokens.mean(dim=1)))
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(dim=1))


@pytest.mark.parametrize("overrides", [
    {"vt.tokenizer": "pooling"}, {"vt.projector": False}, {"vt.transformer": "none"}, {"vt.num_tokens": 7},
    {"vt.transformer": "seed", "vt.pos_encoding": True, "vt.pos_grid": 2}, {"num_modules": 1},
])
def test_vt_resnet_ablation_configs_run(overrides):
    model = vitkit.create_model("vt_resnet_test", **overrides)
    x = _x(model)
    assert model(x).shape == (2, 5)
    assert model.forward_features(x).shape[1] == overrides.get("vt.num_tokens", 4)


@pytest.mark.parametrize("name,bad", [("vt_resnet_test", 8), ("resnet_test_small", 4), ("fpn_test", 16)])
def test_image_too_small_is_a_clear_error(name, bad):
    model = vitkit.create_model(name)
    with pytest.raises(VitkitError, match="too small"):
        model(_x(model, 1, bad))


def test_bad_vt_config_is_a_clear_error():
    with pytest.raises(VitkitError, match="num_tokens"):
        vitkit.create_model("vt_resnet_test", **{"vt.num_tokens": 0})
    with pytest.raises(VitkitError, match="depth"):
        vitkit.create_model("vt_resnet_test", **{"backbone.depth": 19})


def test_small_image_variants_run_at_their_size():
    for name in ("vt_resnet_test_small", "resnet_test_small"):
        model = vitkit.create_model(name)
        assert model.config.in_chans == 1
        assert model(_x(model)).shape == (2, 5)


def test_fpn_neck_matches_formula():
    neck = FPNNeck([4, 6], 5)
    c2, c3 = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)
    p3 = neck.lateral[1](c3)
    p2 = neck.lateral[0](c2) + p3.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x
    out = neck([c2, c3])
    torch.testing.assert_close(out[0], neck.output[0](p2))
    torch.testing.assert_close(out[1], neck.output[1](p3))


def test_vt_fpn_runs_one_transformer_over_all_levels():
    model = vitkit.create_model("vt_fpn_test").eval()
    assert isinstance(model.neck, VTFPNNeck)
    assert sum(isinstance(m, TokenTransformer) for m in model.neck.modules()) == 1
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.neck.modules())
    seen = []
    model.neck.transformer.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = model(_x(model))
    assert seen == [(2, 4 * 4, 16)]  # 4 levels x 4 tokens, fpn_dim 16
    assert out.shape == (2, 3, 32, 32)
    assert get_entry("vt_fpn_resnet50_512").config.vt.num_tokens == 8


@pytest.mark.parametrize("name", ["fpn_test", "vt_fpn_test", "vit_seg_test"])
def test_segmentation_logits_and_neck(name):
    model = vitkit.create_model(name).eval()
    assert isinstance(model.neck, torch.nn.Module)
    with torch.no_grad():
        out = model(_x(model, 1, 48))
    assert out.shape == (1, model.config.num_classes, 48, 48)
    assert "seg" in get_entry(name).tags
