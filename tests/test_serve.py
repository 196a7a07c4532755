"""What `vitkit serve` computes (no web server): predictions, overlays, token maps, masks, and
every bad upload refused with one line. The page itself: tests/test_serve_browser.py."""
import resource

import pytest
import torch

import vitkit
from image_cases import BAD_UPLOADS, ODD_MODES, encoded
from vitkit.cli import build_parser
from vitkit.errors import VitkitError
from vitkit.tools.explain import explain_vit, image_batch
from vitkit.tools.explain_vt import explain_vt
from vitkit.tools.overlay import blend_heatmap
from vitkit.tools.serve import Predictor


def _predictor(name, class_names=None):
    model = vitkit.create_model(name).eval()
    model.class_names = class_names
    return Predictor(model, top_k=3, name=name)


def test_classifier_top_k_and_rollout_come_from_one_forward_pass():
    pred = _predictor("vit_test", class_names=list("abcde"))
    image = encoded("RGB", (24, 24))
    result = pred(image)
    x = image_batch([image], pred.pre)
    with torch.no_grad():
        probs = pred.model(x)[0].softmax(-1)
    top = probs.topk(3)
    assert [label for label, _ in result.top] == ["abcde"[i] for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in result.top]), top.values, rtol=1e-5, atol=1e-6)
    rollout = explain_vit(pred.model, x).rollout[0]
    assert (result.overlay == blend_heatmap(pred.pre.denormalize(x)[0], rollout)).all()
    assert result.overlay.shape == (256, 256, 3) and result.token_maps == [] and result.legend == []
    assert result.to_json()["top"][0] == {"label": result.top[0][0], "prob": round(result.top[0][1], 6)}


def test_vt_model_shows_one_map_per_token_per_module():
    pred = _predictor("vt_resnet_test")
    result = pred(encoded("RGB", (32, 32)))
    exp = explain_vt(pred.model, image_batch([encoded("RGB", (32, 32))], pred.pre))
    assert len(result.token_maps) == sum(t.shape[1] for t in exp.tokenizer) > 0
    assert result.token_maps[0][1] == f"{exp.names[0]} token 0" and result.token_maps[0][0].shape[-1] == 3
    assert result.overlay is None and pred.task == "classification"


@pytest.mark.parametrize("name", ["fpn_test", "vit_seg_test"])
def test_segmentation_mask_legend_and_pixel_shares(name):
    pred = _predictor(name)
    image = encoded("RGB", (pred.pre.img_size[1], pred.pre.img_size[0]))
    result = pred(image)
    with torch.no_grad():
        mask = pred.model(image_batch([image], pred.pre))[0].argmax(0)
    counts = torch.bincount(mask.flatten(), minlength=pred.model.num_classes)
    assert pred.task == "segmentation" and not pred.shows_rollout
    assert [name for name, _, _ in result.legend] == [pred.class_names[i] for i in counts.argsort(descending=True)
                                                      if counts[i] > 0]
    assert abs(sum(share for _, _, share in result.legend) - 1) < 1e-6
    assert len({colour for _, colour, _ in result.legend}) == len(result.legend)  # one colour per class
    assert result.overlay.shape[:2] == (256, 256)


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_uploads_are_one_line_errors(name):
    data, words = BAD_UPLOADS[name]
    pred = _predictor("vit_test")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(VitkitError) as info:
        pred(data)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # a bomb is never decoded


@pytest.mark.parametrize("name", list(ODD_MODES))
@pytest.mark.parametrize("model", ["vit_test", "vt_resnet_test_small"])
def test_odd_modes_are_converted_to_the_models_channels(name, model):
    pred = _predictor(model)
    result = pred(ODD_MODES[name])
    assert len(result.top) == 3 and all(0 <= p <= 1 for _, p in result.top)


def test_serve_binds_localhost_by_default():
    args = build_parser(("serve",)).parse_args(["serve", "vit_test"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
