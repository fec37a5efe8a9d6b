"""run_gradio.py launched for real on a free port, driven by gradio_client and by headless Chromium,
with images from local servers that speak each image service's wire format, and from a tiny diffusers pipeline."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

import decoding
import image_servers
import utils
from conftest import DEVICE, OFFLINE, ROOT

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
from gradio_client import Client  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(checkpoint, env: dict, *flags) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "run_gradio.py"), "--model_name_or_path", str(checkpoint),
                                "--server_port", str(port), *map(str, flags)], env={**OFFLINE, **env}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read()) from None
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the demo did not start in 180 s")


@pytest.fixture(scope="module")
def karlo():
    server = image_servers.start("karlo", hang_seconds=3)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def demo_checkpoint(tiny_checkpoint):
    return os.environ.get("DEMO_CHECKPOINT", tiny_checkpoint)


@pytest.fixture(scope="module")
def app(demo_checkpoint, karlo):
    process, url = launch(demo_checkpoint, {"KARLO_API_KEY": image_servers.KEY,
                                            "KARLO_API_URL": f"http://127.0.0.1:{karlo.server_port}"})
    yield url
    process.terminate()
    output = process.communicate(timeout=30)[0]
    assert image_servers.KEY not in output  # the key never reaches the logs


KEYS = {"a1111": {"A1111_API_AUTH": image_servers.A1111_AUTH}, "openai": {"OPENAI_API_KEY": image_servers.KEY}}
TITLES = {"a1111": "AUTOMATIC1111", "comfyui": "ComfyUI", "openai": "OpenAI images API"}


@pytest.fixture(scope="module")
def backend_app(demo_checkpoint):
    """The demo drawing with a local server of each wire format, started on first use: kind -> (url, server)."""
    apps = {}

    def start(kind: str):
        if kind not in apps:
            server = image_servers.start(kind)
            process, url = launch(demo_checkpoint, KEYS.get(kind, {}), "--image_backend", kind,
                                  "--image_url", f"http://127.0.0.1:{server.server_port}", "--image_timeout", "5")
            apps[kind] = (url, server, process)
        return apps[kind][:2]
    yield start
    for _, server, process in apps.values():
        process.terminate()
        assert image_servers.KEY not in process.communicate(timeout=30)[0]
        server.shutdown()


def page_component(url: str, elem_id: str) -> str:
    """The value a component shows on the page, from the app's config."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=10).read())
    return next(c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def ask(url: str, keywords: str, **overrides):
    """The page's answer: prompt, image, status, CLIP tokens, and what it copied from a training prompt."""
    values = dict(num_keywords=8, strategy="top_k", seed=1, candidates=1, negative_prompt="", blocklist="",
                  max_clip_tokens=75, allow_repeats=False, memory_weight=1.0, max_copied_keywords=0)
    values.update(overrides)
    client = Client(url, verbose=False, analytics_enabled=False)
    return client.predict(keywords, *values.values(), api_name="/generate")


def test_prompt_and_image(app, karlo):
    karlo.mode = None
    prompt, image, status, clip, copied = ask(app, "url castle,", num_keywords=6, candidates=2)
    lines = prompt.splitlines()
    assert len(lines) == 2 and all(line.startswith("url castle") for line in lines)
    assert Image.open(image).size == (64, 48) and status == "Done."
    assert karlo.requests[-1]["body"]["prompt"] == lines[0]


def test_blocklist_budget_and_repeats_on_the_page(app, karlo):
    karlo.mode = None
    prompt, image, status, clip, copied = ask(app, "castle, owl,", num_keywords=12, candidates=3,
                                              blocklist="Castle, the", max_clip_tokens=12)
    lines = prompt.splitlines()
    counts = decoding.clip_token_counts(lines)
    assert len(lines) == 3 and all(n <= 12 for n in counts) and status == "Done."
    assert clip == "CLIP tokens: " + ", ".join(f"{n} of 12" for n in counts)
    for line in lines:
        new = utils.split_keywords(line)[2:]
        assert line.startswith("castle, owl") and not re.search(r"\b(castle|the)\b", ", ".join(new), re.IGNORECASE)
        keywords = [utils.normalize_keyword(k) for k in utils.split_keywords(line)]
        assert len(keywords) == len(set(keywords))
    prompt, image, status, clip, copied = ask(app, "castle,", blocklist="!!")
    assert prompt == "" and "would block every keyword" in status
    prompt, image, status, clip, copied = ask(app, "a very long keyword with many words in it,", max_clip_tokens=3)
    assert prompt == "" and "over the budget of 3" in status


def test_memory_slider_copy_limit_and_provenance(app, karlo):
    """The tiny checkpoint has the memory run_clm.py builds: the page says which training prompt the prompt copies
    from and how many keywords in a row; the slider turns the memory off; the copy limit holds."""
    karlo.mode = None
    train = utils.DEMO_DATA.read_text().splitlines()
    opening = {}
    for p in train:
        opening.setdefault(utils.first_keywords(p, 1), []).append(p)
    target = next(ps[0] for ps in opening.values() if len(ps) == 1 and len(utils.split_keywords(ps[0])) >= 6)
    keyword, size = utils.first_keywords(target, 1), len(utils.split_keywords(target))
    prompt, image, status, clip, copied = ask(app, keyword, num_keywords=size, strategy="beam")
    run = re.search(r"Copied: (\d+) keywords? in a row from the training prompt _(.+)_", copied)
    assert run and int(run.group(1)) >= 2, copied
    source = utils.split_keywords(run.group(2))
    new = utils.split_keywords(prompt)[1:]
    assert any(new[i:i + int(run.group(1))] == source[j:j + int(run.group(1))]
               for i in range(len(new)) for j in range(len(source)))  # the run named is in both
    off, *_ = ask(app, keyword, num_keywords=size, strategy="beam", memory_weight=0)
    assert off != prompt
    limited, image, status, clip, copied = ask(app, keyword, num_keywords=size, strategy="beam", max_copied_keywords=1)
    assert re.match(r"Copied: (1 keyword in a row|none)", copied), copied


def test_prompt_survives_a_failing_image_service(app, karlo):
    karlo.mode = "down"
    try:
        prompt, image, status, clip, copied = ask(app, "castle,")
    finally:
        karlo.mode = None
    assert prompt.startswith("castle") and image is None
    assert "no image" in status and "HTTP 500" in status


@pytest.mark.parametrize("keywords, message", [("   ", "at least one keyword"), ("a, " * 200, "at most 300")])
def test_bad_input_gets_a_message(app, keywords, message):
    prompt, image, status, clip, copied = ask(app, keywords)
    assert prompt == "" and image is None and message in status


def test_odd_characters(app, karlo):
    karlo.mode = "base64"
    try:
        prompt, image, status, clip, copied = ask(app, "ünïcødé 🐉 <b>castle</b>\x00,")
    finally:
        karlo.mode = None
    assert prompt.startswith("ünïcødé 🐉 <b>castle</b>") and status == "Done."


def test_twenty_concurrent_requests(app, karlo):
    karlo.mode = "url"
    client = Client(app, verbose=False, analytics_enabled=False)
    try:  # all 20 in flight at once, as 20 browser tabs would be
        jobs = [client.submit(f"tower {i},", 8, "top_k", i, 1, "", "", 75, False, 1.0, 0, api_name="/generate")
                for i in range(20)]
        answers = [job.result(timeout=300) for job in jobs]
    finally:
        karlo.mode = None
    assert [a[0].split(",")[0] for a in answers] == [f"tower {i}" for i in range(20)]
    assert all(a[1] is not None and a[2] == "Done." for a in answers)


def test_without_a_key_prompts_still_come(demo_checkpoint, tmp_path):
    env = {"KARLO_API_KEY": "", "KARLO_API_URL": "http://127.0.0.1:9"}
    process, url = launch(demo_checkpoint, env)
    try:
        prompt, image, status, clip, copied = ask(url, "a castle,")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert prompt.startswith("a castle") and image is None and "KARLO_API_KEY" in status


@pytest.mark.parametrize("kind", ["a1111", "comfyui", "openai"])
def test_draws_with_each_image_service(backend_app, kind):
    url, server = backend_app(kind)
    prompt, image, status, clip, copied = ask(url, "castle,", negative_prompt="blurry")
    assert prompt.startswith("castle") and status == "Done." and Image.open(image).size == (64, 48)
    body = server.requests[-1]["body"]
    sent = body["prompt"]["6"]["inputs"]["text"] if kind == "comfyui" else body["prompt"]
    assert sent == prompt.splitlines()[0]
    header = page_component(url, "image_backend")
    assert f"{TITLES[kind]} at http://127.0.0.1:{server.server_port}" in header
    assert ("takes no negative prompt" in header) == (kind == "openai")


def test_draws_with_a_local_diffusers_pipeline(demo_checkpoint, tiny_pipeline):
    process, url = launch(demo_checkpoint, {}, "--image_backend", "diffusers", "--image_model", tiny_pipeline,
                          "--image_steps", "2", "--image_width", "64", "--image_height", "64")
    try:
        prompt, image, status, clip, copied = ask(url, "castle,")
        header = page_component(url, "image_backend")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert prompt.startswith("castle") and status == "Done." and Image.open(image).size == (64, 64)
    assert f"diffusers pipeline at {tiny_pipeline} ({DEVICE})" in header


@pytest.mark.parametrize("flags, on_page", [
    (["--image_backend", "a1111", "--image_url", "http://127.0.0.1:9"], "Could not reach AUTOMATIC1111"),
    (["--image_backend", "comfyui", "--comfyui_workflow", "WORKFLOW"], "no text node"),
])
def test_image_problems_at_start_leave_prompts_working(demo_checkpoint, tmp_path, flags, on_page):
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}))
    process, url = launch(demo_checkpoint, {}, *[workflow if f == "WORKFLOW" else f for f in flags])
    try:
        header = page_component(url, "image_backend")
        prompt, image, status, clip, copied = ask(url, "a castle,")
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert on_page in header and on_page in output  # on the page and in the log, at start
    assert prompt.startswith("a castle") and image is None and "no image" in status.lower()


