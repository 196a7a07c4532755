"""Preprocessing travels with the weights: folder transforms (random resized crop; shorter side +
center crop at eval), the initial weights' statistics for every data set, and ``--init``."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import vitkit
from vitkit.cli import main as cli_main
from vitkit.data import DataConfig, build_data
from vitkit.engine.run_config import RunConfig
from vitkit.engine.trainer import build_model, init_preprocess
from vitkit.preprocess import Preprocess

BASE = Preprocess(16, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic", 0.9)  # as a checkpoint would carry


def _folder_cfg(folder: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", data_dir=str(folder), val_fraction=0.4, **kw)


def _stripes(path: Path, size=(60, 20)) -> Path:
    """A wide RGB image: red left third, green middle, blue right third."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size)
    third = size[0] // 3
    for i, color in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        image.paste(color, (i * third, 0, (i + 1) * third, size[1]))
    image.save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("a", "b"):
        for i in range(3):
            _stripes(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


def test_eval_resizes_the_shorter_side_then_center_crops():
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    pre = Preprocess(16, 3, 0.0, 1.0, crop_pct=0.875)
    side = math.floor(16 / 0.875)  # 18: the shorter side before the crop
    expected = TF.center_crop(TF.resize(image, [side], antialias=True), [16, 16]).float() / 255.0
    assert TF.resize(image, [side], antialias=True).shape[-2:] == (18, 30)  # aspect ratio kept
    torch.testing.assert_close(pre(image), expected, rtol=0, atol=0)


def test_adapted_statistics_follow_the_channels():
    assert BASE.adapted(in_chans=1).mean == pytest.approx((0.2,)) and BASE.adapted(in_chans=1).std == (0.5,)
    five = BASE.adapted(img_size=8, in_chans=5, crop_pct=1.0)
    assert five.mean == (0.1, 0.2, 0.3, 0.1, 0.2) and five.img_size == (8, 8) and five.crop_pct == 1.0


def test_folder_eval_is_a_center_crop_not_a_squash(folder):
    cfg = _folder_cfg(folder, img_size=16, crop_pct=0.5)
    bundle = build_data(cfg)  # 60x20 -> 96x32 (stripes 32 wide), center 16x16: inside the green stripe
    image, _ = bundle.val[0]
    pixels = bundle.preprocess.denormalize(image[None])[0]
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), torch.tensor([0.0, 1.0, 0.0]), rtol=0, atol=1e-3)
    assert build_data(_folder_cfg(folder)).preprocess.crop_pct == 0.875  # timm's default for folders


def test_folder_train_takes_random_resized_crops(folder):
    cfg = _folder_cfg(folder, img_size=16, crop_scale=(0.05, 0.1), hflip=False)
    bundle = build_data(cfg)
    torch.manual_seed(0)
    crops = torch.stack([bundle.train[0][0] for _ in range(20)])  # (20, 3, 16, 16)
    assert crops.shape == (20, 3, 16, 16)
    pixels = bundle.preprocess.denormalize(crops)
    means = pixels.mean(dim=(2, 3))  # (20, 3): a crop of 5-10% of the area mostly lies inside one stripe
    assert int((means.max(dim=1).values > 0.99).sum()) >= 10
    assert len(set(means.argmax(dim=1).tolist())) >= 2  # crops land in different stripes: positions are random


def test_initial_weights_set_the_statistics_of_every_data_set(folder):
    digits = build_data(DataConfig(name="digits", limit_train=16, limit_val=8), BASE)
    assert digits.preprocess == BASE.adapted(img_size=8, in_chans=1, crop_pct=1.0)  # arrays keep crop_pct 1
    assert digits.preprocess.mean == pytest.approx((0.2,)) and digits.preprocess.interpolation == "bicubic"
    images = build_data(_folder_cfg(folder, img_size=16), BASE)
    assert images.preprocess == BASE  # folders take the crop fraction too
    cropped = build_data(_folder_cfg(folder, img_size=16, crop_pct=1.0), BASE)
    assert cropped.preprocess == BASE.adapted(crop_pct=1.0)


def _pretrained(tmp_path) -> Path:
    torch.manual_seed(0)
    model = vitkit.create_model("vit_test")
    model.preprocess = BASE
    model.save_pretrained(tmp_path / "pre")
    return tmp_path / "pre"


def test_init_weights_are_adapted_to_the_data(tmp_path, capsys):
    pre = _pretrained(tmp_path)
    cfg = RunConfig(model="vit_test", init=str(pre), data=DataConfig(name="digits", img_size=16, limit_train=32))
    assert init_preprocess(cfg) == BASE
    bundle = build_data(cfg.data, init_preprocess(cfg))
    model = build_model(cfg, bundle)
    line = capsys.readouterr().err
    assert "re-initialised head (5 -> 10 classes)" in line and "patch_embed.proj (3 -> 1 input channels)" in line
    saved = vitkit.create_model(pre)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, saved.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    assert model.preprocess == BASE.adapted(in_chans=1, crop_pct=1.0)


def test_cli_train_with_init(tmp_path, capsys):
    pre = _pretrained(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--model", "vit_test", "--data", "digits", "--init", str(pre), "--out", str(out),
            "--epochs", "1", "--set", "data.img_size=16", "data.limit_train=64", "data.limit_val=32",
            "batch_size=32", "tensorboard=false", "progress=false"]
    assert cli_main(args) == 0
    assert json.loads((out / "config.json").read_text())["init"] == str(pre)
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["preprocess"]["mean"] == [pytest.approx(0.2)] and saved["preprocess"]["interpolation"] == "bicubic"
    assert "weights from" in capsys.readouterr().err
    card = (out / "model" / "README.md").read_text()
    assert shlex.join(["vitkit", *args]) in card and "top-1 accuracy" in card
    assert cli_main(["eval", str(out), "--json"]) == 0  # eval normalises as the model was trained
    evaluated, trained = json.loads(capsys.readouterr().out), json.loads((out / "metrics.json").read_text())
    assert evaluated["loss"] == pytest.approx(trained["loss"], rel=1e-5) and evaluated["top1"] == trained["top1"]
    same = ["train", "--model", "vit_test", "--print-config", "--set", f"init={pre}"]
    assert cli_main(same) == 0 and json.loads(capsys.readouterr().out)["init"] == str(pre)
