"""Export: ONNX (onnxruntime) and torch.export match eager PyTorch for every registered family."""
import pytest
import torch
from PIL import Image
from torch import nn

import vitkit
from vitkit.cli import main
from vitkit.errors import VitkitError
from vitkit.registry import get_entry
from vitkit.tools.export import export_model, run_onnx


def _one_per_kind(names):
    """One tiny preset per family and model kind (the name before '_test': vit, deit, vt_fpn, ...)."""
    kinds = {}
    for name in names:
        kinds.setdefault((get_entry(name).cls.family, name.split("_test")[0]), name)
    return sorted(kinds.values())


TEST_MODELS = _one_per_kind(vitkit.list_models("*test*"))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """name -> (model, ExportResult): each tiny preset exported to ONNX (opset 18) once per module."""
    done = {}

    def get(name):
        if name not in done:
            torch.manual_seed(0)
            model = vitkit.create_model(name)
            done[name] = model, export_model(model, tmp_path_factory.mktemp(name) / f"{name}.onnx", "onnx", opset=18)
        return done[name]

    return get


@pytest.mark.parametrize("name", TEST_MODELS)
def test_onnx_matches_pytorch(onnx_export, name):
    res = onnx_export(name)[1]
    assert set(res.max_abs_diff) == {1, 3} and res.opset == 18
    assert max(res.max_abs_diff.values()) < 1e-4, res.max_abs_diff


def test_onnx_batch_axis_is_dynamic(onnx_export):
    model, res = onnx_export("vit_test")
    model, path = model.eval(), res.path
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(path, x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vit_test", "deit_test_distilled"])
def test_torch_export_matches_pytorch(tmp_path, name):
    res = export_model(vitkit.create_model(name), tmp_path / "m.pt2", "torch-export")
    assert res.path.is_file() and max(res.max_abs_diff.values()) < 1e-5


class _DataDependent(nn.Module):
    """Python control flow on tensor values: cannot be traced into one graph."""

    def __init__(self):
        super().__init__()
        self.config = vitkit.get_config("vit_test")

    def forward(self, x):
        return x.mean() if float(x.sum()) > 0 else x.max()


@pytest.mark.parametrize("fmt", ["torch-export"])
def test_unexportable_model_is_one_line_error(tmp_path, fmt):
    with pytest.raises(VitkitError, match="cannot export"):
        export_model(_DataDependent(), tmp_path / "m", fmt)


def test_cli_exports_run_dir_on_real_images(tmp_path, capsys):
    model = vitkit.create_model("vit_test", in_chans=1)
    model.save_pretrained(tmp_path / "run" / "model",
                          extra={"preprocess": {"img_size": 16, "in_chans": 1, "mean": [0.5], "std": [0.5]}})
    imgs = []
    for i in range(2):
        imgs.append(tmp_path / f"{i}.png")
        Image.fromarray((torch.rand(20, 20) * 255).byte().numpy()).save(imgs[-1])
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--images", *map(str, imgs)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "opset 18" in text and "batch 3: max" in text


@pytest.mark.parametrize("args, match", [
    (["vit_test", "--format", "tflite"], "unknown export format"),
    (["no/such/run"], "path not found"),
    (["vit_test", "--images", "missing.png"], "no such file"),
])
def test_cli_errors(tmp_path, capsys, args, match):
    assert main(["export", *args, "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
