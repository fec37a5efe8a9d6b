"""image_backends against real HTTP servers on 127.0.0.1 speaking each service's wire format, and a diffusers
pipeline of tiny random components built here."""

import json
import time

import pytest
from PIL import Image

import image_servers
from conftest import DEVICE, run
from image_backends import ImageArguments, ImageError, make_backend

FORMATS = ["a1111", "comfyui", "openai"]
KEYS = {"a1111": ("A1111_API_AUTH", image_servers.A1111_AUTH), "openai": ("OPENAI_API_KEY", image_servers.KEY)}


@pytest.fixture(scope="module")
def servers():
    started = {kind: image_servers.start(kind, hang_seconds=3) for kind in FORMATS}
    yield started
    for server in started.values():
        server.shutdown()


def backend(kind: str, server=None, monkeypatch=None, key: str | None = None, **options):
    if kind in KEYS and monkeypatch is not None:
        monkeypatch.setenv(KEYS[kind][0], key or KEYS[kind][1])
    url = f"http://127.0.0.1:{server.server_port}" if server else "http://127.0.0.1:9"
    drawer = make_backend(ImageArguments(image_backend=kind, image_url=url, image_timeout=1.0, **options))
    drawer.backoff = 0.05
    if kind == "comfyui":
        drawer.poll_seconds = 0.05
    return drawer


@pytest.mark.parametrize("kind", FORMATS)
def test_draws_with_the_prompt_negative_prompt_and_seed(servers, monkeypatch, kind):
    server = servers[kind]
    image = backend(kind, server, monkeypatch, image_model="my-model.safetensors").draw("castle on a hill", "blurry", 7)
    assert isinstance(image, Image.Image) and image.size == (64, 48)
    request = server.requests[-1]["body"]
    if kind == "a1111":
        assert request["prompt"] == "castle on a hill" and request["negative_prompt"] == "blurry"
        assert request["seed"] == 7 and request["steps"] == 20 and image.getpixel((0, 0))[2] == 7
    elif kind == "comfyui":
        workflow = request["prompt"]
        assert workflow["6"]["inputs"]["text"] == "castle on a hill" and workflow["7"]["inputs"]["text"] == "blurry"
        assert workflow["3"]["inputs"]["seed"] == 7 and workflow["4"]["inputs"]["ckpt_name"] == "my-model.safetensors"
        assert image.getpixel((0, 0))[2] == 7
    else:
        assert request == {"model": "my-model.safetensors", "prompt": "castle on a hill", "n": 1, "size": "1024x1024"}
        assert server.requests[-1]["auth"] == f"Bearer {image_servers.KEY}"


def test_openai_image_links_are_downloaded(servers, monkeypatch):
    assert backend("openai", servers["openai"], monkeypatch).draw("url castle").getpixel((0, 0))[:2] == (200, 40)


@pytest.mark.parametrize("kind", FORMATS)
def test_rate_limit_is_retried(servers, monkeypatch, kind):
    server = servers[kind]
    server.counts.clear()
    before = len(server.requests)
    assert backend(kind, server, monkeypatch).draw("ratelimit_once castle").size == (64, 48)
    assert len(server.requests) - before == 2


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("prompt, error_kind, words", [
    ("unauthorized x", "bad_key", "refused the credentials (HTTP 401)"),
    ("down x", "down", "failing (HTTP 500)"),
    ("garbage x", "bad_response", "not a JSON object"),
    ("hang x", "timeout", "did not answer within 1 s"),
])
def test_failures_explained_without_the_key(servers, monkeypatch, kind, prompt, error_kind, words):
    server = servers[kind]
    before, started = len(server.requests), time.monotonic()
    with pytest.raises(ImageError) as error:
        backend(kind, server, monkeypatch).draw(prompt, "", 1)
    assert error.value.kind == error_kind and words in str(error.value)
    assert image_servers.KEY not in str(error.value) and image_servers.KEY not in repr(error.value)
    assert time.monotonic() - started < 2.5
    if error_kind == "down":
        assert len(server.requests) - before == 3  # two retries, then the error


