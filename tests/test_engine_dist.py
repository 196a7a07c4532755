"""Two gloo processes: sharded evaluation equals one process exactly; FSDP2 training resumes
bit-exactly and its sharded checkpoint exports to a plain ``save_pretrained`` dir."""
from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from vitkit import create_model
from vitkit.cli import main
from vitkit.engine import clock, trainer
from vitkit.engine import distributed as D
from vitkit.engine.evaluate import eval_loader, evaluate
from vitkit.engine.logging import RunLogger
from vitkit.engine.run_config import RunConfig, resolve

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int, timeout_s: float | None = None) -> None:
    """Join a 2-process gloo group (kept for all the runs this process makes); ``timeout_s``: a
    collective that waits longer fails instead of hanging. Each worker passes a barrier before it destroys
    the group, so that no rank tears gloo down while its peer may still be finishing the last collective
    (a worker of a full-suite run once aborted at that point: "terminate called without an active exception")."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    torch.distributed.init_process_group("gloo", **timeout)


def _eval_cases():
    """(name, model, data set, task, classes, batch): 37 images at batch 8 (5 batches), 13 masks at
    batch 5 (3 batches): uneven shards, last batches short."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cls = create_model("vit_test", img_size=8, patch_size=2, num_classes=7)
    images, labels = torch.randn(37, 3, 8, 8, generator=g), torch.randint(0, 7, (37,), generator=g)
    torch.manual_seed(0)
    seg = create_model("fpn_test")
    h, w = seg.config.img_size  # (H, W)
    masks = torch.randint(0, seg.num_classes, (13, h, w), generator=g)
    masks[:, :2] = 255  # ignored pixels
    seg_images = torch.randn(13, seg.in_chans, h, w, generator=g)
    return [("classification", cls, TensorDataset(images, labels), "classification", 7, 8),
            ("segmentation", seg, TensorDataset(seg_images, masks), "segmentation", seg.num_classes, 5)]


def _evaluate_all(info: D.DistInfo | None) -> dict:
    out = {}
    for name, model, data, task, k, batch in _eval_cases():
        out[name] = evaluate(model, eval_loader(data, batch, info=info), task, k, info=info)
        if info is not None:  # the same model sharded (FSDP2): ranks step together, results equal
            sharded = D.shard_model(model)
            out[f"{name}_fsdp"] = evaluate(sharded, eval_loader(data, batch, info=info), task, k, info=info,
                                           lockstep=True)
    return out


def _eval_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        result = _evaluate_all(D.setup("cpu"))
        with open(f"{out}.{rank}", "w") as fh:
            json.dump(result, fh)
        torch.distributed.barrier()  # leave together (see _join)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_evaluation_equals_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the workers
    try:
        single = _evaluate_all(None)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_eval_worker, args=(_free_port(), str(tmp_path / "metrics")), nprocs=WORLD)
    assert single["classification"]["n"] == 37 and single["segmentation"]["n_pixels"] > 0
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"metrics.{rank}").read_text())
        for name in ("classification", "segmentation"):
            want = json.loads(json.dumps(single[name]))  # the same float -> JSON round trip
            assert got[name] == want, (rank, name)
            assert got[f"{name}_fsdp"] == want, (rank, name)


FSDP_SETS = {"model.img_size": "8", "model.patch_size": "2", "data.limit_train": "96", "data.limit_val": "37",
             "data.augment": "basic", "batch_size": "16", "eval_batch_size": "8", "epochs": "2",
             "tensorboard": "false", "progress": "false", "threads": "1", "schedule.warmup_steps": "2",
             "optim.lr": "3e-3", "parallel": "fsdp", "device": "cpu"}


def _fsdp_cfg(out_dir) -> RunConfig:
    return resolve(RunConfig(model="vit_test"), {**FSDP_SETS, "out_dir": str(out_dir)})


