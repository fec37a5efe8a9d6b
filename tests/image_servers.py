"""Local HTTP servers that speak the image services' wire formats, for tests: Karlo's v2 text-to-image,
AUTOMATIC1111's /sdapi/v1/txt2img, ComfyUI's /prompt + /history + /view, and OpenAI's /v1/images/generations.

Behaviour is chosen per request by the prompt's first word (or, for the app tests, by `server.mode`): url,
base64, unauthorized, ratelimit_once, down, hang, garbage, refused (a request the service turns down); for ComfyUI
also never (a job that never finishes) and error (a job that fails while running), and a workflow whose checkpoint
is not installed is refused as ComfyUI refuses it. Anything else draws a picture. Every request is recorded. Error
bodies have each service's own shape: Karlo's {"msg", "code"}, AUTOMATIC1111's FastAPI {"detail"} and its exception
handler's {"error", "detail", "body", "errors"}, ComfyUI's {"error": {...}, "node_errors": {...}}, OpenAI's
{"error": {"message", "type", "param", "code"}}.
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
    """The faults every format shares; subclasses answer the requests that get through, and say how each fault
    reads in their service's error body."""
    auth_header = ""  # the Authorization header a request must carry ("" for none)
    errors = {  # status -> body; each service overrides these with its own shapes
        401: {"detail": "Unauthorized"}, 429: {"detail": "Too Many Requests"}, 500: {"detail": "Internal Server Error"},
        400: {"detail": "Bad Request"}}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes | dict, content_type="application/json", headers=None):
        body = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (the hang fault): nobody to answer
            pass

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
            return self._send(401, self.errors[401])
        if mode == "ratelimit_once" and server.counts.setdefault(mode, 0) == 0:
            server.counts[mode] = 1
            return self._send(429, self.errors[429], headers={"Retry-After": "0"})
        if mode == "down":
            return self._send(500, self.errors[500])
        if mode == "refused":
            return self._send(400 if 400 in self.errors else 422, self.errors.get(400, self.errors.get(422)))
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
    errors = {401: {"msg": "this access token does not exist", "code": -401},
              429: {"msg": "API limit has been exceeded.", "code": -10},
              500: {"msg": "internal server error", "code": -9798},
              400: {"msg": "prompt contains a banned word", "code": -2}}

    def answer(self, body: dict, mode: str):
        if body.get("return_type") == "base64_string" or mode == "base64":
            image = png_base64((40, 200, len(self.server.requests) % 256))
        else:
            image = self.image_url()
        self._send(200, {"id": "t2i-1", "model_version": "v2.1",
                         "images": [{"id": "1", "seed": 7, "image": image, "nsfw_content_detected": False}]})