@pytest.mark.parametrize("kind", ["a1111", "openai"])
def test_a_wrong_key_is_refused_and_never_shown(servers, monkeypatch, kind):
    with pytest.raises(ImageError) as error:
        backend(kind, servers[kind], monkeypatch, key="user:wrong-secret-key").draw("castle")
    assert error.value.kind == "bad_key" and "wrong-secret-key" not in str(error.value)
    assert KEYS[kind][0] in str(error.value)  # says where the key comes from


@pytest.mark.parametrize("prompt, error_kind, words", [
    ("never x", "timeout", "did not finish the image within 1 s, so the job was cancelled; raise --image_timeout"),
    ("error x", "bad_request", "could not run the workflow: node 4 (CheckpointLoaderSimple) failed: "
                               "safetensors_rust.SafetensorError: Error while deserializing header: header too large"),
])
def test_comfyui_jobs_that_never_finish_or_fail(servers, prompt, error_kind, words):
    server = servers["comfyui"]
    started = time.monotonic()
    with pytest.raises(ImageError) as error:
        backend("comfyui", server).draw(prompt)
    assert error.value.kind == error_kind and words in str(error.value) and time.monotonic() - started < 3
    job = [r for r in server.requests if r["path"] == "/prompt"][-1]
    if error_kind == "timeout":  # the job is taken off the server, not left running there
        job_id = next(j for j in server.jobs.values() if j["mode"] == "never" and j["done"] == "cancelled")["id"]
        cancels = [r["body"] for r in server.requests if r["path"] in ("/queue", "/interrupt")][-2:]
        assert cancels == [{"delete": [job_id]}, {"prompt_id": job_id}]
    assert job["body"]["prompt"]["6"]["inputs"]["text"] == prompt


@pytest.mark.parametrize("installed, listed", [([], "none"), (["a.safetensors", "b.ckpt"], "a.safetensors, b.ckpt")])
def test_comfyui_refused_workflow_names_the_node_and_the_checkpoints(installed, listed):
    server = image_servers.start("comfyui", checkpoints=installed)
    try:
        drawer = backend("comfyui", server, image_model="no-such-model.safetensors")
        with pytest.raises(ImageError) as error:
            drawer.draw("castle")
        problem = drawer.problem()
    finally:
        server.shutdown()
    message = str(error.value)
    assert error.value.kind == "bad_request" and "ComfyUI refused the request (HTTP 400): Prompt outputs failed " \
        "validation; node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'no-such-model.safetensors' not " \
        f"in {installed}" in message and f"(installed checkpoints: {listed})" in message
    # asked at start, the page can say so before anyone clicks
    assert problem.kind == "notice" and f"no checkpoint no-such-model.safetensors; it has {listed}" in str(problem)


def test_comfyui_guidance_zero_is_sent_as_zero(servers):
    backend("comfyui", servers["comfyui"], image_guidance=0.0, image_steps=1).draw("castle")
    sent = servers["comfyui"].requests[-1]["body"]["prompt"]["3"]["inputs"]
    assert sent["cfg"] == 0.0 and sent["steps"] == 1


def test_comfyui_workflow_says_which_flags_it_ignores(servers, tmp_path):
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps({"6": {"class_type": "CLIPTextEncode", "inputs": {"text": ""}}}))
    drawer = backend("comfyui", servers["comfyui"], comfyui_workflow=str(path), image_steps=4, image_width=768)
    problem = drawer.problem()
    assert problem.kind == "notice"
    assert "--image_steps, --image_width are ignored with --comfyui_workflow" in str(problem)
    assert backend("comfyui", servers["comfyui"], comfyui_workflow=str(path)).problem() is None


