"""Pretrained sources (checkpoint files, timm and transformers folders, timm:/hf: hub specs from a
local cache) and adaptation (classes, channels, image size), checked against timm and transformers."""
from __future__ import annotations

import json
import pickle

import pytest
import timm
import torch
import transformers
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file
from timm.models import adapt_input_conv as timm_adapt_input_conv
from timm.models._hub import save_for_hf

import vitkit
from hub_cache import cache_repo
from vitkit.cli import main as cli_main
from vitkit.errors import VitkitError
from vitkit.layers import resample_pos_embed
from vitkit.models.adapt import adapt_input_conv
from vitkit.preprocess import Preprocess
from weights_util import randomize

# timm's ViT with exactly the architecture of vitkit's "vit_test" preset
VIT_TEST = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5, mlp_ratio=2.0)
TOL = dict(rtol=1e-4, atol=1e-5)  # float32 summation order differs between the two implementations




def _timm(name="vit_tiny_patch16_224", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(timm.create_model(name, pretrained=False, **{**VIT_TEST, **kw}))


def _x(chans=3, size=16, n=2) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, chans, size, size)


@pytest.fixture(scope="module")
def timm_vit():
    return _timm()


@pytest.fixture
def timm_file(tmp_path, timm_vit):
    path = tmp_path / "timm_vit.safetensors"
    save_file(timm_vit.state_dict(), str(path))
    return path


def _timm_with(path, **kw) -> torch.nn.Module:
    """timm's own pretrained loading from a local file (its adaptation of classes, channels, size)."""
    overlay = dict(file=str(path), num_classes=VIT_TEST["num_classes"])
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                              **{**VIT_TEST, **kw})
    return model.eval()


# ------------------------------------------------------------------ sources
@pytest.mark.parametrize("kind", ["safetensors", "pth", "nested_pth", "bin"])
def test_checkpoint_files_load_timm_weights(tmp_path, timm_vit, kind):
    path = tmp_path / f"w.{'safetensors' if kind == 'safetensors' else kind.split('_')[-1]}"
    state = timm_vit.state_dict()
    if kind == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3} if kind == "nested_pth" else state, path)
    model = vitkit.create_model("vit_test", pretrained=path).eval()
    assert not model.adaptation
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), timm_vit(_x()), **TOL)


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(VitkitError, match="cannot read checkpoint .*checkpoints that need code to unpickle"):
        vitkit.create_model("vit_test", pretrained=path)


def test_timm_folder_carries_architecture_and_pretrained_cfg(tmp_path, timm_vit):
    save_for_hf(timm_vit, tmp_path / "hub", safe_serialization=True)
    model = vitkit.create_model(tmp_path / "hub").eval()  # a preset of the same name: no timm needed
    cfg = timm_vit.pretrained_cfg
    assert model.preprocess == Preprocess(16, 3, cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"])
    assert model.config == vitkit.create_model("vit_test").config
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), timm_vit(_x()), **TOL)


def test_timm_folder_of_an_architecture_vitkit_lacks_is_read_by_timm(tmp_path):
    ref = _timm("vit_small_patch16_384", qk_norm=True, init_values=1e-5)  # no vitkit preset; qk-norm, layer-scale
    save_for_hf(ref, tmp_path / "hub")  # pytorch_model.bin
    model = vitkit.create_model(tmp_path / "hub").eval()
    assert model.config.qk_norm and model.config.init_values
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(_x()), **TOL)


def test_timm_resnet_folder(tmp_path):
    ref = randomize(timm.create_model("resnet18", pretrained=False, num_classes=4))
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    model = vitkit.create_model(tmp_path / "hub").eval()
    assert type(model).__name__ == "ResNet" and model.preprocess.crop_pct == ref.pretrained_cfg["crop_pct"]
    x = _x(size=64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **TOL)


def _hf_folder(path, classifier=True, processor=None):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, id2label={i: f"c{i}" for i in range(5)})
    torch.manual_seed(0)
    cls = transformers.ViTForImageClassification if classifier else transformers.ViTModel
    ref = randomize(cls(cfg))
    ref.save_pretrained(path)
    if processor is not None:
        transformers.ViTImageProcessor(**processor).save_pretrained(path)
    return ref


def test_transformers_folder_with_image_processor(tmp_path):
    ref = _hf_folder(tmp_path / "hf", processor=dict(size={"height": 16, "width": 16}, resample=3,
                                                     image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]))
    model = vitkit.create_model(tmp_path / "hf").eval()
    assert model.preprocess == Preprocess(16, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 1.0)
    assert model.class_names == [f"c{i}" for i in range(5)]
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), ref(pixel_values=_x()).logits, **TOL)


def test_transformers_vit_model_is_headless(tmp_path):
    ref = _hf_folder(tmp_path / "hf", classifier=False)
    model = vitkit.create_model(tmp_path / "hf").eval()
    assert model.num_classes == 0 and model.preprocess.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(_x()), ref(pixel_values=_x()).last_hidden_state, **TOL)


