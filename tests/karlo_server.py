"""A local HTTP server that speaks Karlo's v2 text-to-image wire format, for tests.

Behaviour is chosen per request by the prompt's first word (or, for the app tests, by `server.mode`):
url, base64, unauthorized, ratelimit_once, down, hang, garbage. Every request is recorded.
"""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

KEY = "test-key-0123456789abcdef"


def png_bytes(color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return buffer.getvalue()


class KarloHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type="application/json", headers=None):
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
            self._send(200, png_bytes((200, 40, number % 256)), "image/png")
        else:
            self._send(404, b"{}")

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = server.mode or body["prompt"].split()[0]
        if self.headers.get("Authorization") != f"KakaoAK {KEY}" or mode == "unauthorized":
            return self._send(401, json.dumps({"code": -401, "msg": "invalid key"}).encode())
        if mode == "ratelimit_once" and server.counts.setdefault(mode, 0) == 0:
            server.counts[mode] = 1
            return self._send(429, json.dumps({"code": -429, "msg": "too many"}).encode(), headers={"Retry-After": "0"})
        if mode == "down":
            return self._send(500, json.dumps({"code": -500, "msg": "internal"}).encode())
        if mode == "hang":
            time.sleep(server.hang_seconds)
            return self._send(200, b"{}")
        if mode == "garbage":
            return self._send(200, b"<html>not json", "text/html")
        if body.get("return_type") == "base64_string" or mode == "base64":
            image = base64.b64encode(png_bytes((40, 200, len(server.requests) % 256))).decode()
        else:
            image = f"http://127.0.0.1:{server.server_port}/images/{len(server.requests)}.png"
        answer = {"id": "t2i-1", "model_version": "v2.1", "images": [{"id": "1", "seed": 7, "image": image,
                                                                      "nsfw_content_detected": False}]}
        self._send(200, json.dumps(answer).encode())


def start(hang_seconds: float = 3.0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), KarloHandler)
    server.requests, server.counts, server.mode, server.hang_seconds = [], {}, None, hang_seconds
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