def _fsdp_worker(rank: int, port: int, root: str) -> None:
    """A full FSDP run, and one stopped in epoch 2 (after 1 step) then resumed."""
    _join(rank, port)
    try:
        trainer.train(_fsdp_cfg(f"{root}/full"))
        original = trainer.train_one_epoch

        def stop_in_epoch_2(run, loader, epoch, start_batch, stop):
            stop.requested = epoch == 1 and start_batch == 0
            assert all(isinstance(b, torch.distributed.fsdp.FSDPModule) for b in D.unwrap(run.model).blocks)
            return original(run, loader, epoch, start_batch, stop)

        trainer.train_one_epoch = stop_in_epoch_2
        try:
            trainer.train(_fsdp_cfg(f"{root}/cut"))
            raise AssertionError("the stop request was ignored")
        except trainer.Interrupted:
            pass
        finally:
            trainer.train_one_epoch = original
        trainer.train(_fsdp_cfg(f"{root}/cut"), resume=True)
        torch.distributed.barrier()  # leave together (see _join)
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_two_processes_resume_exactly_and_export(tmp_path):
    mp.spawn(_fsdp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    full, cut = tmp_path / "full", tmp_path / "cut"
    manifest = json.loads((cut / "checkpoint" / "latest.json").read_text())
    assert manifest["format"] == "sharded" and manifest["world_size"] == WORLD and manifest["global_step"] == 6 * 2
    assert any(name.startswith("dcp/") for name in manifest["files"]) and "rng_rank1.pt" in manifest["files"]
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((full / "metrics.json").read_text()) == json.loads((cut / "metrics.json").read_text())
    exported = tmp_path / "exported"  # one process, no process group
    assert main(["export", str(cut), "--format", "pretrained", "--out", str(exported)]) == 0
    c = load_file(exported / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], c[key]), key
    meta = json.loads((exported / "config.json").read_text())
    assert meta["family"] == "vit" and meta["class_names"][:2] == ["0", "1"] and meta["preprocess"]["img_size"] == 8


def _budget_worker(rank: int, port: int, root: str) -> None:
    """A DDP run with a time budget of 8 s whose clocks disagree: rank 0's advances 1 s per reading,
    rank 1's 0.5 s (a slower process would want 16 steps)."""
    _join(rank, port, timeout_s=60)
    readings = {"n": 0}

    def fake_now() -> float:
        readings["n"] += 1
        return readings["n"] * (1.0 if rank == 0 else 0.5)

    clock.now = fake_now  # a fresh process: nothing to restore
    try:
        sets = {**FSDP_SETS, "parallel": "ddp", "epochs": "3", "schedule.time_budget_s": "8", "out_dir": root}
        trainer.train(resolve(RunConfig(model="vit_test"), sets))
        with open(f"{root}/readings.{rank}", "w") as fh:
            json.dump(readings["n"], fh)
        torch.distributed.barrier()  # leave together (see _join)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_processes_stop_at_the_same_step_of_a_time_budget(tmp_path):
    mp.spawn(_budget_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    readings = [json.loads((tmp_path / f"readings.{rank}").read_text()) for rank in range(WORLD)]
    assert readings[0] == readings[1]  # the same steps (and epoch starts) on both
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 8  # 6 steps an epoch
    assert [(r["epoch"], r["step"]) for r in RunLogger(tmp_path).read_history(99)] == [(1, 6), (2, 8)]


@pytest.mark.parametrize("sets, words", [
    ({"parallel": "fsdp", "ema.enabled": "true"}, "ema.enabled is not supported with parallel=fsdp"),
    ({"parallel": "fsdp", "precision": "fp16"}, "use precision=bf16"),
])
def test_fsdp_refuses_what_it_cannot_do(sets, words):
    with pytest.raises(ValueError, match=words):
        resolve(RunConfig(model="vit_test"), sets)


def test_one_gpu_index_for_many_processes_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use device=cuda"):
        D.setup("cuda:0")
    assert not torch.distributed.is_initialized()


def test_shard_units_are_the_blocks():
    model = create_model("vit_test")
    assert D.shard_units(model) == list(model.blocks)
    vt = create_model("vt_resnet_test")
    units = D.shard_units(vt)
    assert units and all(not isinstance(u, torch.nn.ModuleList) for u in units)
