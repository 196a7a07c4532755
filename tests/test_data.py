"""Data sets, transforms and image loading (vitkit.data). Small limits keep every test fast.

Fashion-MNIST and seg-canvas read small generated IDX files (``fake_fmnist`` in conftest.py), not the
system copy, so these tests run on any machine.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fake_data import write_idx
from vitkit.config import apply_overrides
from vitkit.data import DataConfig, build_data, fashion_mnist, list_image_files, load_image
from vitkit.data.fashion_mnist import read_idx
from vitkit.data.seg_canvas import compose_canvases
from vitkit.errors import VitkitError
from vitkit.preprocess import Preprocess

CANVAS = dict(name="seg-canvas", canvas_size=40, canvas_train_size=24, canvas_val_size=8, canvas_items=2)


@pytest.fixture
def canvas(fake_fmnist) -> dict:
    """seg-canvas DataConfig fields, reading the generated Fashion-MNIST files."""
    return dict(CANVAS, data_dir=fake_fmnist)


def _stack(ds, n=None):
    items = [ds[i] for i in range(n or len(ds))]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


# ---------------------------------------------------------------- digits
def test_digits_bundle_shapes_ranges_and_split():
    b = build_data(DataConfig(name="digits", augment="none"))
    assert (b.task, b.num_classes, b.in_chans, b.img_size) == ("classification", 10, 1, 8)
    assert len(b.train) + len(b.val) == 1797 and abs(len(b.val) - 180) <= 10
    x, y = _stack(b.train)
    assert x.shape == (len(b.train), 1, 8, 8) and x.dtype == torch.float32
    assert set(y) == set(range(10)) and all(isinstance(v, int) for v in y)
    raw = x * torch.tensor(b.std) + torch.tensor(b.mean)  # undo normalisation -> 0..1
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    torch.testing.assert_close(x.mean(), torch.tensor(0.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(x.std(), torch.tensor(1.0), atol=1e-2, rtol=0)
    assert b.batch_transform is None


def test_digits_split_is_seeded_and_stratified():
    a, b = build_data(DataConfig(seed=1, augment="none")), build_data(DataConfig(seed=1, augment="none"))
    c = build_data(DataConfig(seed=2, augment="none"))
    torch.testing.assert_close(_stack(a.val)[0], _stack(b.val)[0])
    assert not torch.equal(_stack(a.val)[0], _stack(c.val)[0])
    counts = torch.bincount(torch.tensor(_stack(a.val)[1]), minlength=10)
    assert counts.min() >= 16 and counts.max() <= 20  # ~10% of ~180 per class


def test_limits_and_resize():
    b = build_data(DataConfig(img_size=16, limit_train=30, limit_val=7))
    assert (len(b.train), len(b.val), b.img_size) == (30, 7, 16)
    assert b.train[0][0].shape == (1, 16, 16) and b.val[3][0].shape == (1, 16, 16)
    with pytest.raises(VitkitError, match="limit_train"):
        build_data(DataConfig(limit_train=0))


def test_augmentation_is_random_but_seeded():
    b = build_data(DataConfig(crop_padding=2, limit_train=4))
    torch.manual_seed(5)
    first = [b.train[0][0] for _ in range(8)]
    torch.manual_seed(5)
    again = [b.train[0][0] for _ in range(8)]
    torch.testing.assert_close(torch.stack(first), torch.stack(again))
    assert any(not torch.equal(first[0], f) for f in first[1:])  # crops/flips vary
    no_aug = build_data(DataConfig(augment="none", limit_train=4))
    torch.testing.assert_close(no_aug.train[0][0], no_aug.train[0][0])


def test_randaugment_and_config_overrides():
    cfg = apply_overrides(DataConfig(),
                          {"augment": "randaugment", "img_size": "12", "limit_train": "5", "hflip": "false"})
    assert (cfg.img_size, cfg.limit_train, cfg.hflip) == (12, 5, False)
    b = build_data(cfg)
    assert b.train[0][0].shape == (1, 12, 12) and torch.isfinite(b.train[0][0]).all()
    with pytest.raises(VitkitError, match="unknown augment"):
        build_data(DataConfig(augment="heavy"))
    with pytest.raises(VitkitError, match="did you mean digits"):
        build_data(DataConfig(name="digit"))


# ---------------------------------------------------------------- MixUp / CutMix
@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_cutmix_soft_targets(mixup, cutmix):
    b = build_data(DataConfig(mixup_alpha=mixup, cutmix_alpha=cutmix, limit_train=16))
    x, y = _stack(b.train)
    mixed, soft = b.batch_transform(x, torch.tensor(y))
    assert mixed.shape == x.shape and soft.shape == (16, 10) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(16))
    assert (soft >= 0).all() and (soft.max(1).values < 1).any()  # some targets really mixed


def test_mixup_rejected_for_segmentation(canvas):
    with pytest.raises(VitkitError, match="classification only"):
        build_data(DataConfig(mixup_alpha=0.2, **canvas))


# ---------------------------------------------------------------- Fashion-MNIST IDX files
def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    good = write_idx(tmp_path / "good.gz", images, 0x803)
    assert np.array_equal(read_idx(good, 3), images)
    with pytest.raises(VitkitError, match="bad magic"):
        read_idx(write_idx(tmp_path / "magic.gz", images, 0x801), 3)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-100]))
    with pytest.raises(VitkitError, match="truncated"):
        read_idx(short, 3)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(VitkitError, match="cut.gz"):
        read_idx(cut, 3)


def test_fashion_mnist_missing_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(VitkitError, match="apt-get install dataset-fashion-mnist"):
        build_data(DataConfig(name="fashion-mnist", data_dir=str(tmp_path / "nope")))
    with pytest.raises(VitkitError, match="train-images-idx3-ubyte.gz not found"):
        build_data(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))


def test_fashion_mnist_from_a_data_dir(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)), 0x803)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, size=(n,)), 0x801, compress=False)
    b = build_data(DataConfig(name="fashion-mnist", data_dir=str(tmp_path), augment="none"))
    assert (len(b.train), len(b.val), b.img_size, b.in_chans) == (12, 6, 28, 1)
    assert b.train[0][0].shape == (1, 28, 28) and 0 <= b.val[5][1] < 10


def test_fashion_mnist_default_dir(fake_fmnist, monkeypatch):
    """Without data_dir the files come from DEFAULT_DIR (the Debian package's folder), loaded whole."""
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIR", fake_fmnist)
    b = build_data(DataConfig(name="fashion-mnist", limit_train=20, limit_val=10))
    assert (len(b.train.dataset), len(b.val.dataset)) == (300, 150)  # the whole splits; limits subset them
    assert (len(b.train), len(b.val)) == (20, 10)
    assert b.train.dataset.images.dtype == torch.uint8  # kept compact in memory
    assert b.class_names[0] == "T-shirt/top" and b.train[0][0].shape == (1, 28, 28)
    assert fashion_mnist.resolve_dir(None) == Path(fake_fmnist)


# ---------------------------------------------------------------- seg-canvas
def test_seg_canvas_masks_match_images(canvas):
    b = build_data(DataConfig(augment="none", **canvas))
    got = (b.task, b.num_classes, b.in_chans, b.img_size, len(b.train), len(b.val))
    assert got == ("segmentation", 11, 1, 40, 24, 8)
    background = (0 - b.mean[0]) / b.std[0]
    for ds in (b.train, b.val):
        x, masks = _stack(ds)
        m = torch.stack(masks)
        assert m.dtype == torch.long and m.shape == (len(ds), 40, 40) and 0 <= m.min() and m.max() <= 10
        is_bg = torch.isclose(x[:, 0], torch.tensor(background), atol=1e-5)
        assert torch.equal(is_bg, m == 0)  # background 0 exactly where the image is background
        assert (m > 0).float().mean() > 0.1  # items are really there


def test_seg_canvas_augment_keeps_image_and_mask_aligned(canvas):
    b = build_data(DataConfig(augment="basic", crop_padding=4, **canvas))
    background = (0 - b.mean[0]) / b.std[0]
    x, masks = _stack(b.train)
    m = torch.stack(masks)
    is_bg = torch.isclose(x[:, 0], torch.tensor(background), atol=1e-5)
    assert (m == 255).any()  # padding is ignored
    assert torch.equal(is_bg, (m == 0) | (m == 255))


def test_seg_canvas_is_deterministic_by_seed(canvas):
    one, two = build_data(DataConfig(augment="none", **canvas)), build_data(DataConfig(augment="none", **canvas))
    other = build_data(DataConfig(augment="none", seed=3, **canvas))
    torch.testing.assert_close(torch.stack(_stack(one.val)[1]), torch.stack(_stack(two.val)[1]))
    assert not torch.equal(one.train.masks, other.train.masks)
    assert not torch.equal(one.train.images[:8], one.val.images)  # train and val differ
    items = np.random.default_rng(0).integers(0, 256, size=(10, 28, 28)).astype(np.uint8)
    labels = np.arange(10)
    big, small = compose_canvases(items, labels, 20, 36, 3, 7), compose_canvases(items, labels, 5, 36, 3, 7)
    assert np.array_equal(big[0][:5], small[0]) and np.array_equal(big[1][:5], small[1])


def test_seg_canvas_errors(canvas):
    with pytest.raises(VitkitError, match="canvas_size"):
        build_data(DataConfig(**{**canvas, "canvas_size": 20}))
    with pytest.raises(VitkitError, match="randaugment"):
        build_data(DataConfig(augment="randaugment", **canvas))


# ---------------------------------------------------------------- folders
def _image(path: Path, value: int, mode="RGB", size=(10, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)
    return path


def test_imagefolder_single_folder_split(tmp_path):
    for c, name in enumerate(("cat", "dog")):
        for i in range(4):
            _image(tmp_path / name / f"{i}.png", 40 * c + 10 * i, mode="L" if i == 3 else "RGB")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    b = build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), val_fraction=0.25, img_size=8,
                              augment="none"))
    assert (b.class_names, b.in_chans, b.num_classes, len(b.train), len(b.val)) == (["cat", "dog"], 3, 2, 6, 2)
    x, y = _stack(b.val)
    assert x.shape == (2, 3, 8, 8) and sorted(y) == [0, 1]


