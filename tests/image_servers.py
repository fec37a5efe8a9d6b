"""Local HTTP servers that speak the image services' wire formats, for tests: Karlo's v2 text-to-image,
AUTOMATIC1111's /sdapi/v1/txt2img, ComfyUI's /prompt + /history + /view, and OpenAI's /v1/images/generations.

Behaviour is chosen per request by the prompt's first word (or, for the app tests, by `server.mode`): url,
base64, unauthorized, ratelimit_once, down, hang, garbage; for ComfyUI also never (a job that never finishes)
and error (a job that fails). Anything else draws a picture. Every request is recorded.
"""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image

KEY = "test-key-0123456789abcdef"
A1111_AUTH = "artist:" + KEY


def png_bytes(color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return buffer.getvalue()


def png_base64(color) -> str:
    return base64.b64encode(png_bytes(color)).decode()


class Handler(BaseHTTPRequestHandler):
    """The faults every format shares; subclasses answer the requests that get through."""
    auth_header = ""  # the Authorization header a request must carry ("" for none)

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes | dict, content_type="application/json", headers=None):
        body = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/images/"):  # a different picture per request, as a real service gives
            number = int(self.path.split("/")[-1].split(".")[0])
            return self._send(200, png_bytes((200, 40, number % 256)), "image/png")
        if not self.get():
            self._send(404, {"detail": "Not Found"})

    def get(self) -> bool:
        return False

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = server.mode or (self.prompt_of(body) or "ok").split()[0]
        if self.auth_header and self.headers.get("Authorization") != self.auth_header or mode == "unauthorized":
            return self._send(401, {"error": {"message": "invalid credentials"}, "msg": "invalid key"})
        if mode == "ratelimit_once" and server.counts.setdefault(mode, 0) == 0:
            server.counts[mode] = 1
            return self._send(429, {"error": {"message": "too many"}, "msg": "too many"}, headers={"Retry-After": "0"})
        if mode == "down":
            return self._send(500, {"error": {"message": "internal"}, "msg": "internal"})
        if mode == "hang":
            time.sleep(server.hang_seconds)
            return self._send(200, {})
        if mode == "garbage":
            return self._send(200, b"<html>not json", "text/html")
        self.answer(body, mode)

    def prompt_of(self, body: dict) -> str:
        return body.get("prompt", "")

    def image_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/images/{len(self.server.requests)}.png"


class KarloHandler(Handler):
    auth_header = f"KakaoAK {KEY}"

    def answer(self, body: dict, mode: str):
        if body.get("return_type") == "base64_string" or mode == "base64":
            image = png_base64((40, 200, len(self.server.requests) % 256))
        else:
            image = self.image_url()
        self._send(200, {"id": "t2i-1", "model_version": "v2.1",
                         "images": [{"id": "1", "seed": 7, "image": image, "nsfw_content_detected": False}]})


class A1111Handler(Handler):
    auth_header = "Basic " + base64.b64encode(A1111_AUTH.encode()).decode()

    def get(self) -> bool:
        if self.path == "/sdapi/v1/options":
            self._send(200, {"sd_model_checkpoint": "test.safetensors"})
            return True
        return False

    def answer(self, body: dict, mode: str):
        if self.path != "/sdapi/v1/txt2img":
            return self._send(404, {"detail": "Not Found"})
        self._send(200, {"images": [png_base64((10, 20, body.get("seed", 0) % 256))], "parameters": body, "info": "{}"})


class ComfyUIHandler(Handler):
    def get(self) -> bool:
        url = urlparse(self.path)
        if url.path == "/system_stats":
            self._send(200, {"system": {"os": "posix"}, "devices": []})
        elif url.path.startswith("/history/"):
            job = self.server.jobs.get(url.path.split("/")[-1])
            if job is None:
                self._send(200, {})
                return True
            job["polls"] += 1
            if job["mode"] == "never" or job["polls"] < 2:  # queued, then running
                self._send(200, {})
            elif job["mode"] == "error":
                self._send(200, {job["id"]: {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                                                      "messages": [["execution_error", {}]]}}})
            else:
                image = {"filename": f"{job['id']}.png", "subfolder": "", "type": "output"}
                self._send(200, {job["id"]: {"outputs": {"9": {"images": [image]}},
                                             "status": {"status_str": "success", "completed": True, "messages": []}}})
        elif url.path == "/view":
            query = parse_qs(url.query)
            job = self.server.jobs.get(query["filename"][0].removesuffix(".png"))
            if job is None or query.get("type") != ["output"]:
                self._send(404, b"")
            else:
                self._send(200, png_bytes((30, 60, job["seed"] % 256)), "image/png")
        else:
            return False
        return True

    def prompt_of(self, body: dict) -> str:
        texts = [node["inputs"]["text"] for _, node in sorted(body.get("prompt", {}).items())
                 if isinstance(node.get("inputs", {}).get("text"), str)]
        return next((t for t in texts if t), "")

    def answer(self, body: dict, mode: str):
        workflow = body["prompt"]
        job = f"job{len(self.server.jobs)}"
        seeds = [n["inputs"].get("seed", n["inputs"].get("noise_seed")) for n in workflow.values()
                 if {"seed", "noise_seed"} & set(n.get("inputs", {}))]
        self.server.jobs[job] = {"id": job, "mode": mode, "polls": 0, "seed": seeds[0] if seeds else 0}
        self._send(200, {"prompt_id": job, "number": len(self.server.jobs), "node_errors": {}})


class OpenAIHandler(Handler):
    auth_header = f"Bearer {KEY}"

    def get(self) -> bool:
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": []})
            return True
        return False

    def answer(self, body: dict, mode: str):
        if self.path != "/v1/images/generations":
            return self._send(404, {"error": {"message": "not found"}})
        image = {"url": self.image_url()} if mode == "url" else {"b64_json": png_base64((90, 90, 200))}
        self._send(200, {"created": 1, "data": [image]})


HANDLERS = {"karlo": KarloHandler, "a1111": A1111Handler, "comfyui": ComfyUIHandler, "openai": OpenAIHandler}


def start(kind: str = "karlo", hang_seconds: float = 3.0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HANDLERS[kind])
    server.requests, server.counts, server.jobs, server.mode, server.hang_seconds = [], {}, {}, None, hang_seconds
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
