"""Export a model for deployment: ONNX (dynamic batch, checked with onnxruntime) and torch.export.

Both exporters trace the eval-mode model on example inputs of the model's image size; the
batch axis stays dynamic. After writing, the file is loaded back and run on batches of 1 and
3 images and compared to eager PyTorch (max absolute difference reported).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from vitkit.engine.device import model_device
from vitkit.errors import VitkitError
from vitkit.io import make_dir

FORMATS = ("onnx", "torch-export")
DEFAULT_OPSET = 18
OPSETS = range(17, 26)  # written and checked with the pinned torch/onnx/onnxruntime (LayerNormalization >= 17)
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


class ExportResult(NamedTuple):
    path: Path
    format: str
    opset: int | None
    max_abs_diff: dict[int, float]  # batch size -> max |exported - eager|


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=4096)


def _plain_output(out) -> torch.Tensor:
    """The main tensor of a model output (dense logits, class logits, or the first field)."""
    return out if isinstance(out, torch.Tensor) else out[0]


class _Exportable(nn.Module):
    """Wraps a model so that the exported graph has one input ``images`` and one output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _plain_output(self.model(images))


def example_batches(model, img_size: Sequence[int], sizes=(1, 3), seed: int = 0) -> dict[int, torch.Tensor]:
    """Random normal images (B, C, H, W) for each batch size (what normalised inputs look like)."""
    g = torch.Generator().manual_seed(seed)
    return {b: torch.randn(b, model.config.in_chans, *img_size, generator=g) for b in sizes}


def _fail(model, fmt: str, exc: Exception) -> VitkitError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return VitkitError(f"cannot export {type(model).__name__} to {fmt}: {first}; "
                       "try the other --format or a model without data-dependent control flow")


def export_onnx(model: nn.Module, path, example: torch.Tensor, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``path`` (.onnx, opset ``opset``, dynamic batch axis) with the dynamo exporter."""
    wrapped = _Exportable(model).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"images": {0: _batch_dim()}}, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one line
        raise _fail(model, "onnx", exc) from None
    return Path(path)


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise VitkitError(f"--opset {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")


def written_opset(path) -> int:
    """The default-domain opset recorded in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    """Run an exported ONNX file on ``x`` with onnxruntime (CPU)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise VitkitError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}; re-export it") from None
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def export_torch(model: nn.Module, path, example: torch.Tensor) -> Path:
    """Write a ``torch.export`` program (.pt2, dynamic batch) with ``torch.export.save``."""
    wrapped = _Exportable(model).eval()
    try:
        program = torch.export.export(wrapped, (example,), dynamic_shapes={"images": {0: _batch_dim()}})
    except Exception as exc:  # noqa: BLE001
        raise _fail(model, "torch-export", exc) from None
    torch.export.save(program, str(path))
    return Path(path)


def run_torch_export(path, x: torch.Tensor) -> torch.Tensor:
    """Load a .pt2 program and run it on ``x``."""
    return torch.export.load(str(path)).module()(x)


@torch.no_grad()
def export_model(model: nn.Module, path, fmt: str = "onnx", opset: int = DEFAULT_OPSET,
                 img_size: Sequence[int] | None = None, inputs: dict[int, torch.Tensor] | None = None
                 ) -> ExportResult:
    """Export ``model`` (on its device) and check the exported file against eager PyTorch on
    ``inputs`` (onnxruntime runs on the CPU)."""
    if fmt not in FORMATS:
        raise VitkitError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        check_opset(opset)
    model = model.eval()
    img_size = tuple(img_size or model.config.img_size)
    inputs = inputs or example_batches(model, img_size)
    path = Path(path)
    try:
        make_dir(path.parent)
    except VitkitError:
        raise VitkitError(f"--out {path}: its folder {path.parent} cannot be created or written (a file in the way, "
                          "or a read-only place); pick another --out") from None
    if path.is_dir():
        raise VitkitError(f"--out {path} is a directory; pass a file name such as {path / ('model' + SUFFIX[fmt])}")
    device = model_device(model)
    inputs = {b: x.to(device) for b, x in inputs.items()}
    example = max(inputs.values(), key=len)
    example = example if len(example) > 1 else example.repeat(2, 1, 1, 1)  # batch 1 would specialise
    writer, runner = (export_onnx, run_onnx) if fmt == "onnx" else (export_torch, run_torch_export)
    writer(model, path, example, **({"opset": opset} if fmt == "onnx" else {}))
    if fmt == "onnx" and written_opset(path) != opset:
        found = written_opset(path)
        path.unlink(missing_ok=True)
        raise VitkitError(f"the ONNX exporter wrote opset {found}, not the requested {opset}, so nothing was kept; "
                          f"use --opset {DEFAULT_OPSET}")
    diffs = {}
    for b, x in inputs.items():
        ref = _plain_output(model(x)).float().cpu()
        got = runner(path, x).float().cpu()
        if got.shape != ref.shape:
            raise VitkitError(f"exported {fmt} output has shape {tuple(got.shape)} for batch {b}, "
                              f"eager has {tuple(ref.shape)}; the batch axis did not stay dynamic")
        diffs[b] = float((got - ref).abs().max())
    return ExportResult(path, fmt, opset if fmt == "onnx" else None, diffs)