def test_imagefolder_train_val_layout_and_corrupt_file(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            _image(tmp_path / split / name / "x.png", 100, mode="L", size=(6, 6))
    b = build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path), augment="none"))
    assert (b.in_chans, b.img_size, len(b.train), len(b.val)) == (1, 6, 2, 2)
    (tmp_path / "val" / "b" / "x.png").write_bytes(b"\x89PNG garbage")  # corrupted after the scan
    with pytest.raises(VitkitError, match="val/b/x.png"):
        b.val[1]
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(VitkitError, match="broken.png"):
        build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))
    with pytest.raises(VitkitError, match="does not exist"):
        build_data(DataConfig(name="imagefolder", data_dir=str(tmp_path / "missing")))
    with pytest.raises(VitkitError, match="--data-dir"):
        build_data(DataConfig(name="imagefolder"))


def test_seg_folder(tmp_path):
    for i in range(5):
        _image(tmp_path / "images" / f"{i}.png", 30 * i, size=(8, 8))
        mask = np.zeros((8, 8), np.uint8)
        mask[:4, : i + 1] = 1 + i % 2
        Image.fromarray(mask, "L").save(_image(tmp_path / "masks" / f"{i}.png", 0, mode="L", size=(8, 8)))
    b = build_data(DataConfig(name="seg-folder", data_dir=str(tmp_path), val_fraction=0.4, augment="none"))
    assert (b.task, b.num_classes, b.in_chans, len(b.train), len(b.val)) == ("segmentation", 3, 3, 3, 2)
    image, mask = b.val[0]
    assert image.shape == (3, 8, 8) and mask.dtype == torch.long and mask.shape == (8, 8)
    stem = b.val.pairs[0][1]
    assert torch.equal(mask, torch.from_numpy(np.asarray(Image.open(stem)).astype(np.int64)))
    (tmp_path / "masks" / "0.png").unlink()
    with pytest.raises(VitkitError, match="no mask"):
        build_data(DataConfig(name="seg-folder", data_dir=str(tmp_path)))


