"""``vitkit flops``: FLOP counts against hand counts, part selection, CLI errors."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.tools.flops import count_flops, default_part, flops_of, measure


class _Tiny(nn.Module):
    """conv 1x1 (C_in -> 6) as the 'neck', then a linear head: FLOPs are easy to count by hand."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(in_chans=2)
        self.neck = nn.Conv2d(2, 6, 1, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.neck(x).mean(dim=(2, 3)))


def test_count_flops_matches_hand_count():
    report = count_flops(_Tiny(), (4, 5))
    neck_macs = 4 * 5 * 2 * 6
    assert report.part == "neck"
    assert report.part_flops == 2 * neck_macs and report.part_macs == neck_macs
    assert report.flops == 2 * (neck_macs + 6 * 3)
    assert report.params == 2 * 6 + 6 * 3 + 3 and report.part_params == 12


def test_flop_counter_on_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert flops_of(lambda: a @ b).total == 2 * 8 * 16 * 4


def test_default_part_per_family():
    import vitkit

    assert default_part(vitkit.create_model("vt_resnet_test")) == "vt"
    assert default_part(vitkit.create_model("resnet_test")) == "trunk.layer4"
    assert default_part(vitkit.create_model("fpn_test")) == "neck"


def test_vt_part_and_resnet_stage_are_counted():
    vt = measure("vt_resnet_test", 32)
    assert 0 < vt.part_flops < vt.flops
    base = measure("resnet_test", 32)
    assert 0 < base.part_flops < base.flops


def test_vt_fpn_neck_is_cheaper_than_fpn_neck():
    fpn, vt = measure("fpn_test", 64), measure("vt_fpn_test", 64)
    assert vt.part_flops < fpn.part_flops


def test_cli_prints_flops_and_macs(capsys):
    assert main(["flops", "vt_resnet_test", "--img-size", "32", "--set", "vt.num_tokens=2"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs" in out and "GMACs" in out and "vt " in out


@pytest.mark.parametrize("argv,match", [
    (["flops", "no_such_model"], "unknown model"),
    (["flops", "resnet_test", "--img-size", "0"], "img-size"),
    (["flops", "resnet_test", "--img-size", "8"], "too small"),
    (["flops", "resnet_test", "--part", "nope"], "no submodule"),
])
def test_cli_errors_are_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_count_flops_rejects_bad_size():
    with pytest.raises(VitkitError, match="positive"):
        count_flops(_Tiny(), 0)
    assert torch.is_grad_enabled()