def test_unknown_image_backend_is_refused():
    result = subprocess.run([sys.executable, str(ROOT / "run_gradio.py"), "--image_backend", "midjourney"],
                            capture_output=True, text=True, env=OFFLINE, cwd=ROOT, timeout=120)
    assert result.returncode != 0 and "invalid choice" in result.stderr and "a1111" in result.stderr


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (installed by .ci/run)")
@pytest.mark.parametrize("kind", ["karlo", "a1111"])
def test_in_a_real_browser(request, kind):
    app = request.getfixturevalue("app") if kind == "karlo" else request.getfixturevalue("backend_app")(kind)[0]
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
        page.screenshot(path=str(ARTIFACTS / f"demo-{kind}.png"), full_page=True)
        page.locator("#image img").screenshot(path=str(ARTIFACTS / f"demo-image-{kind}.png"))
        browser.close()
    (ARTIFACTS / f"demo_timing-{kind}.json").write_text(json.dumps(
        {"click_to_prompt_s": round(to_prompt, 2), "click_to_image_s": round(to_image, 2)}))
    # What the browser shows is the picture the service drew (Karlo's links: red; A1111's: its seed in blue)
    shown = Image.open(ARTIFACTS / f"demo-image-{kind}.png").convert("RGB")
    red, green, blue = shown.getpixel((shown.width // 2, shown.height // 2))
    expected = (200, 40) if kind == "karlo" else (10, 20, 42)
    assert all(abs(a - b) <= 3 for a, b in zip((red, green, blue), expected)), (red, green, blue)
