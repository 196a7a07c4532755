"""The ViT paper's Fig. 7 numbers against literal (loop-by-loop) computations; the CLI figures."""
import math

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.tools.explain import explain_vit
from vitkit.tools.figures import (
    attention_distance,
    filter_mosaic,
    mean_attention_distance,
    patch_embedding_components,
    position_embedding_similarity,
    similarity_mosaic,
)


def _trained_like(name: str, seed: int = 0):
    """A test preset with every parameter redrawn (so no embedding is left at its zero init)."""
    model = vitkit.create_model(name).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _slow_components(weight: torch.Tensor):
    """PCA written out: mean filter, covariance by loops, then its eigenvectors, largest first."""
    d, f = weight.shape[0], weight[0].numel()
    rows = [[float(v) for v in weight[i].flatten()] for i in range(d)]
    mean = [sum(r[j] for r in rows) / d for j in range(f)]
    cov = torch.zeros(f, f, dtype=torch.float64)
    for a in range(f):
        for b in range(f):
            cov[a, b] = sum((r[a] - mean[a]) * (r[b] - mean[b]) for r in rows)
    values, vectors = torch.linalg.eigh(cov)
    return values.flip(0), vectors.flip(1).T  # (f,), (f, f): row i = component i


def test_filter_components_match_literal_pca():
    model = _trained_like("vit_test")
    comps, var = patch_embedding_components(model, k=6)
    weight = model.patch_embed.proj.weight.detach().double()  # (D, C, p, p)
    values, vectors = _slow_components(weight)
    assert comps.shape == (6, *weight.shape[1:])
    torch.testing.assert_close(var, values[:6] / values.sum(), rtol=1e-9, atol=1e-12)
    for i in range(6):
        fast, slow = comps[i].flatten(), vectors[i]
        slow = slow * torch.sign(slow[fast.abs().argmax()]) * torch.sign(fast[fast.abs().argmax()])
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-8)
        assert float(fast[fast.abs().argmax()]) > 0  # the sign convention: largest entry positive
    mosaic, p = filter_mosaic(comps, cols=4), weight.shape[-1]
    assert mosaic.shape == (2 * (p + 1) - 1, 4 * (p + 1) - 1, weight.shape[1])
    tile = comps[5] - comps[5].min()
    torch.testing.assert_close(mosaic[p + 1:, p + 1:2 * p + 1], (tile / tile.max()).permute(1, 2, 0))
    assert (mosaic[p] == 1).all()  # white separator line


def test_filters_need_a_linear_patch_embedding():
    with pytest.raises(VitkitError, match="linear patch embedding"):
        patch_embedding_components(vitkit.create_model("vit_convstem_test"))
    with pytest.raises(VitkitError, match="needs a ViT"):
        patch_embedding_components(vitkit.create_model("vt_resnet_test"))


@pytest.mark.parametrize("name", ["vit_test", "deit_test_distilled", "vit_test_avg"])
def test_pos_embed_similarity_matches_literal_cosine(name):
    model = _trained_like(name)
    sim = position_embedding_similarity(model)
    gh, gw = model.grid
    pos = model.pos_embed.detach()[0].double()
    p = model.num_prefix  # class / distillation tokens come first and are left out
    assert sim.shape == (gh, gw, gh, gw)
    for i in range(gh):
        for j in range(gw):
            a = pos[p + i * gw + j]
            for u in range(gh):
                for v in range(gw):
                    b = pos[p + u * gw + v]
                    cos = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
                    assert abs(float(sim[i, j, u, v]) - cos) < 1e-12
    mosaic = similarity_mosaic(sim)
    assert mosaic.shape == (gh * (gh + 1) - 1, gw * (gw + 1) - 1)
    assert torch.equal(mosaic[:gh, :gw], sim[0, 0]) and torch.isnan(mosaic[gh]).all()


def _slow_distance(attns, num_prefix, grid, patch):
    """Per layer and head: mean over images and query patches of sum_k a_qk |c_q - c_k|
    (patch keys only, rows renormalised)."""
    n_layers, b, heads = attns.shape[:3]
    gh, gw = grid
    out = torch.zeros(n_layers, heads, dtype=torch.float64)
    for layer in range(n_layers):
        for h in range(heads):
            total = 0.0
            for s in range(b):
                for q in range(gh * gw):
                    row = [float(attns[layer, s, h, num_prefix + q, num_prefix + k]) for k in range(gh * gw)]
                    norm = sum(row)
                    qy, qx = (q // gw + 0.5) * patch[0], (q % gw + 0.5) * patch[1]
                    for k, w in enumerate(row):
                        ky, kx = (k // gw + 0.5) * patch[0], (k % gw + 0.5) * patch[1]
                        total += w / norm * math.hypot(qy - ky, qx - kx)
            out[layer, h] = total / (b * gh * gw)
    return out


@pytest.mark.parametrize("name", ["vit_test", "deit_test_distilled", "vit_test_avg"])
def test_attention_distance_matches_literal(name):
    model = _trained_like(name)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    exp = explain_vit(model, x)
    fast = attention_distance(exp.attentions, exp.num_prefix, exp.grid, (4, 4))
    slow = _slow_distance(exp.attentions, exp.num_prefix, exp.grid, (4, 4))
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
    # the batched helper gives the same mean whatever the batch split
    torch.testing.assert_close(mean_attention_distance(model, x, batch_size=2), slow, rtol=1e-6, atol=1e-6)
    assert ((fast > 0) & (fast < math.hypot(16, 16))).all()


def test_attention_distance_of_uniform_and_local_attention():
    """Uniform attention over a 2x2 grid of 4-px patches: from each corner, (0 + 4 + 4 + 4 sqrt 2) / 4."""
    uniform = torch.full((1, 1, 1, 4, 4), 0.25)
    expected = (8 + 4 * math.sqrt(2)) / 4
    assert abs(float(attention_distance(uniform, 0, (2, 2), (4, 4))) - expected) < 1e-12
    local = torch.eye(4).view(1, 1, 1, 4, 4)
    assert float(attention_distance(local, 0, (2, 2), (4, 4))) == 0.0


def _digit_png(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    Image.fromarray((torch.rand(16, 16, generator=g) * 255).byte().numpy(), "L").save(path)
    return path


def test_cli_figures_write_pngs(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        _digit_png(images / f"{i}.png", i)
    out = tmp_path / "fig"
    assert main(["explain", "vit_test", str(images), "--figure", "filters", "pos-embed", "attention-distance",
                 "rollout", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("filters", "pos_embed", "attention_distance", "rollout"):
        assert f"{out / name}.png" in printed and Image.open(out / f"{name}.png").size[0] > 200
    assert main(["explain", "vt_resnet_test", str(images / "0.png"), "--figure", "tokens", "--out", str(out)]) == 0
    assert "tokenizer_" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["vit_test", "--figure", "rollout"], "needs at least one image"),
    (["vit_test", "--figure", "nope"], "unknown figure"),
    (["vit_convstem_test", "--figure", "filters"], "linear patch embedding"),
    (["vit_test", "IMG", "--figure", "tokens"], "needs a VT model"),
    (["vt_resnet_test", "IMG", "--figure", "tokens", "pos-embed"], "needs a ViT"),
    (["vit_test"], "pass an image"),
])
def test_cli_figure_errors_are_one_line(tmp_path, capsys, argv, words):
    img = str(_digit_png(tmp_path / "x.png"))
    argv = [img if a == "IMG" else a for a in argv]
    assert main(["explain", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before anything is written
