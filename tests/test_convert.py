"""Parity of converted timm / transformers ViTs with the reference models (random weights)."""
from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import transformers
from timm.layers import HybridEmbed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitkit
from vitkit.convert import convert_hf_state_dict, convert_timm_state_dict, from_hf, from_timm, timm_config
from vitkit.errors import VitkitError
from vitkit.models.vit import DistilledOutput
from weights_util import randomize

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=7)




def _images(n: int = 2, size: int = 32, chans: int = 3) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, chans, size, size)


def _timm(cls=TimmViT, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(cls(**{**SMALL, **kw}))


@torch.no_grad()
def _assert_same_logits(ref: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor) -> None:
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(),  # class token, final LayerNorm
    dict(class_token=False, global_pool="avg"),  # mean pooling + fc_norm
    dict(init_values=1e-5, qk_norm=True, qkv_bias=False, mlp_ratio=2.0),  # layer-scale + qk-norm
    dict(global_pool="avg", fc_norm=False, in_chans=1),  # avg pool with the final norm kept, 1 channel
], ids=["token", "avg_fc_norm", "layerscale_qknorm", "avg_no_fc_norm_1ch"])
def test_timm_vit_parity(kw):
    ref = _timm(**kw)
    ours = from_timm(ref)
    assert ours.config.init_values == kw.get("init_values")
    assert ours.config.qk_norm == kw.get("qk_norm", False)
    _assert_same_logits(ref, ours, _images(chans=kw.get("in_chans", 3)))


def test_timm_vit_features_at_a_smaller_non_square_size():
    """Both libraries resample E_pos with antialiased bicubic when shrinking the grid.
    (Growing it, timm still antialiases and vitkit does not, so outputs differ slightly.)"""
    ref = _timm(dynamic_img_size=True, img_size=64)
    ours = from_timm(ref).eval()
    x = _images(size=48)[..., :40]  # (2, 3, 48, 40): grid 8x8 -> 6x5
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-5)


def test_timm_deit_distilled_parity_eval_and_train():
    ref = _timm(VisionTransformerDistilled)
    ours = from_timm(ref)
    assert ours.config.distilled
    x = _images()
    _assert_same_logits(ref, ours, x)  # eval: the two heads averaged
    ref.train().set_distilled_training(True)
    for m in (ref, ours):  # train mode without dropout: both heads returned separately
        m.train()
    with torch.no_grad():
        cls_logits, dist_logits = ref(x)
        out = ours(x)
    assert isinstance(out, DistilledOutput)
    torch.testing.assert_close(out.logits, cls_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.dist_logits, dist_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.logits, out.dist_logits)


@pytest.mark.parametrize("backbone,stages", [("resnet18", 2), ("resnet50", 1)])
def test_timm_hybrid_parity(backbone, stages):
    torch.manual_seed(0)
    trunk = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=[stages])
    embed = partial(HybridEmbed, backbone=trunk)
    ref = _timm(embed_layer=embed, patch_size=1)
    ours = from_timm(ref)
    assert (ours.config.hybrid_backbone, ours.config.hybrid_stages) == (backbone, stages)
    assert any(k.startswith("patch_embed.patch.proj.") for k in ours.state_dict())
    _assert_same_logits(ref, ours, _images())


