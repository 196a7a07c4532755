"""Explain: attention capture, rollout against a literal transcription, maps, PNGs, errors."""
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.tools.explain import capture_attention, explain, explain_image, explain_vit
from vitkit.tools.rollout import attention_rollout


def _slow_rollout(attns, fusion):
    """Abnar & Zuidema 2020 written out element by element: A = 0.5 W + 0.5 I; R = A_L..A_1."""
    n_layers, (b, h, n, _) = len(attns), attns[0].shape
    out = torch.zeros(b, n, n, dtype=torch.float64)
    for s in range(b):
        roll = [[float(i == j) for j in range(n)] for i in range(n)]
        for layer in range(n_layers):
            a = [[0.0] * n for _ in range(n)]
            for i in range(n):
                for j in range(n):
                    vals = [float(attns[layer][s, k, i, j]) for k in range(h)]
                    w = {"mean": sum(vals) / h, "max": max(vals), "min": min(vals)}[fusion]
                    a[i][j] = 0.5 * w + 0.5 * (i == j)
                total = sum(a[i])
                a[i] = [v / total for v in a[i]]
            roll = [[sum(a[i][m] * roll[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
        out[s] = torch.tensor(roll, dtype=torch.float64)
    return out


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_literal_transcription(fusion):
    g = torch.Generator().manual_seed(0)
    attns = [torch.randn(2, 3, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    fast = attention_rollout(attns, fusion)
    torch.testing.assert_close(fast.double(), _slow_rollout(attns, fusion), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.sum(-1), torch.ones(2, 5))  # rows stay stochastic


def _image(tmp_path, size=20, mode="RGB"):
    g = torch.Generator().manual_seed(1)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
    path = tmp_path / "img.png"
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.mark.parametrize("name",
                         ["vit_test", "vit_test_avg", "deit_test_distilled", "vit_hybrid_test", "vit_convstem_test"])
def test_vit_maps_shapes_and_capture_keeps_outputs(name):
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, *cfg.img_size)
    with torch.no_grad():
        fused = model(x)
    exp = explain_vit(model, x)
    gh, gw = model.grid
    n = model.num_prefix + gh * gw
    assert exp.attentions.shape == (cfg.depth, 2, cfg.num_heads, n, n)
    assert exp.cls_maps.shape == (cfg.depth, 2, cfg.num_heads, gh, gw)
    assert exp.rollout.shape == (2, gh, gw)
    torch.testing.assert_close(exp.logits, fused, rtol=1e-5, atol=1e-5)  # capture == fused SDPA
    torch.testing.assert_close(exp.attentions.sum(-1), torch.ones(cfg.depth, 2, cfg.num_heads, n))
    assert all(not blk.attn.capture and blk.attn.last_attn is None for blk in model.blocks)


def test_capture_flag_restored_after_error():
    model = vitkit.create_model("vit_test").eval()
    with pytest.raises(RuntimeError):
        with capture_attention(model) as mods:
            assert len(mods) == model.config.depth and all(m.capture for m in mods)
            raise RuntimeError("boom")
    assert not any(blk.attn.capture for blk in model.blocks)


def test_rollout_of_cls_row_and_layer_selection():
    model = vitkit.create_model("vit_test").eval()
    x = torch.randn(1, 3, 16, 16)
    exp = explain(model, x, layers=[-1], fusion="max")
    assert exp.layers == (1,) and exp.attentions.shape[0] == 1
    attns = [blk for blk in explain_vit(model, x).attentions]
    expected = attention_rollout(list(attns), "max")[:, 0, 1:].reshape(1, *model.grid)
    torch.testing.assert_close(exp.rollout, expected)


def test_cli_writes_pngs_for_registry_name(tmp_path, capsys):
    img = _image(tmp_path)
    out = tmp_path / "out"
    assert main(["explain", "vit_test", str(img), "--out", str(out), "--layer", "0", "--fusion", "min"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["attention_layer00.png", "rollout.png"]
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    assert Image.open(out / "rollout.png").size[0] > 100
    assert "wrote" in capsys.readouterr().out


def test_run_dir_uses_saved_preprocess(tmp_path):
    model = vitkit.create_model("vit_test", in_chans=1)
    run = tmp_path / "run"
    model.save_pretrained(run / "model", extra={"preprocess": {"img_size": 16, "in_chans": 1,
                                                               "mean": [0.2], "std": [0.3]},
                                                "class_names": list("abcde")})
    exp, paths = explain_image(run, _image(tmp_path, 24, "L"), tmp_path / "o")
    assert exp.rollout.shape == (1, 4, 4) and len(paths) == 1 + model.config.depth


@pytest.mark.parametrize("args, match", [
    (["vit_test", "missing.png"], "no such file"),
    (["no_such_model_test", "IMG"], "unknown model"),
    (["vit_test", "IMG", "--layer", "7"], "out of range"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, match):
    img = str(_image(tmp_path))
    args = [img if a == "IMG" else a for a in args]
    assert main(["explain", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_unknown_fusion_raises():
    with pytest.raises(VitkitError, match="head fusion"):
        attention_rollout([torch.rand(1, 2, 3, 3)], "median")


@pytest.mark.parametrize("name", ["vt_resnet_test", "vt_fpn_test"])
def test_vt_tokenizer_and_projector_maps(tmp_path, name):
    from vitkit.tools.explain_vt import explain_vt, save_vt_explanation

    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, model.config.in_chans, *model.config.img_size)
    with torch.no_grad():
        fused = model(x)
    exp = explain_vt(model, x)
    torch.testing.assert_close(exp.logits, fused)
    assert len(exp.names) >= 1 and len(exp.tokenizer) == len(exp.names)
    for tok, proj in zip(exp.tokenizer, exp.projector, strict=True):
        b, n_tokens, gh, gw = tok.shape
        assert b == 2 and gh * gw >= 1
        torch.testing.assert_close(tok.sum((-2, -1)), torch.ones(2, n_tokens))  # softmax over HW
        if proj is not None:
            torch.testing.assert_close(proj.sum(1), torch.ones(2, gh, gw))  # softmax over L
    paths = save_vt_explanation(exp, torch.rand(3, *model.config.img_size), tmp_path)
    assert paths and all(p.stat().st_size > 1000 for p in paths)


def test_vit_seg_explains_its_backbone():
    model = vitkit.create_model("vit_seg_test").eval()
    x = torch.randn(1, 3, 16, 16)
    exp = explain(model, x)
    assert exp.logits.shape[-2:] == (16, 16) and exp.rollout.shape == (1, 4, 4)


def test_model_without_attention_is_error(tmp_path):
    with pytest.raises(VitkitError, match="no attention"):
        explain(vitkit.create_model("resnet_test").eval(), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("k", [1, 7, 8, 9, 16])
def test_overlay_grid_draws_one_panel_per_map_when_the_grid_is_not_full(tmp_path, k):
    """16 visual tokens give 17 panels on a 3 x 8 grid: the last row is part empty."""
    from vitkit.tools.overlay import save_overlay_grid

    titles = [f"t{i}" for i in range(k)]
    path = save_overlay_grid(torch.rand(1, 12, 12), torch.rand(k, 3, 3), titles, tmp_path / "g.png")
    width, height = Image.open(path).size
    rows = -(-(k + 1) // min(k + 1, 8))
    assert height > width * (rows - 0.5) / min(k + 1, 8) * 0.9  # a grid of `rows` rows was drawn