def test_hand_built_cache_is_what_huggingface_hub_reads(hub_cache, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config.json").write_text("{}")
    snapshot = cache_repo(hub_cache, "org/repo", tmp_path / "repo")
    found = hf_hub_download("org/repo", "config.json", local_files_only=True)
    assert found == str(snapshot / "config.json")


def test_hub_specs_resolve_from_the_cache_offline(hub_cache, tmp_path, timm_vit):
    save_for_hf(timm_vit, tmp_path / "timm", safe_serialization=True)
    cache_repo(hub_cache, "timm/vit_tiny_patch16_224.test_tag", tmp_path / "timm")
    _hf_folder(tmp_path / "hf")
    cache_repo(hub_cache, "org/hf-vit", tmp_path / "hf", revision="v1")
    vitkit.create_model("vit_test", num_classes=3).save_pretrained(tmp_path / "vitkit")
    cache_repo(hub_cache, "org/vitkit-vit", tmp_path / "vitkit")
    from_timm = vitkit.create_model("timm:vit_tiny_patch16_224.test_tag").eval()
    with torch.no_grad():
        torch.testing.assert_close(from_timm(_x()), timm_vit(_x()), **TOL)
        for spec, folder in (("hf:org/hf-vit@v1", "hf"), ("hf:org/vitkit-vit", "vitkit")):
            torch.testing.assert_close(vitkit.create_model(spec).eval()(_x()),
                                       vitkit.create_model(tmp_path / folder).eval()(_x()), rtol=0, atol=0)
    weights_only = vitkit.create_model("vit_test", pretrained="timm:vit_tiny_patch16_224.test_tag").eval()
    torch.testing.assert_close(weights_only(_x()), from_timm(_x()), rtol=0, atol=0)


def test_timm_spec_without_a_tag_uses_timms_default(hub_cache, tmp_path, timm_vit, monkeypatch):
    default = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    save_for_hf(timm_vit, tmp_path / "timm", safe_serialization=True)
    cache_repo(hub_cache, default, tmp_path / "timm")
    assert vitkit.create_model("timm:vit_tiny_patch16_224").config.embed_dim == VIT_TEST["embed_dim"]


# ------------------------------------------------------------------ adaptation, against timm
def test_new_head_keeps_the_features(timm_file, capsys):
    model = vitkit.create_model("vit_test", pretrained=timm_file, num_classes=3).eval()
    ref = _timm_with(timm_file, num_classes=3)
    line = capsys.readouterr().err.strip()
    kept = len(model.state_dict()) - 2  # all but head.weight and head.bias
    assert line == f"weights from {timm_file}: kept {kept} tensors; re-initialised head (5 -> 3 classes)"
    with torch.no_grad():
        assert model(_x()).shape == (2, 3)
        torch.testing.assert_close(model.forward_head(model.forward_features(_x()), pre_logits=True),
                                   ref.forward_head(ref.forward_features(_x()), pre_logits=True), **TOL)


def test_gray_model_on_a_gray_image_equals_the_rgb_model_on_it_repeated(timm_file, timm_vit, capsys):
    model = vitkit.create_model("vit_test", pretrained=timm_file, in_chans=1).eval()
    assert "adapted patch_embed.proj (3 -> 1 input channels)" in capsys.readouterr().err
    gray = _x(chans=1)
    with torch.no_grad():
        torch.testing.assert_close(model(gray), timm_vit(gray.repeat(1, 3, 1, 1)), **TOL)
        torch.testing.assert_close(model(gray), _timm_with(timm_file, in_chans=1)(gray), **TOL)


@pytest.mark.parametrize("saved, chans", [(3, 1), (3, 2), (3, 5), (3, 6), (1, 3)])
def test_adapt_input_conv_matches_timm(saved, chans):
    weight = torch.randn(8, saved, 4, 4)
    ours = adapt_input_conv(weight, chans)
    if saved == 3:  # timm adapts from 3 channels only
        torch.testing.assert_close(ours, timm_adapt_input_conv(chans, weight.clone()), rtol=0, atol=1e-6)
    if chans != 1 and chans % saved:
        return  # some input slices are kept and others not: the same scale only on average
    image = torch.randn(2, 1, 4, 4)  # an image whose channels are equal gives the original output
    out = torch.nn.functional.conv2d(image.repeat(1, chans, 1, 1), ours)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(image.repeat(1, saved, 1, 1), weight), **TOL)


def test_five_channel_model_matches_timm(timm_file):
    model = vitkit.create_model("vit_test", pretrained=timm_file, in_chans=5).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_x(chans=5)), _timm_with(timm_file, in_chans=5)(_x(chans=5)), **TOL)


def test_smaller_image_resamples_pos_embed_like_timm(timm_file, capsys):
    model = vitkit.create_model("vit_test", pretrained=timm_file, img_size=8).eval()
    assert "resampled pos_embed (17 -> 5 tokens)" in capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(model(_x(size=8)), _timm_with(timm_file, img_size=8)(_x(size=8)), **TOL)