# ---------------------------------------------------------------- predict-time loading
def test_load_image_converts_channels_and_normalises(tmp_path):
    gray = _image(tmp_path / "g.png", 51, mode="L", size=(5, 7))
    x = load_image(gray, Preprocess(img_size=4, in_chans=3, mean=(0.2,), std=(0.5,)))
    torch.testing.assert_close(x, torch.zeros(3, 4, 4), atol=1e-6, rtol=0)  # 51/255 = 0.2
    rgb = _image(tmp_path / "c.jpg", 200, size=(9, 9))
    assert load_image(rgb, Preprocess(9, 1, (0.5,), (0.25,))).shape == (1, 9, 9)
    with pytest.raises(VitkitError, match="4 channels"):
        load_image(rgb, Preprocess(9, 4, (0.5,), (0.25,)))


def test_load_image_errors_name_the_file(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    with pytest.raises(VitkitError, match="readme.txt: not an image"):
        load_image(text, Preprocess(8, 1))
    with pytest.raises(VitkitError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png", Preprocess(8, 1))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(_image(tmp_path / "full.png", 9, size=(30, 30)).read_bytes()[:60])
    with pytest.raises(VitkitError, match="trunc.png"):
        load_image(trunc, Preprocess(8, 1))


def test_list_image_files(tmp_path):
    a = _image(tmp_path / "a.png", 1)
    b = _image(tmp_path / "sub" / "b.jpg", 2)
    (tmp_path / "sub" / "c.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert list_image_files(str(a)) == [a]
    assert list_image_files(str(tmp_path)) == [a, b, tmp_path / "sub" / "c.txt"]
    assert list_image_files(str(tmp_path / "**" / "*.jpg")) == [b]
    with pytest.raises(VitkitError, match="matches no files"):
        list_image_files(str(tmp_path / "*.bmp"))
    with pytest.raises(VitkitError, match="no such file or folder"):
        list_image_files(str(tmp_path / "nothing"))


@pytest.mark.parametrize("img_size", [8, 12])
def test_batched_fetch_equals_item_by_item(img_size):
    """DataLoader's whole-batch path (``__getitems__``) gives exactly the per-item tensors."""
    from torch.utils.data import DataLoader

    from vitkit.data.datasets import ArrayDataset, collate
    from vitkit.data.transforms import ClassificationTransform

    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    cfg = DataConfig(name="digits", augment="none")
    ds = ArrayDataset(images, labels, ClassificationTransform(cfg, Preprocess(img_size, 1, (0.4,), (0.2,)), train=True))
    x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate)))
    assert x.shape == (4, 1, img_size, img_size) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.stack([ds[i][0] for i in range(4)]), rtol=0, atol=0)
    assert y.tolist() == labels[:4].tolist() and y.dtype == torch.long


