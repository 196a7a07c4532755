"""One config tree: nested model configs, (H, W) image sizes, one ``--set`` in every command that
builds a model (train, eval, flops, bench, export, explain), aliases, and files in the earlier
layout (a run config with ``model`` + ``model_overrides``; flat VT-ResNet / FPN / ViT-seg configs)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.commands.options import split_sets
from vitkit.config import apply_overrides, from_dict, to_dict
from vitkit.engine.run_config import RunConfig, load_run_config, resolve
from vitkit.errors import VitkitError
from vitkit.models.resnet import ResNetTrunkConfig
from vitkit.models.vit import ViTConfig
from vitkit.registry import get_config, get_entry, list_models
from vitkit.tools.flops import count_flops, format_report

VT = {"vt.num_tokens": 8, "backbone.depth": 34}  # nested fields of vt_resnet_test, as create_model keys


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _image(tmp_path, size=20):
    path = tmp_path / "img.png"
    pixels = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------- the tree itself
def test_composite_configs_nest_their_parts():
    assert get_config("vt_resnet18_28").backbone == ResNetTrunkConfig(small_stem=True)
    assert get_config("fpn_resnet50_512").backbone.depth == 50
    fpn = vitkit.create_model("fpn_test", **{"backbone.depth": 34})
    assert [len(getattr(fpn.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]  # the ResNet-34 layout
    seg = vitkit.create_model("vit_seg_test", **{"backbone.depth": 3}, img_size=24, in_chans=1)
    assert len(seg.backbone.blocks) == 3 and seg.backbone.grid == (6, 6)
    vit = seg.config.backbone  # its input and classes follow the ViTSeg's; built without a classifier
    assert isinstance(vit, ViTConfig) and (vit.img_size, vit.in_chans, vit.num_classes) == ((24, 24), 1, 3)
    assert isinstance(seg.backbone.head, torch.nn.Identity)
    with pytest.raises(VitkitError, match="set img_size instead"):
        vitkit.create_model("vit_seg_test", **{"backbone.img_size": 32})


def test_img_size_is_a_pair_everywhere():
    assert all(len(get_entry(n).config.img_size) == 2 for n in list_models())
    assert ViTConfig(img_size=16).img_size == (16, 16) and ViTConfig(img_size=[16, 8]).img_size == (16, 8)
    assert apply_overrides(ViTConfig(), {"img_size": "24"}).img_size == (24, 24)
    assert apply_overrides(ViTConfig(), {"img_size": "24,16"}).img_size == (24, 16)
    assert from_dict(ViTConfig, {"img_size": 20}).img_size == (20, 20)
    assert from_dict(ViTConfig, to_dict(ViTConfig(img_size=(20, 12)))).img_size == (20, 12)
    for bad in (0, (1, 2, 3), "x"):
        with pytest.raises(VitkitError, match="img_size"):
            apply_overrides(ViTConfig(), {"img_size": bad})


def test_run_config_holds_the_typed_model_config():
    cfg = RunConfig(model="vt_resnet_test")
    assert cfg.model_name == "vt_resnet_test" and cfg.model == get_config("vt_resnet_test")
    cfg = resolve(cfg, {"model.vt.num_tokens": "8", "model.backbone.depth": "34", "vt.num_heads": "1"})
    assert cfg.model == get_config("vt_resnet_test", **VT, **{"vt.num_heads": 1})
    other = resolve(cfg, {"model": "vit_test", "model.depth": "1"})  # another preset: its own config
    assert other.model_name == "vit_test" and other.model == get_config("vit_test", depth=1)
    with pytest.raises(VitkitError, match="preset 'vit_test' has a ViTConfig"):
        RunConfig(model_name="vit_test", model=get_config("vt_resnet_test"))


def test_split_sets_groups_and_aliases():
    pairs = ["model.vt.num_tokens=8", "backbone.depth=50", "data.limit_val=5", "limit_train=3"]
    assert split_sets(pairs, ("model",), "model") == {
        "model": {"vt.num_tokens": "8", "backbone.depth": "50", "data.limit_val": "5", "limit_train": "3"}}
    assert split_sets(pairs, ("model", "data"), "data") == {
        "model": {"vt.num_tokens": "8"}, "data": {"backbone.depth": "50", "limit_val": "5", "limit_train": "3"}}
    with pytest.raises(VitkitError, match="first argument"):
        split_sets(["model=vit_test"], ("model",), "model")


# ---------------------------------------------------------------- --set in every command
@pytest.mark.parametrize("model, sets, expect", [
    ("vit_test", ["model.depth=4"], {"depth": 4}),
    ("vt_resnet_test_small", ["model.vt.num_tokens=8", "--set", "model.backbone.depth=34"], VT),
    ("vt_resnet_test_small", ["vt.num_tokens=8", "backbone.depth=34"], VT),  # without model.: an alias
    ("fpn_test", ["model.backbone.depth=50", "model.vt.num_heads=2"], {"backbone.depth": 50, "vt.num_heads": 2}),
])
def test_set_in_train(model, sets, expect, capsys):
    assert main(["train", "--model", model, "--set", *sets, "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model_name"] == model and cfg["model"] == to_dict(get_config(model, **expect))


def test_set_in_eval(tmp_path, capsys):
    vitkit.create_model("vt_resnet_test_small", num_classes=10).save_pretrained(tmp_path / "m")  # digits-shaped
    args = ["eval", str(tmp_path / "m"), "--data", "digits", "--json", "--out", str(tmp_path / "plots")]
    assert main([*args, "--set", "limit_val=20", "model.vt.num_heads=2"]) == 0  # limit_val = data.limit_val
    assert json.loads(capsys.readouterr().out)["n"] == 20
    assert main([*args, "--set", "data.limit_val=20", "--set", "model.vt.num_heads=3"]) == 2  # reaches the model
    assert "divisible by num_heads 3" in capsys.readouterr().err


def test_set_in_flops_prefixed_bare_and_repeated(capsys):
    expected = format_report(count_flops(vitkit.create_model("vt_resnet_test", **VT), (32, 32),
                                         name="vt_resnet_test"))
    outputs = []
    for sets in (["--set", "model.vt.num_tokens=8", "model.backbone.depth=34"],
                 ["--set", "vt.num_tokens=8", "--set", "backbone.depth=34"], []):
        assert main(["flops", "vt_resnet_test", *sets]) == 0
        outputs.append(capsys.readouterr().out.strip())
    assert outputs[0] == outputs[1] == expected and outputs[2] != expected


@pytest.mark.parametrize("model, sets, expect", [
    ("vit_test", ["model.depth=1"], {"depth": 1}),
    ("vt_resnet_test", ["model.vt.num_tokens=8", "backbone.depth=34"], VT),
])
def test_set_in_bench(tmp_path, model, sets, expect):
    out = tmp_path / "b.json"
    assert main(["bench", model, "--batch-size", "2", "--iters", "1", "--warmup", "0", "--no-memory",
                 "--peak-n", "64", "--json", str(out), "--set", *sets]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["params"] == _params(vitkit.create_model(model, **expect)) != _params(vitkit.create_model(model))


def test_set_in_export(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["export", "vit_test", "--format", "torch-export", "--out", str(out),
                 "--set", "model.depth=1", "img_size=32"]) == 0
    assert "input (B, 3, 32, 32)" in capsys.readouterr().out
    state = torch.export.load(str(out)).state_dict
    assert {k.split(".blocks.")[1].split(".")[0] for k in state if ".blocks." in k} == {"0"}
    assert state["model.pos_embed"].shape[1] == 1 + (32 // 4) ** 2


def test_set_in_explain(tmp_path):
    img = _image(tmp_path)
    assert main(["explain", "vit_seg_test", str(img), "--out", str(tmp_path / "a"),
                 "--set", "model.backbone.depth=3", "model.indices=0,2"]) == 0
    assert len(list((tmp_path / "a").glob("attention_layer*.png"))) == 3  # default vit_seg_test: 2 blocks
    assert main(["explain", "vit_test", str(img), "--out", str(tmp_path / "b"), "--set", "depth=1"]) == 0
    assert [p.name for p in (tmp_path / "b").glob("attention_layer*.png")] == ["attention_layer00.png"]


@pytest.fixture(scope="module")
def saved_vt(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "m"
    vitkit.create_model("vt_resnet_test_small", num_classes=10).save_pretrained(path)
    return path


@pytest.mark.parametrize("key, hint", [("vt.num_tokenz=8", "did you mean num_tokens"),
                                       ("backbone.dept=50", "did you mean depth")])
@pytest.mark.parametrize("command", ["train", "eval", "flops", "bench", "export", "explain"])
def test_unknown_nested_field_is_one_line_error(command, key, hint, saved_vt, tmp_path, capsys):
    argv = {"train": ["train", "--model", "vt_resnet_test", "--print-config"],
            "eval": ["eval", str(saved_vt), "--data", "digits"],
            "flops": ["flops", "vt_resnet_test"], "bench": ["bench", "vt_resnet_test", "--peak-n", "64"],
            "export": ["export", "vt_resnet_test", "--out", str(tmp_path / "m.onnx")],
            "explain": ["explain", "vt_resnet_test", str(tmp_path / "img.png")]}[command]
    assert main([*argv, "--set", f"model.{key}"]) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and "\n" not in err and "Traceback" not in err


# ---------------------------------------------------------------- files in the earlier layout
# Written literally as the earlier code wrote them: the run config names the preset in `model` and
# keeps the changed fields in `model_overrides`; VT-ResNet / FPN / ViT-seg configs are flat.
LEGACY_RUN_CONFIG = """{"model": "vt_resnet_test_small", "model_overrides": {"num_modules": 1, "base_width": 4},
 "data": {"name": "digits", "data_dir": null, "img_size": 16, "val_fraction": 0.1, "seed": 0, "augment": "basic",
  "crop_padding": 2, "hflip": true, "randaugment_ops": 2, "randaugment_magnitude": 9, "mixup_alpha": 0.0,
  "cutmix_alpha": 0.0, "limit_train": null, "limit_val": 20, "canvas_size": 64, "canvas_items": 3,
  "canvas_train_size": 6000, "canvas_val_size": 1000},
 "optim": {"lr": 0.001, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-08},
 "schedule": {"warmup_epochs": 1.0, "warmup_steps": null, "min_lr_ratio": 0.01},
 "ema": {"enabled": false, "decay": 0.999}, "distill": {"teacher": null, "alpha": 0.5, "tau": 1.0, "kind": "hard"},
 "epochs": 1, "batch_size": 64, "eval_batch_size": 256, "grad_accum": 1, "clip_grad": 1.0, "label_smoothing": 0.0,
 "precision": "fp32", "compile": false, "seed": 0, "deterministic": true, "workers": 0, "threads": 0,
 "eval_every": 1, "tensorboard": true, "progress": true, "out_dir": "runs/legacy"}"""
_VT = ('"vt": {"num_tokens": %d, "token_channels": null, "tokenizer": "filter", "recurrent": true, '
       '"tokenizer_value": false, "pos_encoding": false, "pos_grid": 7, "pos_channels": 32, "transformer": "iccv", '
       '"num_heads": 1, "qk_ratio": 0.5, "ffn_ratio": 1.0, "projector": true, "projector_value": false}')
LEGACY_MODEL_CONFIGS = {
    "vt_resnet_test_small": '{"family": "vt_resnet", "config": {"img_size": 16, "in_chans": 1, "num_classes": 10, '
                            '"depth": 18, "base_width": 4, "small_stem": true, "num_modules": 1, %s}, '
                            '"class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], '
                            '"task": "classification", "preprocess": {"img_size": 16, "in_chans": 1, '
                            '"mean": [0.5], "std": [0.5]}}' % (_VT % 4),
    "fpn_test": '{"family": "semantic_fpn", "config": {"img_size": 32, "in_chans": 3, "num_classes": 3, "depth": 18, '
                '"base_width": 8, "small_stem": false, "neck": "fpn", "fpn_dim": 16, "head_dim": 8, %s}}' % (_VT % 8),
    "vt_fpn_test": '{"family": "semantic_fpn", "config": {"img_size": 32, "in_chans": 3, "num_classes": 3, '
                   '"depth": 18, "base_width": 8, "small_stem": false, "neck": "vt_fpn", "fpn_dim": 16, '
                   '"head_dim": 8, %s}}' % (_VT % 4),
    "vit_seg_test": '{"family": "vit_seg", "config": {"img_size": 16, "in_chans": 3, "num_classes": 3, '
                    '"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "indices": [0, 1], '
                    '"decoder_dim": 16}}',
}


@pytest.mark.parametrize("name", ["fpn_test", "vt_fpn_test", "vit_seg_test"])
def test_flat_model_config_json_still_loads(tmp_path, name):
    model = vitkit.create_model(name)
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(LEGACY_MODEL_CONFIGS[name])
    loaded = vitkit.create_model(tmp_path)
    assert loaded.config == get_config(name)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_run_dir_with_model_overrides_still_loads_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    built = get_config("vt_resnet_test_small", num_modules=1, num_classes=10, **{"backbone.base_width": 4})
    model = get_entry("vt_resnet_test_small").cls(built)
    model.save_pretrained(run / "model")
    (run / "model" / "config.json").write_text(LEGACY_MODEL_CONFIGS["vt_resnet_test_small"])
    (run / "config.json").write_text(LEGACY_RUN_CONFIG)
    cfg = load_run_config(run)
    assert cfg.model_name == "vt_resnet_test_small" and cfg.data.limit_val == 20 and cfg.out_dir == "runs/legacy"
    assert cfg.model == get_config("vt_resnet_test_small", num_modules=1, **{"backbone.base_width": 4})
    loaded = vitkit.create_model(run)
    assert loaded.config == built
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20


def test_legacy_vit_run_config_keeps_its_overrides(tmp_path):
    data = json.loads(LEGACY_RUN_CONFIG)
    data.update(model="vit_test", model_overrides={"img_size": 8, "patch_size": 2})
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_run_config(tmp_path).model == get_config("vit_test", img_size=8, patch_size=2)
