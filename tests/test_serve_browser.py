"""`vitkit serve` as a person uses it: a real headless Chromium (Debian's package, driven by
Playwright) against the real server process, with a tiny model trained on digits.

Screenshots of every page state go to test-artifacts/serve/ (ignored by git). Under CI=true a
missing chromium, gradio or playwright is a failure, never a skip.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import vitkit
from image_cases import BAD_UPLOADS, encoded
from vitkit.cli import main

CHROMIUM = os.environ.get("VITKIT_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT_S = 180  # server start: importing gradio takes seconds on a quiet machine, more under load
UI_TIMEOUT_MS = 60_000


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run in CI: {why}", pytrace=False)
        pytest.skip(why)


_require(Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is not None,
         f"{CHROMIUM} not found; apt-get install chromium (or set VITKIT_CHROMIUM)")
for _module in ("gradio", "playwright"):
    try:
        __import__(_module)
    except ImportError:
        _require(False, f"{_module} is not installed; pip install -e '.[test]'")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from vitkit.tools.demo import MAX_UPLOAD_BYTES  # noqa: E402
from vitkit.tools.serve import EXAMPLES_DIR, Predictor  # noqa: E402

expect.set_options(timeout=UI_TIMEOUT_MS)  # every wait is bounded, generously for a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(request) -> Path:
    out = Path(os.environ.get("VITKIT_TEST_ARTIFACTS", request.config.rootpath / "test-artifacts")) / "serve"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["train", "--model", "vit_test", "--epochs", "3", "--out", str(out), "--set", "model.img_size=8",
                 "model.patch_size=2", "data.limit_train=512", "data.limit_val=64", "batch_size=32", "optim.lr=3e-3",
                 "tensorboard=false", "progress=false", "threads=1", "schedule.warmup_steps=1"]) == 0
    return out


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`vitkit serve RUN` in its own process on a free port; yields (base url, log file)."""
    port, log = _free_port(), tmp_path_factory.mktemp("serve_log") / "server.log"
    src = str(Path(vitkit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "vitkit.cli", "serve", str(run_dir), "--port", str(port),
                                 "--threads", "1"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vitkit serve did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(server[0] + "/", timeout=UI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _upload(page, path: Path) -> None:
    clear = page.locator('#upload button[aria-label="Clear"]')
    if clear.count():
        clear.first.click()
        expect(page.locator("#status")).to_contain_text("Drop an image")
    page.set_input_files("#upload input[type=file]", str(path))


def _expected(run_dir, path: Path) -> str:
    return Predictor.load(run_dir)(path).top[0][0]


def test_page_predicts_refuses_bad_files_and_keeps_serving(page, server, run_dir, tmp_path, artifacts):
    page.screenshot(path=artifacts / "0-empty.png", full_page=True)
    good = EXAMPLES_DIR / "digit_3.png"
    _upload(page, good)
    label = _expected(run_dir, good)
    expect(page.locator("#status")).to_contain_text(f"Prediction: {label}")
    expect(page.locator("#top")).to_contain_text(label)
    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible()
    page.wait_for_function("document.querySelector('#overlay img').naturalWidth === 256", timeout=UI_TIMEOUT_MS)
    page.screenshot(path=artifacts / "1-prediction.png", full_page=True)
    for i, (name, (data, words)) in enumerate(BAD_UPLOADS.items(), 2):
        bad = tmp_path / name
        bad.write_bytes(data)
        _upload(page, bad)
        expect(page.locator("#status")).to_contain_text("Cannot use this file")
        expect(page.locator("#status")).to_contain_text(words)
        assert str(tmp_path) not in page.inner_text("#status")  # the file's name, not the server's temp path
        page.screenshot(path=artifacts / f"{i}-rejected-{Path(name).stem}.png", full_page=True)
    other = tmp_path / "seven.png"
    other.write_bytes((good.parent / "digit_7.png").read_bytes())
    _upload(page, other)
    expect(page.locator("#status")).to_contain_text(f"Prediction: {_expected(run_dir, other)}")
    page.screenshot(path=artifacts / "9-recovered.png", full_page=True)
    log = server[1].read_text()
    for name in BAD_UPLOADS:
        assert sum(f"rejected upload {name}:" in line for line in log.splitlines()) == 1, log
    assert "Traceback" not in log


def test_example_click_runs_the_model(page, run_dir, artifacts):
    page.locator("button", has_text="digit_0.png").first.click()
    example = EXAMPLES_DIR / "digit_0.png"
    expect(page.locator("#status")).to_contain_text(f"Prediction: {_expected(run_dir, example)}")
    page.screenshot(path=artifacts / "10-example.png", full_page=True)


def _post(url: str, data: bytes):
    req = urllib.request.Request(url + "/api/predict", data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_json_api(server, run_dir):
    image = encoded("L", (8, 8), seed=3)
    status, body = _post(server[0], image)
    expected = Predictor.load(run_dir)(image)
    assert status == 200 and body["task"] == "classification" and len(body["top"]) == 5
    assert [t["label"] for t in body["top"]] == [label for label, _ in expected.top]
    assert abs(body["top"][0]["prob"] - expected.top[0][1]) < 1e-5
    status, body = _post(server[0], BAD_UPLOADS["notes.txt"][0])
    assert status == 400 and "not an image file" in body["error"]
    conn = http.client.HTTPConnection(server[0].removeprefix("http://"), timeout=60)
    try:  # a declared size over the limit is refused before the body is read
        conn.putrequest("POST", "/api/predict")
        conn.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "limited" in json.loads(response.read())["error"]
    finally:
        conn.close()