def test_batched_crop_flip_is_a_per_image_crop_of_the_padded_image():
    """Each output is one of the (2p+1)^2 crops of its zero-padded image, flipped or not; draws vary
    per image and repeat under the same seed; RandAugment falls back to item-by-item."""
    from vitkit.data.datasets import ArrayDataset, Batch
    from vitkit.data.transforms import ClassificationTransform, crop_flip_batch

    images = torch.randint(1, 256, (32, 2, 6, 7), dtype=torch.uint8)
    torch.manual_seed(3)
    out = crop_flip_batch(images, pad=1, hflip=True)
    torch.manual_seed(3)
    assert torch.equal(out, crop_flip_batch(images, pad=1, hflip=True))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    seen = set()
    for i in range(len(images)):
        windows = {(t, left): padded[i, :, t:t + 6, left:left + 7] for t in range(3) for left in range(3)}
        crops = {(t, left, f): w.flip(-1) if f else w for (t, left), w in windows.items() for f in (0, 1)}
        match = [k for k, c in crops.items() if torch.equal(c, out[i])]
        assert match, f"image {i} is not a crop/flip of its padded input"
        seen.add(match[0])
    assert len(seen) > 4  # different draws per image, not one shared crop
    cfg = DataConfig(name="digits", augment="randaugment")
    transform = ClassificationTransform(cfg, Preprocess(6, 1, (0.4,), (0.2,)), train=True)
    ds = ArrayDataset(images[:, :1], torch.zeros(32), transform)
    assert not isinstance(ds.__getitems__([0, 1]), Batch)