@pytest.mark.parametrize("kind, prompt, words", [
    ("a1111", "down x", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ("a1111", "refused x", "(HTTP 422): steps: value is not a valid integer"),
    ("a1111", "unauthorized x", "Incorrect username or password"),
    ("openai", "refused x", "(HTTP 400): Your request was rejected as a result of our safety system."),
    ("openai", "unauthorized x", "Incorrect API key provided"),
    ("comfyui", "refused x", "Cannot execute because a node is missing the class_type property."),
])
def test_errors_carry_the_servers_own_words(servers, monkeypatch, kind, prompt, words):
    with pytest.raises(ImageError) as error:
        backend(kind, servers[kind], monkeypatch).draw(prompt)
    assert words in str(error.value) and image_servers.KEY not in str(error.value)


def test_comfyui_takes_the_users_workflow(servers, tmp_path):
    workflow = {  # an SDXL-style graph: other node ids, an advanced sampler with noise_seed, no negative node
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["10", 1]}},
        "12": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["11", 0]}},
        "13": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 1, "positive": ["11", 0],
                                                            "negative": ["12", 0], "model": ["10", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0]}},
    }
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(workflow))
    image = backend("comfyui", servers["comfyui"], comfyui_workflow=str(path)).draw("a red fox", "blurry", 42)
    sent = servers["comfyui"].requests[-1]["body"]["prompt"]
    assert image.size == (64, 48) and sent["11"]["inputs"]["text"] == "a red fox"
    assert sent["13"]["inputs"]["noise_seed"] == 42 and sent["10"] == workflow["10"]


@pytest.mark.parametrize("content, words", [
    ({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}, "no text node"),
    ({"nodes": [{"id": 6, "type": "CLIPTextEncode"}], "links": []}, "API format"),
    ("not json", "Cannot read the ComfyUI workflow"),
])
def test_comfyui_bad_workflow_files(tmp_path, content, words):
    path = tmp_path / "workflow.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ImageError) as error:
        backend("comfyui", comfyui_workflow=str(path))
    assert error.value.kind == "setup" and words in str(error.value)


@pytest.mark.parametrize("kind", FORMATS)
def test_an_unreachable_server_is_a_problem_at_start(monkeypatch, kind):
    drawer = backend(kind, None, monkeypatch)
    assert drawer.problem().kind == "unreachable" and "127.0.0.1:9" in str(drawer.problem())
    with pytest.raises(ImageError) as error:
        drawer.draw("castle")
    assert error.value.kind == "unreachable"


def test_openai_without_a_key_says_so(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    problem = make_backend(ImageArguments(image_backend="openai")).problem()  # no request made
    assert problem.kind == "no_key" and "OPENAI_API_KEY" in str(problem)


def test_command_line_draws_one_prompt_to_a_file(servers, tmp_path):
    out = tmp_path / "castle.png"
    url = f"http://127.0.0.1:{servers['a1111'].server_port}"
    result = run("image_backends.py", "a castle", "--image_backend", "a1111", "--image_url", url, "-o", out,
                 "--seed", "3", env={"A1111_API_AUTH": image_servers.A1111_AUTH})
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == (64, 48) and "AUTOMATIC1111 at" in result.stdout
    unknown = run("image_backends.py", "a castle", "--image_backend", "midjourney")
    assert unknown.returncode != 0 and "invalid choice" in unknown.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"3": {"class_type": "KSampler", "inputs": {}}}))
    bad = run("image_backends.py", "a castle", "--image_backend", "comfyui", "--comfyui_workflow",
              tmp_path / "bad.json")
    assert bad.returncode != 0 and "no text node" in bad.stderr and "Traceback" not in bad.stderr


def test_diffusers_pipeline_draws(tiny_pipeline):
    drawer = make_backend(ImageArguments(image_backend="diffusers", image_model=str(tiny_pipeline), image_steps=2,
                                         image_width=64, image_height=64))
    first, again = drawer.draw("a castle", "blurry", 5), drawer.draw("a castle", "blurry", 5)
    assert first.size == (64, 64) and first.tobytes() == again.tobytes()  # seeded
    assert drawer.problem() is None and f"({DEVICE})" in drawer.url


def test_diffusers_missing_model_is_a_setup_error(tmp_path):
    with pytest.raises(ImageError) as error:
        make_backend(ImageArguments(image_backend="diffusers", image_model=str(tmp_path / "none")))
    assert error.value.kind == "setup" and "Could not load" in str(error.value)
