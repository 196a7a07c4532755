"""The ``vitkit serve`` page (Gradio) and its JSON route (FastAPI), around one :class:`Predictor`.

- ``build_demo(predictor)``: the page. Drop or upload an image, or click a bundled example; it
  shows the top-k bars and, by model: the rollout overlay (ViT), the token maps (VT), the mask
  overlay and legend (segmentation). A bad upload is a message in the page and one log line.
- ``build_app(predictor)``: FastAPI with ``POST /api/predict`` (raw image bytes in, JSON out) and
  the page mounted at ``/``. Gradio's own API (endpoint ``/predict``) is there too.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from vitkit.errors import VitkitError
from vitkit.tools.serve import Predictor, ServeResult

log = logging.getLogger("vitkit.serve")
MAX_UPLOAD_BYTES = 20 * 2**20  # larger uploads are refused before they are read
IDLE = "Drop an image on the box, click it to upload one, or pick an example below."


def _legend_html(legend) -> str:
    rows = "".join(f'<li><span style="display:inline-block;width:0.9em;height:0.9em;background:{colour};'
                   f'margin-right:0.4em;border:1px solid #888"></span>{html.escape(name)} ({share:.0%})</li>'
                   for name, colour, share in legend)
    return f'<ul style="list-style:none;padding:0;margin:0">{rows}</ul>'


def _summary(result: ServeResult) -> str:
    label, p = result.top[0]
    if result.task == "segmentation":
        return f"**Mask:** {len(result.legend)} classes present; the largest is **{label}** ({p:.0%} of the pixels)."
    return f"**Prediction: {label}** ({p:.1%})"


def analyze(predictor: Predictor, path: str | None):
    """The page's one event: (status, top-k bars, overlay, token maps, legend)."""
    if not path:
        return IDLE, None, None, None, ""
    name = Path(path).name
    try:
        result = predictor(path)
    except VitkitError as exc:
        message = str(exc).replace(str(path), name)
        log.warning("rejected upload %s: %s", name, message)
        return f"**Cannot use this file.** {message}", None, None, None, ""
    bars = {label: p for label, p in result.top}
    return _summary(result), bars, result.overlay, result.token_maps or None, _legend_html(result.legend)


def _describe(predictor: Predictor) -> str:
    shows = ["the top classes"]
    if predictor.shows_rollout:
        shows.append("the attention rollout (where the class token's information comes from)")
    if predictor.task == "segmentation":
        shows = ["the predicted mask with a legend", "each class's share of the pixels"]
    if predictor.shows_tokens:
        shows.append("the tokenizer's spatial attention of each visual token")
    return f"## vitkit · {html.escape(predictor.name)}\nShows " + ", ".join(shows) + "."


def build_demo(predictor: Predictor, examples: list[Path] | None = None) -> gr.Blocks:
    """The Gradio page (not launched): upload box, status line, bars, overlay, tokens, legend."""
    seg = predictor.task == "segmentation"
    with gr.Blocks(title=f"vitkit: {predictor.name}", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_describe(predictor))
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image", type="filepath", elem_id="upload")
                status = gr.Markdown(IDLE, elem_id="status")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=upload, label="examples")
            with gr.Column():
                top = gr.Label(num_top_classes=predictor.top_k, label="pixel share" if seg else "top classes",
                               elem_id="top")
                overlay = gr.Image(label="predicted mask" if seg else "attention rollout", type="numpy",
                                   interactive=False, visible=seg or predictor.shows_rollout, elem_id="overlay")
                legend = gr.HTML(visible=seg, elem_id="legend")
                tokens = gr.Gallery(label="visual tokens: tokenizer attention", columns=4,
                                    visible=predictor.shows_tokens, elem_id="tokens")
        upload.change(lambda path: analyze(predictor, path), inputs=upload,
                      outputs=[status, top, overlay, tokens, legend], api_name="predict")
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def build_app(predictor: Predictor, examples: list[Path] | None = None):
    """FastAPI: ``POST /api/predict`` (image bytes -> JSON) plus the page at ``/``."""
    app = FastAPI()

    @app.post("/api/predict")
    async def predict(request: Request):
        too_big = JSONResponse({"error": f"uploads are limited to {MAX_UPLOAD_BYTES:,} bytes"}, status_code=413)
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
            return too_big
        body = bytearray()
        async for chunk in request.stream():  # bounded even without a Content-Length
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                return too_big
        try:
            result = await run_in_threadpool(predictor, bytes(body))
        except VitkitError as exc:
            log.warning("rejected API upload: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"model": predictor.name, **result.to_json()}

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts to fetch
                              font_mono=["ui-monospace", "monospace"])
    demo = build_demo(predictor, examples)
    allowed = sorted({str(p.parent.resolve()) for p in examples or []})
    return gr.mount_gradio_app(app, demo, path="", allowed_paths=allowed, max_file_size=MAX_UPLOAD_BYTES,
                               ssr_mode=False, theme=theme, footer_links=["api"])