def _erased_boxes(out: torch.Tensor, images: torch.Tensor) -> list[tuple[int, int] | None]:
    """(height, width) of the one changed rectangle per image, None when nothing changed; asserts
    that the changed pixels fill their bounding box in every channel."""
    boxes = []
    for changed in (out != images):  # (C, H, W) per image
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = changed.any(0).any(1).nonzero()[:, 0], changed.any(0).any(0).nonzero()[:, 0]
        box = changed[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all(), "the erased pixels are not one full rectangle in every channel"
        boxes.append((len(box[0]), len(box[0, 0])))
    return boxes


def test_random_erasing_replaces_one_rectangle_with_noise():
    """Zhong et al.: with probability p one rectangle of 2-33% of the area (aspect 0.3-3.3, sides
    rounded, so up to half a pixel more per side) becomes N(0, 1) noise; p=0 leaves the batch alone."""
    from vitkit.data.transforms import ERASE_AREA, random_erase_batch

    images = torch.full((200, 3, 28, 28), 10.0)  # N(0, 1) noise never lands on 10 exactly in practice
    assert torch.equal(random_erase_batch(images, 0.0), images)
    torch.manual_seed(0)
    out = random_erase_batch(images, 1.0)
    area_max = ERASE_AREA[1] * 28 * 28
    bound = area_max + 0.5 * ((area_max / 0.3) ** 0.5 + (area_max * 0.3) ** 0.5) + 0.25  # (sqrt(Aa)+.5)(sqrt(A/a)+.5)
    boxes = _erased_boxes(out, images)
    assert all(b is not None and 1 <= b[0] * b[1] <= bound for b in boxes)
    noise = out[out != images]
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1  # >= 200 * 16 * 3 samples
    torch.manual_seed(1)
    half = _erased_boxes(random_erase_batch(images, 0.5), images)
    assert 60 < sum(b is not None for b in half) < 140  # Binomial(200, 0.5): 6 standard deviations either side
    torch.manual_seed(1)
    assert _erased_boxes(random_erase_batch(images, 0.5), images) == half


def test_random_erasing_applies_to_training_items_only():
    """Both the batched and the item-by-item path erase training images; evaluation never does;
    segmentation refuses the setting."""
    from vitkit.data.datasets import ArrayDataset, Batch
    from vitkit.data.transforms import ClassificationTransform, SegmentationTransform
    from vitkit.errors import VitkitError

    images = torch.full((16, 1, 8, 8), 255, dtype=torch.uint8)
    pre, cfg = Preprocess(8, 1, (0.5,), (0.25,)), DataConfig(name="digits", augment="none", random_erasing=1.0)
    clean = (1.0 - 0.5) / 0.25
    train = ArrayDataset(images, torch.zeros(16), ClassificationTransform(cfg, pre, train=True))
    batch = train.__getitems__(list(range(16)))
    assert isinstance(batch, Batch)
    assert all(b is not None for b in _erased_boxes(batch[0], torch.full_like(batch[0], clean)))
    assert (train[0][0] != clean).any()
    val = ArrayDataset(images, torch.zeros(16), ClassificationTransform(cfg, pre, train=False))
    assert (val.__getitems__(list(range(16)))[0] == clean).all()
    with pytest.raises(VitkitError, match="random_erasing is for classification"):
        SegmentationTransform(cfg, pre, train=True)
