"""karlo_api against a real HTTP server on 127.0.0.1 speaking Karlo's wire format."""

import time

import pytest

import image_servers
from karlo_api import KarloClient, KarloError


@pytest.fixture(scope="module")
def server():
    server = image_servers.start("karlo", hang_seconds=3)
    yield server
    server.shutdown()


def client(server, key=image_servers.KEY, **options) -> KarloClient:
    return KarloClient(api_key=key, base_url=f"http://127.0.0.1:{server.server_port}", timeout=1.0,
                       backoff=0.05, **options)


def test_url_images_are_downloaded(server):
    images = client(server).text_to_image("url castle", negative_prompt="blurry", width=512)
    assert len(images) == 1 and images[0].size == (64, 48) and images[0].getpixel((0, 0))[:2] == (200, 40)
    request = server.requests[-1]
    assert request["path"] == "/v2/inference/karlo/t2i"
    assert request["auth"] == f"KakaoAK {image_servers.KEY}"
    assert request["body"] == {"prompt": "url castle", "negative_prompt": "blurry", "width": 512}


def test_base64_images_are_decoded(server):
    images = client(server).text_to_image("base64 castle", return_type="base64_string")
    assert images[0].getpixel((0, 0))[:2] == (40, 200)


def test_rate_limit_is_retried(server):
    before = len(server.requests)
    assert client(server).text_to_image("ratelimit_once castle")[0].size == (64, 48)
    assert len(server.requests) - before == 2


@pytest.mark.parametrize("prompt, kind, words", [
    ("unauthorized x", "bad_key", "refused the credentials (HTTP 401); check KARLO_API_KEY"),
    ("down x", "down", "failing (HTTP 500)"),
    ("garbage x", "bad_response", "not a JSON object"),
    ("refused x", "bad_request", "(HTTP 400): prompt contains a banned word"),
])
def test_failures_explained_without_the_key(server, prompt, kind, words):
    with pytest.raises(KarloError) as error:
        client(server).text_to_image(prompt)
    assert error.value.kind == kind and words in str(error.value)
    assert image_servers.KEY not in str(error.value) and image_servers.KEY not in repr(error.value)


def test_server_errors_are_retried_a_bounded_number_of_times(server):
    before = len(server.requests)
    with pytest.raises(KarloError):
        client(server, retries=2).text_to_image("down x")
    assert len(server.requests) - before == 3


def test_a_hang_ends_at_the_timeout(server):
    started = time.monotonic()
    with pytest.raises(KarloError) as error:
        client(server).text_to_image("hang x")
    assert error.value.kind == "timeout" and time.monotonic() - started < 2.5


def test_wrong_key_and_no_key(server, monkeypatch):
    with pytest.raises(KarloError) as error:
        client(server, key="wrong-secret-key").text_to_image("url x")
    assert error.value.kind == "bad_key" and "wrong-secret-key" not in str(error.value)
    monkeypatch.delenv("KARLO_API_KEY", raising=False)
    keyless = client(server, key=None)
    assert not keyless.has_key and "key" not in repr(keyless).replace("key=", "")
    with pytest.raises(KarloError) as error:
        keyless.text_to_image("url x")
    assert error.value.kind == "no_key" and "KARLO_API_KEY" in str(error.value)


def test_key_and_url_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("KARLO_API_KEY", image_servers.KEY)
    monkeypatch.setenv("KARLO_API_URL", f"http://127.0.0.1:{server.server_port}")
    from_env = KarloClient(timeout=1.0)
    assert from_env.has_key and image_servers.KEY not in repr(from_env)
    assert from_env.text_to_image("url x")[0].size == (64, 48)


def test_unreachable_service(server):
    with pytest.raises(KarloError) as error:
        KarloClient(api_key="k", base_url="http://127.0.0.1:9", timeout=1.0).text_to_image("x")
    assert error.value.kind == "unreachable"
