"""Model cards: the ``README.md`` written next to the weights, as the Hugging Face Hub shows it.

The card opens with YAML metadata (written in YAML's JSON-compatible flow style, so no YAML
library is needed): library, licence, task, tags, and under ``vitkit`` the family, the
architecture config and the preprocessing. A trained run's card adds the data set, the
metrics (``model-index``) and the command that produced them. :func:`model_card` builds the
text from plain dicts (the saved config.json, the run's config and metrics).
"""
from __future__ import annotations

import json
from typing import Any

CARD_NAME = "README.md"
MARKER = "<!-- written by vitkit: `vitkit push` rewrites this file; delete this line to keep your edits -->"
DEFAULT_LICENSE = "apache-2.0"
_PIPELINES = {"classification": "image-classification", "segmentation": "image-segmentation"}
_METRICS = {"top1": ("accuracy", "top-1 accuracy"), "top5": ("accuracy", "top-5 accuracy"),
            "miou": ("mean_iou", "mean IoU"), "pixel_acc": ("accuracy", "pixel accuracy")}


def _flow(value: Any) -> str:
    """A JSON value in YAML flow style; floats keep a '.' in the mantissa (YAML 1.1 reads 1e-06 as text)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _yaml(meta: dict[str, Any]) -> str:
    return "\n".join(["---", *(f"{k}: {_flow(v)}" for k, v in meta.items()), "---"])


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _preprocess_rows(pre: dict) -> list[tuple[str, Any]]:
    size = pre["img_size"] if isinstance(pre["img_size"], list) else [pre["img_size"]] * 2
    crop = pre.get("crop_pct", 1.0)
    short = int(size[0] / crop) if size[0] == size[1] else "x".join(str(int(s / crop)) for s in size)
    return [("input", f"{size[0]}x{size[1]}, {pre['in_chans']} channel(s)"),
            ("resize", f"shorter side to {short} ({pre.get('interpolation', 'bilinear')}), center crop "
                       f"{size[0]}x{size[1]} (crop_pct {crop})"),
            ("normalise", f"(x / 255 - mean) / std, mean {pre['mean']}, std {pre['std']}")]


def _run_section(run: dict) -> tuple[dict, list[str]]:
    """YAML entries and text for a trained run: data set, metrics, command."""
    data, metrics, name = run.get("data") or {}, run.get("metrics") or {}, run.get("name", "model")
    dataset = data.get("name", "unknown")
    found = [(key, *_METRICS[key], metrics[key]) for key in _METRICS if isinstance(metrics.get(key), (int, float))]
    yaml: dict[str, Any] = {"datasets": [dataset]}
    if found:
        task = _PIPELINES.get(run.get("task", "classification"), "image-classification")
        yaml["model-index"] = [{"name": name, "results": [{
            "task": {"type": task}, "dataset": {"name": dataset, "type": dataset},
            "metrics": [{"type": kind, "name": label, "value": round(float(v), 4)} for _, kind, label, v in found]}]}]
    where = f" (`{data['data_dir']}`)" if data.get("data_dir") else ""
    text = ["", "## Training", "", f"Data set: `{dataset}`{where}; {run.get('epochs', '?')} epochs."]
    if found:
        text += ["", *_table([(label, f"{v:.4f}") for _, _, label, v in found], ("metric (validation)", "value"))]
    if run.get("command"):
        text += ["", "Produced by:", "", "```bash", run["command"], "```"]
    return yaml, text


def model_card(meta: dict, name: str, repo_id: str | None = None, run: dict | None = None) -> str:
    """README.md text for a saved model (``meta``: its config.json; ``run``: data, metrics,
    epochs, command of the training run that produced it)."""
    task = meta.get("task", "classification")
    config, pre = meta.get("config", {}), meta.get("preprocess") or {}
    licence = meta.get("license", DEFAULT_LICENSE)
    yaml: dict[str, Any] = {"library_name": "vitkit", "license": licence,
                            "pipeline_tag": _PIPELINES.get(task, "image-classification"),
                            "tags": ["vitkit", meta.get("family", "model"), _PIPELINES.get(task, task)],
                            "vitkit": {"family": meta.get("family"), "config": config, "preprocess": pre}}
    run_yaml, run_text = _run_section({**run, "task": task, "name": name}) if run else ({}, [])
    yaml.update(run_yaml)
    source = f"hf:{repo_id}" if repo_id else name
    classes = meta.get("class_names")
    lines = [_yaml(yaml), MARKER, "", f"# {name}", "",
             f"A vitkit `{meta.get('family')}` model for image {task}: {config.get('num_classes', '?')} classes "
             f"from {config.get('in_chans', '?')}-channel images.", "",
             "```python", "import vitkit", "", f"model = vitkit.create_model({json.dumps(source)}).eval()",
             "x = model.preprocess(image)  # uint8 or 0..1 float (C, H, W) -> the model input",
             "logits = model(x[None])", "```", "", "## Architecture", "",
             *_table([(k, f"`{json.dumps(v)}`") for k, v in config.items()], ("field", "value")),
             "", "## Preprocessing", "", *(_table(_preprocess_rows(pre), ("step", "value")) if pre else ["none saved"])]
    if classes:
        lines += ["", f"Classes: {', '.join(f'`{c}`' for c in classes)}."]
    lines += run_text
    lines += ["", "## Licence", "", f"`{licence}` (set `license` in `save_pretrained(extra=...)` to change it)."]
    return "\n".join(lines) + "\n"