class A1111Handler(Handler):
    auth_header = "Basic " + base64.b64encode(A1111_AUTH.encode()).decode()
    errors = {401: {"detail": "Incorrect username or password"}, 429: {"detail": "Too Many Requests"},
              # modules/api/api.py's exception handler, and FastAPI's request validation
              500: {"error": "OutOfMemoryError", "detail": "", "body": "",
                    "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"},
              422: {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer",
                                "type": "type_error.integer"}]}}

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
    errors = {429: {"error": "Too Many Requests"}, 401: {"error": "Unauthorized"},
              500: {"error": {"type": "server_error", "message": "Internal Server Error"}, "node_errors": {}},
              400: {"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the "
                              "class_type property.", "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}}}

    def get(self) -> bool:
        url = urlparse(self.path)
        server = self.server
        if url.path == "/system_stats":
            self._send(200, {"system": {"os": "posix", "comfyui_version": "0.3.64"}, "devices": []})
        elif url.path == "/object_info/CheckpointLoaderSimple":
            self._send(200, {"CheckpointLoaderSimple": {
                "input": {"required": {"ckpt_name": [list(server.checkpoints), {
                    "tooltip": "The name of the checkpoint (model) to load."}]}},
                "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP", "VAE"],
                "name": "CheckpointLoaderSimple", "display_name": "Load Checkpoint", "category": "loaders"}})
        elif url.path == "/queue":
            running = [[job["number"], job["id"], {}, {}, ["9"]] for job in server.jobs.values()
                       if job["polls"] > 0 and not job["done"]]
            pending = [[job["number"], job["id"], {}, {}, ["9"]] for job in server.jobs.values()
                       if job["polls"] == 0 and not job["done"]]
            self._send(200, {"queue_running": running, "queue_pending": pending})
        elif url.path.startswith("/history/"):
            job = server.jobs.get(url.path.split("/")[-1])
            if job is None or job["done"] == "cancelled":
                self._send(200, {})
                return True
            job["polls"] += 1
            if job["mode"] == "never" or job["polls"] < 2:  # queued, then running
                self._send(200, {})
            elif job["mode"] == "error":
                job["done"] = "error"
                started = {"prompt_id": job["id"], "timestamp": 1700000000000}
                self._send(200, {job["id"]: {"prompt": [job["number"], job["id"], {}, {}, ["9"]], "outputs": {},
                                             "status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_start", started], ["execution_cached", {"nodes": [], **started}],
                    ["execution_error", {"prompt_id": job["id"], "node_id": "4", "node_type": "CheckpointLoaderSimple",
                                         "executed": [], "exception_message": "Error while deserializing header: "
                                         "header too large", "exception_type": "safetensors_rust.SafetensorError",
                                         "traceback": ["  File \"execution.py\", line 496, in execute\n"],
                                         "current_inputs": {"ckpt_name": ["broken.safetensors"]},
                                         "current_outputs": []}]]}, "meta": {}}})
            else:
                job["done"] = "success"
                image = {"filename": f"{job['id']}.png", "subfolder": "", "type": "output"}
                self._send(200, {job["id"]: {"outputs": {"9": {"images": [image]}},
                                             "status": {"status_str": "success", "completed": True, "messages": []}}})
        elif url.path == "/view":
            query = parse_qs(url.query)
            job = server.jobs.get(query["filename"][0].removesuffix(".png"))
            if job is None or query.get("type") != ["output"]:
                self._send(404, b"")
            else:
                self._send(200, png_bytes((30, 60, job["seed"] % 256)), "image/png")
        else:
            return False
        return True

    def do_POST(self):
        if self.path in ("/queue", "/interrupt"):  # cancelling: {"delete": [ids]}, {"prompt_id": id}
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            jobs = self.server.jobs
            for job in body.get("delete", []):  # only a job still waiting leaves the queue
                if job in jobs and jobs[job]["polls"] == 0 and not jobs[job]["done"]:
                    jobs[job]["done"] = "cancelled"
            job = body.get("prompt_id")  # an interrupt stops the running job
            if self.path == "/interrupt" and job in jobs and jobs[job]["polls"] > 0 and not jobs[job]["done"]:
                jobs[job]["done"] = "cancelled"
            return self._send(200, b"", "text/plain")
        super().do_POST()

    def prompt_of(self, body: dict) -> str:
        texts = [node["inputs"]["text"] for _, node in sorted(body.get("prompt", {}).items())
                 if isinstance(node.get("inputs", {}).get("text"), str)]
        return next((t for t in texts if t), "")

    def answer(self, body: dict, mode: str):
        workflow = body["prompt"]
        node_errors = {}
        for node_id, node in workflow.items():  # validation, as ComfyUI does it before queueing
            name = node.get("inputs", {}).get("ckpt_name")
            if node.get("class_type") == "CheckpointLoaderSimple" and name not in self.server.checkpoints:
                node_errors[node_id] = {"errors": [{
                    "type": "value_not_in_list", "message": "Value not in list",
                    "details": f"ckpt_name: '{name}' not in {list(self.server.checkpoints)}",
                    "extra_info": {"input_name": "ckpt_name", "input_config": None, "received_value": name}}],
                    "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}
        if node_errors:
            return self._send(400, {"error": {"type": "prompt_outputs_failed_validation",
                                              "message": "Prompt outputs failed validation", "details": "",
                                              "extra_info": {}}, "node_errors": node_errors})
        job = f"job{len(self.server.jobs)}"
        seeds = [n["inputs"].get("seed", n["inputs"].get("noise_seed")) for n in workflow.values()
                 if {"seed", "noise_seed"} & set(n.get("inputs", {}))]
        self.server.jobs[job] = {"id": job, "mode": mode, "polls": 0, "seed": seeds[0] if seeds else 0,
                                 "number": len(self.server.jobs), "done": None}
        self._send(200, {"prompt_id": job, "number": len(self.server.jobs), "node_errors": {}})


class OpenAIHandler(Handler):
    auth_header = f"Bearer {KEY}"
    errors = {401: {"error": {"message": "Incorrect API key provided: sk-wr***ng.", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}},
              429: {"error": {"message": "Rate limit reached for images per minute.", "type": "requests",
                              "param": None, "code": "rate_limit_exceeded"}},
              500: {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                              "type": "server_error", "param": None, "code": None}},
              400: {"error": {"message": "Your request was rejected as a result of our safety system.",
                              "type": "image_generation_user_error", "param": None, "code": "moderation_blocked"}}}

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


CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "my-model.safetensors", "sdxl.safetensors"]


def start(kind: str = "karlo", hang_seconds: float = 3.0, checkpoints: list[str] | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HANDLERS[kind])
    server.requests, server.counts, server.jobs, server.mode, server.hang_seconds = [], {}, {}, None, hang_seconds
    server.checkpoints = CHECKPOINTS if checkpoints is None else checkpoints
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
