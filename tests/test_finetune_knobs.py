"""Fine-tuning knobs: per-model no-weight-decay sets, layer ids + layer-wise lr decay,
linear probe and head warm-up (with an exact resume across the warm-up boundary)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from test_engine import TINY, tiny_cfg
from vitkit import VitkitError, create_model, list_models
from vitkit.engine import loop, trainer
from vitkit.engine.finetune import head_param_names
from vitkit.engine.optim import build_optimizer, param_groups
from vitkit.engine.run_config import RunConfig, resolve

TOKENS = ("cls_token", "dist_token", "pos_embed")


def _one_test_preset_per_family() -> list[str]:
    seen = {}
    for name in list_models():
        if "test" in name:
            seen.setdefault(create_model(name).family, name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", _one_test_preset_per_family())
def test_no_weight_decay_is_declared_per_family(name):
    """Biases, norm scales, tokens and E_pos are in the model's set; conv/linear weights are not;
    the optimizer's zero-decay group holds exactly that set."""
    model = create_model(name)
    skip = model.no_weight_decay()
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            expected = pname == "bias" or isinstance(module, norms) or pname in TOKENS or p.ndim <= 1
            assert (full in skip) == expected, full
    assert all(n in skip for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in TOKENS)
    groups = param_groups(model, 0.05)
    ids = {id(p): n for n, p in model.named_parameters()}
    zero = {ids[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert zero == skip
    assert sum(len(g["params"]) for g in groups) == len(ids)


@pytest.mark.parametrize("name", _one_test_preset_per_family())
def test_layer_ids_run_from_embedding_to_head(name):
    """Every parameter has a depth in 0..L; the stem/embedding is 0, the classifier is L, and
    the ids do not decrease along the forward order of the top-level modules."""
    model = create_model(name)
    ids = model.layer_ids()
    num_layers = max(ids.values())
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert min(ids.values()) == 0 and num_layers >= 2
    heads = [n for n in ids if n.startswith(tuple(f"{p}." for p in model.classifier))]
    assert heads and all(ids[n] == num_layers for n in heads)
    first = next(iter(ids))  # the first registered parameter belongs to the input stem
    assert ids[first] == 0, first


def test_vit_layer_ids_and_decayed_lr():
    """ViT: embeddings 0, block i -> i + 1, final norm and head -> depth + 1; lr = lr0 * d^(L - id)."""
    model = create_model("deit_test_distilled")
    depth = len(model.blocks)
    ids = model.layer_ids()
    assert ids["pos_embed"] == ids["cls_token"] == ids["dist_token"] == ids["patch_embed.proj.weight"] == 0
    for i in range(depth):
        assert ids[f"blocks.{i}.attn.qkv.weight"] == i + 1
    assert ids["norm.weight"] == ids["head.weight"] == ids["head_dist.bias"] == depth + 1
    lr, decay = 1e-3, 0.6
    opt = build_optimizer(model, resolve(RunConfig(), {"optim.lr": lr, "optim.layer_decay": decay}).optim)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            expected = lr * decay ** (depth + 1 - ids[names[id(p)]])
            assert group["lr"] == pytest.approx(expected, rel=1e-12), names[id(p)]
            assert group["weight_decay"] == (0.0 if names[id(p)] in model.no_weight_decay() else 0.05)


def test_layer_decay_off_keeps_two_groups_and_range_checked():
    model = create_model("vit_test")
    groups = build_optimizer(model, RunConfig().optim).param_groups
    assert len(groups) == 2 and all(g["lr"] == RunConfig().optim.lr for g in groups)
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(VitkitError, match="layer_decay"):
            resolve(RunConfig(), {"optim.layer_decay": bad})


def _keep_initial_state(monkeypatch) -> dict:
    seen = {}
    original = trainer.prepare

    def prepare(cfg, run_dir, info):
        run = original(cfg, run_dir, info)
        seen["state"] = copy.deepcopy(run.model.state_dict())
        return run

    monkeypatch.setattr(trainer, "prepare", prepare)
    return seen


def test_linear_probe_trains_the_head_alone_and_keeps_bn_statistics(tmp_path, monkeypatch):
    """ResNet (BatchNorm): after a linear-probe run every non-head tensor, running statistics
    included, is bit-identical to the initial one; the head moved."""
    seen = _keep_initial_state(monkeypatch)
    sets = {**{k: v for k, v in TINY.items() if not k.startswith("model.")}, "epochs": "1",
            "finetune.mode": "linear", "out_dir": str(tmp_path / "run")}
    trainer.train(resolve(RunConfig(model="resnet_test_small"), sets))
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert any(k.endswith("running_mean") for k in final)
    for key, value in seen["state"].items():
        if key.startswith("fc."):
            assert not torch.equal(final[key], value), key
        else:
            assert torch.equal(final[key], value), key


def test_head_warmup_freezes_backbone_then_trains_all_and_resumes_exactly(tmp_path, monkeypatch):
    """Epoch 1 trains the head alone, epoch 2 everything; a run interrupted inside the warm-up
    epoch and resumed across the boundary ends bit-identical to the uninterrupted one."""
    seen = _keep_initial_state(monkeypatch)
    warm = {"finetune__mode": "head-warmup", "finetune__head_warmup_epochs": 1}
    one = tiny_cfg(tmp_path / "one", epochs=1, **warm)
    trainer.train(one)
    after_warmup = load_file(tmp_path / "one" / "run" / "model" / "model.safetensors")
    for key, value in seen["state"].items():
        assert torch.equal(after_warmup[key], value) == (not key.startswith("head.")), key
    full = tiny_cfg(tmp_path / "a", **warm)
    trainer.train(full)
    a = load_file(tmp_path / "a" / "run" / "model" / "model.safetensors")
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], seen["state"]["blocks.0.attn.qkv.weight"])

    original = loop.train_one_epoch

    def interrupt_in_warmup(run, loader, epoch, start_batch, stop):
        stop.requested = epoch == 0 and start_batch == 0
        return original(run, loader, epoch, start_batch, stop)

    cut = tiny_cfg(tmp_path / "b", **warm)
    monkeypatch.setattr(trainer, "train_one_epoch", interrupt_in_warmup)
    with pytest.raises(trainer.Interrupted):
        trainer.train(cut)
    assert json.loads((tmp_path / "b" / "run" / "checkpoint" / "latest.json").read_text())["epoch"] == 0
    monkeypatch.setattr(trainer, "train_one_epoch", original)
    trainer.train(cut, resume=True)
    b = load_file(tmp_path / "b" / "run" / "model" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_head_only_needs_a_head():
    assert head_param_names(create_model("vit_test")) == {"head.weight", "head.bias"}
    with pytest.raises(VitkitError, match="finetune.mode=full"):  # a module that declares no classifier
        head_param_names(torch.nn.Linear(2, 2))
