"""The backbone contract timm users expect, checked on every ``*_test`` preset (registry-driven):
feature_info, forward_intermediates, hidden_states, pruning, features_only, gradient
checkpointing, torch.fx, torch.compile."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.resnet import BasicBlock, Bottleneck

import vitkit
from vitkit.errors import VitkitError
from vitkit.layers import DropPath
from vitkit.models.features import FeatureExtractor
from vitkit.registry import get_entry

TEST_MODELS = vitkit.list_models("*test*")


def _plain_per_family(names):
    """Each family's plain preset (the shortest name: vit_test, resnet_test, vt_resnet_test, ...)."""
    best = {}
    for name in names:
        family = get_entry(name).cls.family
        best[family] = min(best.get(family, (len(name), name)), (len(name), name))
    return sorted(name for _, name in best.values())


FAMILY_MODELS = _plain_per_family(TEST_MODELS)  # dynamo tracing costs seconds per model


def _build(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return vitkit.create_model(name, **kw)


def _x(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.config.in_chans, *model.config.img_size)


def _dense(name: str) -> bool:
    return "seg" in get_entry(name).tags


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _as_map(out, like: torch.Tensor) -> torch.Tensor:
    """A hooked module's output as the NCHW map ``like``: a (map, tokens) pair gives its map,
    tokens (B, P + N, D) their last N (the patches) laid out on the grid."""
    out = out[0] if isinstance(out, tuple) else out
    if out.ndim == 3:
        h, w = like.shape[-2:]
        out = out[:, -h * w:].transpose(1, 2).reshape(like.shape)
    return out


@pytest.mark.parametrize("name", TEST_MODELS)
def test_feature_info_names_the_module_of_each_intermediate(name):
    model = _build(name).eval()
    info = model.feature_info
    assert info.channels() == [f.channels for f in info] and info.reduction() == [f.reduction for f in info]
    assert info.module_name(0) == info[0].module and info.channels([-1]) == [info[-1].channels]
    seen = {}
    hooks = [model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: seen.setdefault(m, o))
             for m in info.module_name()]
    with torch.no_grad():
        maps = model.forward_intermediates(_x(model), intermediates_only=True)
    for h in hooks:
        h.remove()
    assert len(maps) == len(info)
    for fmap, f in zip(maps, info, strict=True):
        assert fmap.shape[1] == f.channels
        _same(_as_map(seen[f.module], fmap), fmap)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_intermediates_follows_timm(name):
    model = _build(name).eval()
    x, n = _x(model, batch=3), len(model.feature_info)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)  # indices=None: every layer
        assert len(every) == n
        for fmap, ref in zip(model.forward_intermediates(x, intermediates_only=True), every, strict=True):
            _same(fmap, ref)
        (first,) = model.forward_intermediates(x, [0], stop_early=True, intermediates_only=True)
        _same(first, every[0])
        last_two = model.forward_intermediates(x, 2, intermediates_only=True)  # an int k: the last k
        assert len(last_two) == min(2, n)
        _same(last_two[-1], every[-1])
        (last,) = model.forward_intermediates(x, [-1], intermediates_only=True)
        _same(last, every[-1])
        if _dense(name):  # a dense model's final feature is its backbone's
            bb = model.backbone
            _same(final, bb.forward_features(x) if hasattr(bb, "forward_features") else bb(x))
        else:  # the final feature is what forward_head reads (up to the rounding of the last block's rows)
            out, ref = model(x), model.forward_head(final)
            fan_in = max(m.weight[0].numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
            tol = fan_in * torch.finfo(torch.float32).eps * ref.abs().max().item()
            torch.testing.assert_close(out, ref, rtol=0, atol=tol)
    for bad in ([n], [-n - 1], n + 1, 0, []):
        with pytest.raises(VitkitError, match="indices|index"):
            model.forward_intermediates(x, bad)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_output_formats(name):
    model = _build(name).eval()
    x = _x(model)
    with pytest.raises(VitkitError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")
    maps = model.forward_intermediates(x, intermediates_only=True)
    if not model.token_layers:
        with pytest.raises(VitkitError, match="NCHW"):
            model.forward_intermediates(x, output_fmt="NLC")
        return
    vit = getattr(model, "backbone", model)
    tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
    pairs = model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
    normed = model.forward_intermediates(x, output_fmt="NLC", norm=True, intermediates_only=True)
    for fmap, tok, pair, tok_n in zip(maps, tokens, pairs, normed, strict=True):
        _same(tok, fmap.flatten(2).transpose(1, 2))  # (B, N, D) = the map's pixels in row-major order
        assert isinstance(pair, tuple) == (vit.num_prefix > 0)
        if vit.num_prefix:
            _same(pair[0], fmap)
            assert pair[1].shape == (2, vit.num_prefix, fmap.shape[1])
        torch.testing.assert_close(tok_n, vit.norm(torch.cat([pair[1], tok], 1) if vit.num_prefix else tok)[
            :, vit.num_prefix:])


@pytest.mark.parametrize("name", TEST_MODELS)
def test_hidden_states_start_with_the_embedding(name):
    model = _build(name).eval()
    x = _x(model)
    first = model.get_submodule(model.feature_info.module_name(0))
    seen = []
    hook = first.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        states = model.hidden_states(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    hook.remove()
    _same(states[0], seen[0])  # the embedding (stem) output is what the first layer reads
    for i, (fmap, info) in enumerate(zip(maps, model.feature_info, strict=True)):
        if info.module != "vt":  # a block or a stage (not VT-ResNet's VT map): its output is state i + 1
            _same(_as_map(states[i + 1], fmap), fmap)
    if hasattr(model, "vt"):  # VT-ResNet: the stages, then each VT module's tokens (B, L, C_T)
        assert len(states) == 4 + len(model.vt)
        _same(states[-1], model.forward_features(x))
    else:
        assert len(states) == len(model.feature_info) + 1


@pytest.mark.parametrize("name", TEST_MODELS)
def test_prune_intermediate_layers(name):
    model = _build(name).eval()
    x = _x(model)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        ref = model(x)
        same = copy.deepcopy(model)
        assert same.prune_intermediate_layers(prune_head=False) == list(range(len(full)))
        _same(same(x), ref)  # keeping every layer and the head changes nothing
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([0]) == [0]
        assert len(pruned.feature_info) == 1
        (first,) = pruned.forward_intermediates(x, [0], intermediates_only=True)
    _same(first, full[0])
    n_full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < n_full
    if len(full) > 1 and not model.token_layers or _dense(name):
        with pytest.raises(VitkitError, match="prune_head=True"):
            copy.deepcopy(model).prune_intermediate_layers([0], prune_head=False)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_features_only(name):
    model = _build(name).eval()
    x = _x(model)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
    extractor = _build(name, features_only=True).eval()
    with torch.no_grad():
        maps = extractor(x)
    assert isinstance(maps, list) and len(maps) == len(full) == len(extractor.feature_info)
    h, w = model.config.img_size
    for fmap, ref, info in zip(maps, full, extractor.feature_info, strict=True):
        _same(fmap, ref)
        assert fmap.shape == (2, info.channels, -(-h // info.reduction), -(-w // info.reduction))
        extractor.get_submodule(info.module)
    one = _build(name, features_only=True, out_indices=[0]).eval()
    with torch.no_grad():
        (fmap,) = one(x)
    _same(fmap, full[0])
    assert sum(p.numel() for p in one.parameters()) < sum(p.numel() for p in extractor.parameters())
    assert one.feature_info.module_name() == ["model." + model.feature_info.module_name(0)]


def test_features_only_loads_the_weights_before_pruning(tmp_path):
    model = _build("vit_test").eval()
    model.save_pretrained(tmp_path / "m")
    x = _x(model)
    extractor = vitkit.create_model(str(tmp_path / "m"), features_only=True, out_indices=(0,)).eval()
    normed = FeatureExtractor(_build("vit_test", seed=1, pretrained=tmp_path / "m"), [-1], norm=True,
                              output_fmt="NLC").eval()
    with torch.no_grad():
        _same(extractor(x)[0], model.forward_intermediates(x, [0], intermediates_only=True)[0])
        _same(normed(x)[0], model.forward_features(x)[:, 1:])  # the last block's normalised patch tokens
    assert len(extractor.model.blocks) == 1 and isinstance(extractor.model.head, nn.Identity)
    extractor.set_grad_checkpointing(True)  # a backbone trained through the extractor
    assert extractor.model.grad_checkpointing
    with pytest.raises(VitkitError, match="features_only=True"):
        vitkit.create_model("vit_test", out_indices=(0,))


def _checkpointed_modules(model) -> list[str]:
    """The convolutions and linear layers inside the feature_info layers (what is recomputed)."""
    roots = tuple(f"{m}." for m in model.feature_info.module_name())
    return [n for n, m in model.named_modules() if n.startswith(roots) and isinstance(m, (nn.Conv2d, nn.Linear))]


def _train_step(model, x, counted):
    calls = dict.fromkeys(counted, 0)
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda mod, a, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in counted]
    torch.manual_seed(1)
    out = model(x)
    sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()
    for h in hooks:
        h.remove()
    return calls


@pytest.mark.parametrize("name", TEST_MODELS)
def test_grad_checkpointing_recomputes_with_identical_gradients(name):
    plain, ckpt = _build(name).train(), _build(name).train()
    ckpt.set_grad_checkpointing(True)
    x = _x(plain)
    counted = _checkpointed_modules(plain)
    assert counted
    assert set(_train_step(plain, x, counted).values()) == {1}
    assert set(_train_step(ckpt, x, counted).values()) == {2}, "every checkpointed layer runs again in backward"
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=n)
    for (n, b), c in zip(plain.named_buffers(), ckpt.buffers(), strict=True):  # BatchNorm statistics once
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_torch_fx_traces_with_input_checks(name):
    model = _build(name).eval()
    x = _x(model)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        _same(traced(x), model(x))
    wrong = torch.randn(1, model.config.in_chans + 1, *x.shape[-2:])
    with pytest.raises(VitkitError, match="channel"):
        traced(wrong)
    first = model.feature_info.module_name(0)
    extractor = create_feature_extractor(model, return_nodes={first: "first"})
    with torch.no_grad():
        fmap = model.forward_intermediates(x, [0], intermediates_only=True)[0]
        _same(_as_map(extractor(x)["first"], fmap), fmap)


def test_one_compiled_model_per_family():
    assert {get_entry(n).cls.family for n in FAMILY_MODELS} == {get_entry(n).cls.family for n in TEST_MODELS}


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_torch_compile_fullgraph(name):
    model = _build(name).eval()
    x = _x(model)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # one graph: no break anywhere
    with torch.no_grad():
        _same(compiled(x), model(x))


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_torch_export(name):
    model = _build(name).eval()
    x = _x(model)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        _same(program.module()(x), model(x))


def _drop_path_key(cfg) -> str:
    """Where a config keeps its stochastic-depth rate: at the top, or in its ``backbone`` config."""
    return "drop_path_rate" if hasattr(cfg, "drop_path_rate") else "backbone.drop_path_rate"


def _drop_path_rates(model) -> list[float]:
    """The DropPath probabilities inside the feature_info layers, in module order."""
    roots = tuple(f"{m}." for m in model.feature_info.module_name())
    return [m.p for n, m in model.named_modules() if n.startswith(roots) and isinstance(m, DropPath)]


@pytest.mark.parametrize("name", TEST_MODELS)
def test_drop_path_rate_ramps_linearly_and_acts_only_in_training(name):
    key = _drop_path_key(vitkit.get_config(name))
    plain, dropped = _build(name), _build(name, **{key: 0.9})
    rates = _drop_path_rates(dropped)
    assert rates[0] == 0 and rates == sorted(rates)
    vt = getattr(dropped, "vt", None)  # a VT module without transformer and projector has no residual branch
    if vt is None or vt[-1].transformer is not None or vt[-1].projector is not None:
        assert rates[-1] == pytest.approx(0.9)  # the deepest residual unit gets the full rate
    steps = torch.diff(torch.tensor(sorted(set(rates)), dtype=torch.float64))
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))  # a linear ramp
    assert set(_drop_path_rates(plain)) == {0.0}
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    x = _x(plain)
    with torch.no_grad():
        _same(dropped.eval()(x), plain.eval()(x))  # same weights; no dropping at eval
        torch.manual_seed(0)
        a = plain.train()(x)
        torch.manual_seed(0)
        b = dropped.train()(x)
    a, b = (o[0] if isinstance(o, tuple) else o for o in (a, b))
    assert not torch.equal(a, b), "with drop_path_rate=0.9 some residual branches are dropped in training"


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_blocks_without_drop_path_are_torchvisions_bit_for_bit(depth):
    model = _build(f"resnet{depth}" if depth == 50 else "resnet_test", base_width=8).train()
    x = torch.randn(2, 3, 32, 32)
    stem = model.trunk.stem(x)
    for block in model.trunk.layer1:
        parent = next((c for c in type(block).__mro__ if c in (BasicBlock, Bottleneck)), None)  # torchvision's
        assert parent in (BasicBlock, Bottleneck)
        torch.manual_seed(0)
        ours = block(stem)
        torch.manual_seed(0)
        _same(ours, parent.forward(block, stem))
        stem = ours