def test_headless_distilled_deit_features_match_timm(tmp_path):
    ref = _timm("deit_tiny_distilled_patch16_224")
    path = tmp_path / "deit.pth"
    torch.save(ref.state_dict(), path)
    model = vitkit.create_model("deit_test_distilled", pretrained=path, num_classes=0).eval()
    assert model.adaptation.removed == ["head (headless)", "head_dist (headless)"]
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(_x()), pre_logits=True)  # (cls + dist) / 2
        torch.testing.assert_close(model(_x()), expected, **TOL)
        ref.reset_classifier(0)
        torch.testing.assert_close(model(_x()), ref(_x()), **TOL)
        pooled = vitkit.create_model("deit_test_distilled", pretrained=path).eval()
        torch.testing.assert_close(pooled.forward_head(pooled.forward_features(_x()), pre_logits=True),
                                   model(_x()), **TOL)


def test_vit_seg_loads_its_weights_at_another_size(tmp_path, capsys):
    small = vitkit.create_model("vit_seg_test").eval()
    small.save_pretrained(tmp_path / "seg")
    big = vitkit.create_model(tmp_path / "seg", img_size=32).eval()
    assert "resampled backbone.pos_embed (17 -> 65 tokens)" in capsys.readouterr().err
    expected = resample_pos_embed(small.backbone.pos_embed, (8, 8), (4, 4), 1)
    torch.testing.assert_close(big.backbone.pos_embed, expected, rtol=0, atol=0)
    assert big(_x(size=32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["vit_test", "vit_test_avg", "deit_test_distilled", "resnet_test", "vt_resnet_test"])
def test_reset_classifier_on_every_classifier(tmp_path, name):
    model = vitkit.create_model(name).eval()
    x = _x(chans=model.in_chans, size=model.config.img_size[0] if isinstance(model.config.img_size, tuple)
           else model.config.img_size)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), features)
        model.save_pretrained(tmp_path / "m")
        torch.testing.assert_close(vitkit.create_model(tmp_path / "m").eval()(x), model(x), rtol=0, atol=0)
        if "distilled" in name:
            with pytest.raises(VitkitError, match="distilled"):
                model.reset_classifier(0, "")
            return
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.ndim in (3, 4) and unpooled.shape[0] == 2
        model.save_pretrained(tmp_path / "u")
        torch.testing.assert_close(vitkit.create_model(tmp_path / "u").eval()(x), unpooled, rtol=0, atol=0)


@pytest.mark.parametrize("name, kw", [("vit_tiny_patch16_224", {}), ("resnet18", dict(num_classes=4))])
def test_unpooled_features_match_timm(tmp_path, name, kw):
    ref = _timm(name, **kw) if name.startswith("vit") else randomize(timm.create_model(name, **kw))
    save_for_hf(ref, tmp_path / "hub", safe_serialization=True)
    model = vitkit.create_model(tmp_path / "hub").eval()
    model.reset_classifier(0, "")
    ref.reset_classifier(0, "")
    x = _x(size=16 if name.startswith("vit") else 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **TOL)


def test_reset_classifier_refuses_dense_models():
    with pytest.raises(VitkitError, match="not a classifier"):
        vitkit.create_model("vit_seg_test").reset_classifier(2)


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("spec, match", [
    ("timm:vit_nope.tag", "not in the local Hugging Face cache .* run once online"),
    ("hf:org/missing", "not in the local Hugging Face cache"),
    ("hf:org", "bad Hugging Face spec 'hf:org'; write hf:ORG/REPO"),
    ("hf:org/repo@", "bad Hugging Face spec"),
    ("timm:", "bad timm spec"),
    ("timm:vit_nope", "timm has no pretrained weights named 'vit_nope'"),
])
def test_unresolvable_hub_spec_is_one_line(hub_cache, spec, match):
    with pytest.raises(VitkitError, match=match) as info:
        vitkit.create_model(spec)
    assert "\n" not in str(info.value)


def test_folder_of_another_model_type_is_named(tmp_path, hub_cache):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    cache_repo(hub_cache, "org/bert", tmp_path / "bert")
    with pytest.raises(VitkitError, match="model_type 'bert' is not converted"):
        vitkit.create_model("hf:org/bert")


def test_weights_of_the_wrong_family_are_named(tmp_path, timm_file):
    ref = _hf_folder(tmp_path / "hf")
    torch.save(ref.state_dict(), tmp_path / "hf.bin")
    with pytest.raises(VitkitError, match="transformers ViT weights fit vitkit's ViT models, not ResNet"):
        vitkit.create_model("resnet_test", pretrained=tmp_path / "hf.bin")
    with pytest.raises(VitkitError, match="do not fit VisionTransformer: shape mismatch: cls_token"):
        vitkit.create_model("vit_test", pretrained=timm_file, embed_dim=64, num_heads=4)


def test_cli_unresolvable_init_is_exit_2(hub_cache, tmp_path, capsys):
    code = cli_main(["train", "--model", "vit_test", "--init", "hf:org/missing", "--out", str(tmp_path / "run"),
                     "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "hf:org/missing" in err and "run once online" in err