def test_timm_hybrid_from_numbered_sequential():
    """A trunk assembled as nn.Sequential(conv, bn, act, pool, layer1, layer2) maps by role."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool, net.layer1, net.layer2)
    ref = _timm(embed_layer=partial(HybridEmbed, backbone=trunk), patch_size=2)
    ours = from_timm(ref)
    assert (ours.config.hybrid_backbone, ours.config.hybrid_stages, ours.config.patch_size) == ("resnet18", 2, 2)
    _assert_same_logits(ref, ours, _images())


def test_timm_state_dict_with_config_only():
    ref = _timm(VisionTransformerDistilled)
    cfg = timm_config(ref)
    state = convert_timm_state_dict({f"module.{k}": v for k, v in ref.state_dict().items()}, cfg)
    ours = vitkit.create_model("deit_test_distilled", **vars(cfg))
    ours.load_state_dict(state, strict=True)
    _assert_same_logits(ref, ours, _images())


def test_converted_model_survives_save_and_load(tmp_path):
    ref = _timm(init_values=1e-4, global_pool="avg", class_token=False)
    ours = from_timm(ref).eval()
    ours.save_pretrained(tmp_path / "vit")
    loaded = vitkit.create_model(str(tmp_path / "vit")).eval()
    assert loaded.config == ours.config
    _assert_same_logits(ref, loaded, _images())


@pytest.mark.parametrize("kw,feature", [
    (dict(reg_tokens=2), "register tokens"),
    (dict(no_embed_class=True), "no_embed_class"),
    (dict(global_pool="map"), "attention pooling"),
    (dict(global_pool="max"), "global_pool='max'"),
    (dict(norm_layer="rmsnorm"), "RmsNorm"),
    (dict(pre_norm=True), "pre_norm"),
    (dict(act_layer="quick_gelu"), "activation"),
    (dict(final_norm=False), "final_norm"),
])
def test_timm_unsupported_features_are_named(kw, feature):
    ref = _timm(**kw)
    with pytest.raises(VitkitError, match=feature):
        from_timm(ref)


def test_timm_unsupported_state_dict_keys_are_named():
    ref = _timm(reg_tokens=1)
    with pytest.raises(VitkitError, match="register tokens"):
        convert_timm_state_dict(ref.state_dict(), vitkit.get_config("vit_test"))
    plain = _timm()
    with pytest.raises(VitkitError, match="no_embed_class"):
        convert_timm_state_dict({**plain.state_dict(), "pos_embed": torch.zeros(1, 16, 64)}, timm_config(plain))


def test_timm_non_vit_model_is_refused():
    with pytest.raises(VitkitError, match="expected a timm VisionTransformer"):
        from_timm(torch.nn.Linear(2, 2))


def test_timm_resnet_d_hybrid_is_refused():
    trunk = timm.create_model("resnet18d", pretrained=False, features_only=True, out_indices=[2])
    ref = TimmViT(**{**SMALL, "embed_layer": partial(HybridEmbed, backbone=trunk), "patch_size": 1})
    with pytest.raises(VitkitError, match="hybrid backbone part|stem"):
        from_timm(ref)


_SHARED_PRESETS = sorted(set(timm.list_models()) & set(vitkit.list_models(tag="vit")))


def test_timm_and_vitkit_share_preset_names():
    assert {"vit_tiny_patch16_224", "vit_base_patch16_224", "deit_tiny_distilled_patch16_224"} <= set(_SHARED_PRESETS)


@pytest.mark.parametrize("name", _SHARED_PRESETS)
def test_timm_presets_map_to_vitkit_presets(name):
    """The same preset name means the same architecture (built on 'meta': no memory, no init).

    timm's default head size follows its default weights (in21k ones have none), so the
    class count is set to vitkit's; everything else comes from timm's preset."""
    ours = vitkit.get_config(name)
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False, num_classes=ours.num_classes)
    assert timm_config(ref) == ours


# ---------------------------------------------------------------- transformers
def _hf_config(**kw) -> transformers.ViTConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                image_size=32, patch_size=8, num_labels=7, layer_norm_eps=1e-12)
    return transformers.ViTConfig(**{**base, **kw})


def _hf(cls, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(cls(_hf_config(**kw)))


@pytest.mark.parametrize("kw", [dict(), dict(qkv_bias=False, num_channels=1, layer_norm_eps=1e-6)],
                         ids=["default", "no_qkv_bias_1ch"])
def test_hf_classification_parity(kw):
    ref = _hf(transformers.ViTForImageClassification, **kw)
    ours = from_hf(ref)
    assert ours.config.norm_eps == ref.config.layer_norm_eps
    x = _images(chans=kw.get("num_channels", 3))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(pixel_values=x).logits, rtol=1e-4, atol=1e-5)


def test_hf_interpolated_pos_encoding_parity():
    """At another (non-square) size vitkit's E_pos resampling equals HF's interpolate_pos_encoding."""
    ref = _hf(transformers.ViTForImageClassification)
    x = _images(size=48)[..., :40]  # grid 4x4 -> 6x5
    with torch.no_grad():
        expected = ref(pixel_values=x, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(from_hf(ref).eval()(x), expected, rtol=1e-4, atol=1e-5)


def test_hf_vit_model_features_parity():
    ref = _hf(transformers.ViTModel)  # has a pooler, which is not converted
    ours = from_hf(ref)
    assert ours.config.num_classes == 0
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().forward_features(x), ref(pixel_values=x).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)


def test_hf_legacy_key_layout_converts():
    """Checkpoints saved by transformers < 5 (query/key/value, intermediate.dense) convert the same."""
    ref = _hf(transformers.ViTForImageClassification)
    legacy = {}
    for k, v in ref.state_dict().items():
        k = k.replace("vit.layers.", "vit.encoder.layer.").replace(".mlp.fc1.", ".intermediate.dense.")
        k = k.replace(".mlp.fc2.", ".output.dense.").replace(".attention.o_proj.", ".attention.output.dense.")
        for short, long in (("q", "query"), ("k", "key"), ("v", "value")):
            k = k.replace(f".attention.{short}_proj.", f".attention.attention.{long}.")
        legacy[k] = v
    assert convert_hf_state_dict(legacy).keys() == from_hf(ref).state_dict().keys()
    for key, value in convert_hf_state_dict(legacy).items():
        torch.testing.assert_close(value, from_hf(ref).state_dict()[key])


def test_hf_errors_name_the_problem():
    with pytest.raises(VitkitError, match="hidden_act='relu'"):
        from_hf(_hf(transformers.ViTForImageClassification, hidden_act="relu"))
    with pytest.raises(VitkitError, match="unexpected transformers weight"):
        convert_hf_state_dict({"vit.embeddings.extra_thing": torch.zeros(1)})
    with pytest.raises(VitkitError, match="lacks"):
        convert_hf_state_dict({"vit.layers.0.attention.q_proj.weight": torch.zeros(4, 4)})
