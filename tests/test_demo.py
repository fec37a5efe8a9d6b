"""run_gradio.py launched for real on a free port, driven by gradio_client and by headless Chromium,
with images from a local Karlo-speaking server."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import karlo_server
from conftest import OFFLINE, ROOT

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(checkpoint, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "run_gradio.py"), "--model_name_or_path", str(checkpoint),
                                "--server_port", str(port)], env={**OFFLINE, **env}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read())
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the demo did not start in 180 s")


@pytest.fixture(scope="module")
def karlo():
    server = karlo_server.start(hang_seconds=3)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def demo_checkpoint(tiny_checkpoint):
    return os.environ.get("DEMO_CHECKPOINT", tiny_checkpoint)


@pytest.fixture(scope="module")
def app(demo_checkpoint, karlo):
    process, url = launch(demo_checkpoint, {"KARLO_API_KEY": karlo_server.KEY,
                                            "KARLO_API_URL": f"http://127.0.0.1:{karlo.server_port}"})
    yield url
    process.terminate()
    output = process.communicate(timeout=30)[0]
    assert karlo_server.KEY not in output  # the key never reaches the logs


def ask(url: str, keywords: str, **overrides):
    values = dict(num_keywords=8, strategy="top_k", seed=1, candidates=1, negative_prompt="")
    values.update(overrides)
    client = Client(url, verbose=False, analytics_enabled=False)
    return client.predict(keywords, *values.values(), api_name="/generate")


def test_prompt_and_image(app, karlo):
    karlo.mode = None
    prompt, image, status = ask(app, "url castle,", num_keywords=6, candidates=2)
    lines = prompt.splitlines()
    assert len(lines) == 2 and all(line.startswith("url castle") for line in lines)
    assert Image.open(image).size == (64, 48) and status == "Done."
    assert karlo.requests[-1]["body"]["prompt"] == lines[0]


def test_prompt_survives_a_failing_image_service(app, karlo):
    karlo.mode = "down"
    try:
        prompt, image, status = ask(app, "castle,")
    finally:
        karlo.mode = None
    assert prompt.startswith("castle") and image is None
    assert "no image" in status and "HTTP 500" in status


@pytest.mark.parametrize("keywords, message", [("   ", "at least one keyword"), ("a, " * 200, "at most 300")])
def test_bad_input_gets_a_message(app, keywords, message):
    prompt, image, status = ask(app, keywords)
    assert prompt == "" and image is None and message in status


def test_odd_characters(app, karlo):
    karlo.mode = "base64"
    try:
        prompt, image, status = ask(app, "ünïcødé 🐉 <b>castle</b>\x00,")
    finally:
        karlo.mode = None
    assert prompt.startswith("ünïcødé 🐉 <b>castle</b>") and status == "Done."


def test_twenty_concurrent_requests(app, karlo):
    karlo.mode = "url"
    client = Client(app, verbose=False, analytics_enabled=False)
    try:  # all 20 in flight at once, as 20 browser tabs would be
        jobs = [client.submit(f"tower {i},", 8, "top_k", i, 1, "", api_name="/generate") for i in range(20)]
        answers = [job.result(timeout=300) for job in jobs]
    finally:
        karlo.mode = None
    assert [a[0].split(",")[0] for a in answers] == [f"tower {i}" for i in range(20)]
    assert all(a[1] is not None and a[2] == "Done." for a in answers)


def test_without_a_key_prompts_still_come(demo_checkpoint, tmp_path):
    env = {"KARLO_API_KEY": "", "KARLO_API_URL": "http://127.0.0.1:9"}
    process, url = launch(demo_checkpoint, env)
    try:
        prompt, image, status = ask(url, "a castle,")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert prompt.startswith("a castle") and image is None and "KARLO_API_KEY" in status


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (installed by .ci/run)")
def test_in_a_real_browser(app):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app)
        page.get_by_role("textbox", name="Keywords", exact=True).fill("url, castle,")
        started = time.monotonic()
        page.get_by_role("button", name="Generate").click()
        prompt_box = page.locator("#prompt textarea")
        expect(prompt_box).not_to_have_value("", timeout=60_000)
        to_prompt = time.monotonic() - started
        expect(page.locator("#image img")).to_be_visible(timeout=60_000)
        to_image = time.monotonic() - started
        assert prompt_box.input_value().startswith("url, castle")
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        browser.close()
    (ARTIFACTS / "demo_timing.json").write_text(json.dumps(
        {"click_to_prompt_s": round(to_prompt, 2), "click_to_image_s": round(to_image, 2)}))
    assert Image.open(ARTIFACTS / "demo.png").size[0] == 1280
