"""Image back-ends: draw a prompt with the service you already run. BACKENDS is the one list of them.

    python image_backends.py "a castle, oil painting" -o castle.png                      # Karlo (KARLO_API_KEY)
    python image_backends.py "a castle" --image_backend a1111 --image_steps 20       # AUTOMATIC1111, Forge, SD.Next
    python image_backends.py "a castle" --image_backend comfyui --image_model v1-5-pruned-emaonly.safetensors
    OPENAI_API_KEY=... python image_backends.py "a castle" --image_backend openai --image_model gpt-image-1
    python image_backends.py "a castle" --image_backend diffusers --image_model stabilityai/sd-turbo --image_steps 1

A back-end is a small class with one method to draw: draw(prompt, negative_prompt, seed) -> PIL image. The HTTP
ones (Karlo among them; karlo_api.py is its seed-named face) share one client: a timeout on every request, bounded
retries on 429 and 5xx answers, one error type (ImageError) whose message carries the server's own words, and no
key in any log line or error.
"""

import base64
import copy
import io
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import requests
from PIL import Image

import utils

BACKEND_NAMES = ["karlo", "a1111", "comfyui", "openai", "diffusers"]


@dataclass
class ImageArguments:
    bounds: ClassVar[dict] = {"image_steps": (1, None), "image_guidance": (0, None), "image_width": (8, 4096),
                              "image_height": (8, 4096), "image_timeout": (0.1, None)}
    image_backend: str = field(default="karlo", metadata={
        "choices": BACKEND_NAMES, "help": "Who draws the images: karlo (Kakao's API, KARLO_API_KEY), a1111 "
        "(AUTOMATIC1111/Forge/SD.Next web API), comfyui, openai (any OpenAI-compatible images endpoint) or diffusers "
        "(a local pipeline)."})
    image_url: str | None = field(default=None, metadata={
        "help": "Address of the image server. Default: a1111 http://127.0.0.1:7860, comfyui http://127.0.0.1:8188, "
                "openai https://api.openai.com, karlo $KARLO_API_URL or Kakao's."})
    image_model: str | None = field(default=None, metadata={
        "help": "comfyui: checkpoint file of the built-in workflow (default v1-5-pruned-emaonly.safetensors); openai: "
                "model name (default gpt-image-1); diffusers: Hub name or folder (default stabilityai/sd-turbo)."})
    comfyui_workflow: str | None = field(default=None, metadata={
        "help": "comfyui: your own workflow, exported with 'Save (API Format)'; the prompt, negative prompt and seed "
                "go into its text and sampler nodes, and its own steps, size, guidance and model are used."})
    image_steps: int | None = field(default=None, metadata={
        "help": "Sampling steps (a1111, comfyui: default 20; diffusers: the pipeline's own; SD-Turbo takes 1 to 4)."})
    image_guidance: float | None = field(default=None, metadata={
        "help": "Classifier-free guidance scale (a1111, comfyui: default 7; diffusers: the pipeline's own, 0 for "
                "SD-Turbo)."})
    image_width: int = field(default=512, metadata={"help": "Image width in pixels (openai: 1024 unless given)."})
    image_height: int = field(default=512, metadata={"help": "Image height in pixels (openai: 1024 unless given)."})
    image_timeout: float = field(default=60.0, metadata={
        "aliases": ["--karlo_timeout"], "help": "Seconds to wait for the image service per request (comfyui: per job, "
                                                "which is cancelled on the server when the time is up)."})
    image_key_env: str | None = field(default=None, metadata={
        "help": "Environment variable holding the key: openai OPENAI_API_KEY, a1111 A1111_API_AUTH (user:password, "
                "for a server started with --api-auth), karlo KARLO_API_KEY."})
    image_device: str = field(default="auto", metadata={"help": "diffusers: auto, cpu or cuda (fp16 on CUDA)."})


class ImageError(Exception):
    """Any failure to draw, explained. kind: no_key, bad_key, quota, down, timeout, unreachable, bad_request,
    bad_response, setup; and notice, for what problem() finds that does not stop drawing."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def read_image(data: bytes, who: str) -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
        return picture
    except (OSError, ValueError):
        raise ImageError("bad_response", f"{who} sent image data that is not a readable image.") from None


def read_base64_image(text: str, who: str) -> Image.Image:
    try:  # some servers prefix "data:image/png;base64,"
        return read_image(base64.b64decode(text.split(",")[-1], validate=True), who)
    except (ValueError, AttributeError):
        raise ImageError("bad_response", f"{who} sent image data that is not base64.") from None


class HTTPBackend:
    """What the HTTP back-ends share: one session, a timeout per request, bounded retries, errors in the server's
    own words (detail() reads each service's error body), and a key that never reaches a message."""
    title, default_url, health_path, key_env, start_hint = "", "", "/", None, ""
    takes_negative_prompt = True

    def __init__(self, args: ImageArguments, key: str | None = None):
        self.args = args
        self.url = (args.image_url or self.default_url).rstrip("/")
        self.timeout, self.retries, self.backoff = args.image_timeout, 2, 1.0
        self.key_env = args.image_key_env or self.key_env
        self._key = key or (os.environ.get(self.key_env) if self.key_env else None) or None
        self.session = requests.Session()

    def __repr__(self) -> str:  # no key here, ever
        return f"{type(self).__name__}(url={self.url!r}, key={'set' if self._key else 'missing'})"

    def problem(self) -> ImageError | None:
        """What stops drawing, checked once at start: a server that cannot be reached or refuses the key."""
        try:
            self.request("GET", self.health_path, timeout=min(self.timeout, 5.0), retries=0)
        except ImageError as e:
            if e.kind in ("unreachable", "timeout", "bad_key"):
                return e
        return None

    def request(self, method: str, path: str, timeout: float | None = None, retries: int | None = None,
                **kwargs) -> requests.Response:
        url = path if path.startswith(("http://", "https://")) else self.url + path
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                response = self.session.request(method, url, timeout=timeout or self.timeout, **kwargs)
            except requests.Timeout:
                raise ImageError("timeout", f"{self.title} did not answer within {timeout or self.timeout:g} s; "
                                            f"try again later, or raise --image_timeout.") from None
            except requests.RequestException:
                raise ImageError("unreachable", f"Could not reach {self.title} at {self.url}: is it running? "
                                                f"{self.start_hint}".strip()) from None
            if (response.status_code == 429 or response.status_code >= 500) and attempt < retries:
                retry_after = response.headers.get("Retry-After", "")
                time.sleep(min(float(retry_after) if retry_after.replace(".", "", 1).isdigit()
                               else self.backoff * 2 ** attempt, 10.0))  # bounded: the demo must not hang
                continue
            if response.status_code != 200:
                raise self.error(response)
            return response
        raise AssertionError("unreachable")

    def json(self, response: requests.Response) -> dict:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ImageError("bad_response", f"{self.title} answered with something that is not a JSON object.")
        return answer

    def detail(self, answer) -> str:
        """The server's own words in an error body: {"error": {"message"}} (OpenAI), {"detail": ...} (FastAPI, as
        AUTOMATIC1111), {"error", "errors"} (AUTOMATIC1111's exceptions), {"msg"} (Karlo)."""
        if not isinstance(answer, dict):
            return ""
        parts = []
        for key in ("error", "detail", "errors", "msg", "message"):
            value = answer.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or ""
            if isinstance(value, list):  # FastAPI's validation errors: [{"loc": [...], "msg": ...}]
                value = "; ".join(f"{'.'.join(map(str, v.get('loc', [])[1:]))}: {v.get('msg', '')}".lstrip(": ")
                                  if isinstance(v, dict) else str(v) for v in value)
            if value and str(value) not in parts:
                parts.append(str(value))
        return ": ".join(parts)

    def error(self, response: requests.Response) -> ImageError:
        try:
            detail = self.detail(response.json())
        except ValueError:
            detail = ""
        detail = detail.replace(self._key, "***") if self._key else detail
        status, detail = response.status_code, " ".join(detail.split())[:500]
        if status in (401, 403):
            where = f"check {self.key_env}" if self.key_env else "check the server's access settings"
            return ImageError("bad_key", f"{self.title} refused the credentials (HTTP {status}); {where}. "
                                         f"{detail}".strip())
        if status == 429:
            return ImageError("quota", f"{self.title}'s rate limit or quota is used up (HTTP 429); try later. "
                                       f"{detail}".strip())
        if status >= 500:
            return ImageError("down", f"{self.title} is failing (HTTP {status}); try later. {detail}".strip())
        return ImageError("bad_request", f"{self.title} refused the request (HTTP {status}): "
                                         f"{detail or 'no reason given'}")


class KarloBackend(HTTPBackend):
    """Kakao Brain's Karlo: POST /v2/inference/karlo/t2i with "Authorization: KakaoAK <key>"; images come back as
    links or base64 strings."""
    title, default_url, key_env = "Karlo", "https://api.kakaobrain.com", "KARLO_API_KEY"
    path = "/v2/inference/karlo/t2i"

    def __init__(self, args: ImageArguments, key: str | None = None):
        args = copy.copy(args)
        args.image_url = args.image_url or os.environ.get("KARLO_API_URL")
        super().__init__(args, key)
        self.url = self.url + self.path if not self.url.endswith(self.path) else self.url

    def problem(self) -> ImageError | None:  # Karlo has no free endpoint to ask; a key is what it needs first
        return None if self._key else ImageError(
            "no_key", f"No Karlo API key: set `{self.key_env}` and restart to draw images.")

    def text_to_image(self, prompt: str, negative_prompt: str = "", **options) -> list[Image.Image]:
        """Every image Karlo draws for a prompt. options: version, width, height, image_format, return_type, ..."""
        if not self._key:
            raise ImageError("no_key", f"No Karlo API key: set {self.key_env} to generate images.")
        body = {"prompt": prompt, "negative_prompt": negative_prompt, **options}
        # The key goes with this request only, never to the host of an image link.
        answer = self.json(self.request("POST", self.url, json=body, headers={"Authorization": f"KakaoAK {self._key}"}))
        images = answer.get("images")
        if not isinstance(images, list) or not images or \
                not all(isinstance(i, dict) and i.get("image") for i in images):
            raise ImageError("bad_response", f"{self.title} answered with no image.")
        return [read_image(self.request("GET", i["image"], retries=0).content, self.title)
                if i["image"].startswith(("http://", "https://")) else read_base64_image(i["image"], self.title)
                for i in images]

    def draw(self, prompt: str, negative_prompt: str = "", seed: int | None = None) -> Image.Image:
        return self.text_to_image(prompt, negative_prompt)[0]  # Karlo's own size and seed, as the seed had it


class A1111Backend(HTTPBackend):
    """AUTOMATIC1111, Forge and SD.Next: POST /sdapi/v1/txt2img, base64 images back."""
    title, default_url, health_path = "AUTOMATIC1111", "http://127.0.0.1:7860", "/sdapi/v1/options"
    key_env = "A1111_API_AUTH"
    start_hint = "Start it with --api (python launch.py --api)."

    def __init__(self, args: ImageArguments):
        super().__init__(args)
        if self._key:  # --api-auth user:password is HTTP basic authentication
            self.session.auth = tuple(self._key.split(":", 1)) if ":" in self._key else (self._key, "")

    def draw(self, prompt: str, negative_prompt: str = "", seed: int | None = None) -> Image.Image:
        body = {"prompt": prompt, "negative_prompt": negative_prompt, "steps": self.args.image_steps or 20,
                "cfg_scale": 7.0 if self.args.image_guidance is None else self.args.image_guidance,
                "width": self.args.image_width, "height": self.args.image_height, "seed": -1 if seed is None else seed}
        images = self.json(self.request("POST", "/sdapi/v1/txt2img", json=body)).get("images")
        if not images or not isinstance(images, list):
            raise ImageError("bad_response", f"{self.title} answered with no image.")
        return read_base64_image(images[0], self.title)


# ComfyUI's basic text-to-image graph in API format; the checkpoint name is a flag.
COMFYUI_WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "keyword-generator", "images": ["8", 0]}},
}


class ComfyUIBackend(HTTPBackend):
    """ComfyUI: POST /prompt with a workflow graph, poll GET /history/{id}, fetch GET /view. A job still running when
    --image_timeout passes is cancelled on the server (POST /queue delete, POST /interrupt)."""
    title, default_url, health_path = "ComfyUI", "http://127.0.0.1:8188", "/system_stats"
    start_hint = "Start it with python main.py --listen 127.0.0.1 --port 8188."
    poll_seconds = 0.5

    def __init__(self, args: ImageArguments):
        super().__init__(args)
        if args.comfyui_workflow:
            self.workflow = self.load_workflow(args.comfyui_workflow)
        else:
            self.workflow = copy.deepcopy(COMFYUI_WORKFLOW)
            self.workflow["4"]["inputs"]["ckpt_name"] = args.image_model or "v1-5-pruned-emaonly.safetensors"
            self.workflow["5"]["inputs"].update(width=args.image_width, height=args.image_height)
            self.workflow["3"]["inputs"].update(steps=args.image_steps or 20,
                                                cfg=7.0 if args.image_guidance is None else args.image_guidance)
        self.positive, self.negative, self.samplers = self.find_nodes(self.workflow,
                                                                      args.comfyui_workflow or "built-in")

    def ignored_flags(self) -> list[str]:
        """The flags a user's own workflow overrides: its nodes hold their own values."""
        if not self.args.comfyui_workflow:
            return []
        given = {"--image_steps": self.args.image_steps is not None, "--image_guidance": self.args.image_guidance
                 is not None, "--image_model": self.args.image_model is not None,
                 "--image_width": self.args.image_width != 512, "--image_height": self.args.image_height != 512}
        return [flag for flag, set_by_user in given.items() if set_by_user]

    def problem(self) -> ImageError | None:
        """Unreachable, or reachable without the checkpoint the workflow loads; and the flags a workflow ignores."""
        notes = []
        if self.ignored_flags():
            notes.append(f"{', '.join(self.ignored_flags())} {'is' if len(self.ignored_flags()) == 1 else 'are'} "
                         f"ignored with --comfyui_workflow: the workflow's own values are used.")
        unreachable = super().problem()
        if unreachable:
            return ImageError(unreachable.kind, " ".join([str(unreachable), *notes]))
        wanted = [node["inputs"]["ckpt_name"] for node in self.workflow.values()
                  if node.get("class_type") == "CheckpointLoaderSimple"
                  and isinstance(node["inputs"].get("ckpt_name"), str)]
        installed = self.installed_checkpoints()
        missing = [name for name in wanted if installed is not None and name not in installed]
        if missing:
            notes.insert(0, f"{self.title} has no checkpoint {', '.join(missing)}; it has "
                            f"{', '.join(installed) if installed else 'none'} (pass one with --image_model).")
        return ImageError("notice", " ".join(notes)) if notes else None

    def installed_checkpoints(self) -> list[str] | None:
        """The checkpoints CheckpointLoaderSimple offers (GET /object_info/CheckpointLoaderSimple), None if unknown."""
        try:
            info = self.json(self.request("GET", "/object_info/CheckpointLoaderSimple", timeout=min(self.timeout, 5.0),
                                          retries=0))
            choices = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        except (ImageError, KeyError, TypeError):
            return None
        # [[names...], {options}] in ComfyUI's classic node schema, ["COMBO", {"options": [names...]}] in the newer one
        if isinstance(choices[0], list):
            names = choices[0]
        else:
            names = choices[1].get("options", []) if len(choices) > 1 and isinstance(choices[1], dict) else []
        return [str(n) for n in names]

    def detail(self, answer) -> str:
        """A refused workflow's reason, node by node: {"error": {"message"}, "node_errors": {id: {"class_type",
        "errors": [{"message", "details"}]}}}."""
        if not isinstance(answer, dict) or not isinstance(answer.get("node_errors"), dict) or not answer["node_errors"]:
            return super().detail(answer)
        error = answer.get("error")
        parts = [error.get("message", "") if isinstance(error, dict) else str(error or "")]
        for node, report in answer["node_errors"].items():
            reasons = "; ".join(": ".join(filter(None, (e.get("message"), e.get("details"))))
                                for e in report.get("errors", []) if isinstance(e, dict))
            parts.append(f"node {node} ({report.get('class_type', '?')}): {reasons}")
            if "ckpt_name" in reasons:
                installed = self.installed_checkpoints()
                if installed is not None:
                    parts[-1] += f" (installed checkpoints: {', '.join(installed) or 'none'})"
        return "; ".join(p for p in parts if p)

    @staticmethod
    def load_workflow(path: str) -> dict:
        try:
            with open(path) as f:
                workflow = json.load(f)
        except (OSError, ValueError) as e:
            raise ImageError("setup", f"Cannot read the ComfyUI workflow {path}: {e}") from None
        if not isinstance(workflow, dict) or "nodes" in workflow or not all(
                isinstance(node, dict) and "class_type" in node for node in workflow.values()):
            raise ImageError("setup", f"{path} is not a ComfyUI workflow in API format: in ComfyUI use "
                                      f"'Save (API Format)' (enable the dev mode options in its settings).")
        return workflow

    @staticmethod
    def find_nodes(workflow: dict, name: str) -> tuple[str, str | None, list[str]]:
        """The text node the prompt goes into, the negative one (if any), and the sampler nodes (for the seed)."""
        texts = [k for k, node in workflow.items() if isinstance(node.get("inputs", {}).get("text"), str)]
        if not texts:
            raise ImageError("setup", f"The ComfyUI workflow {name} has no text node (a CLIPTextEncode with a text "
                                      f"input) to put the prompt in.")
        samplers = [k for k, node in workflow.items() if {"positive", "negative"} <= set(node.get("inputs", {}))]

        def linked(role: str) -> str | None:
            return next((node["inputs"][role][0] for node in map(workflow.get, samplers)
                         if isinstance(node["inputs"][role], list) and node["inputs"][role][0] in texts), None)
        positive = linked("positive") or texts[0]
        negative = linked("negative")
        seeded = [k for k, node in workflow.items() if {"seed", "noise_seed"} & set(node.get("inputs", {}))]
        return positive, negative if negative != positive else None, seeded

    @staticmethod
    def execution_error(status: dict) -> str:
        """What failed in a job's history status: the execution_error message names the node and the exception."""
        for message in status.get("messages", []):
            if isinstance(message, list) and len(message) == 2 and message[0] in ("execution_error",
                                                                                  "execution_interrupted"):
                data = message[1] if isinstance(message[1], dict) else {}
                where = f"node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
                if message[0] == "execution_interrupted":
                    return f"{where} was interrupted"
                exception = ": ".join(filter(None, (data.get("exception_type"), data.get("exception_message"))))
                return f"{where} failed: {' '.join(exception.split()) or 'no reason given'}"
        return "no reason given"

    def cancel(self, job: str) -> None:
        """Take a job off the server: out of the queue if it waits, interrupted if it runs (only that job)."""
        try:
            self.request("POST", "/queue", json={"delete": [job]}, timeout=5.0, retries=0)
            queue = self.json(self.request("GET", "/queue", timeout=5.0, retries=0))
            running = [item[1] for item in queue.get("queue_running", []) if isinstance(item, list) and len(item) > 1]
            if job in running:
                self.request("POST", "/interrupt", json={"prompt_id": job}, timeout=5.0, retries=0)
        except ImageError:
            pass  # the server went away: nothing left to cancel

    def draw(self, prompt: str, negative_prompt: str = "", seed: int | None = None) -> Image.Image:
        workflow = copy.deepcopy(self.workflow)
        workflow[self.positive]["inputs"]["text"] = prompt
        if self.negative:
            workflow[self.negative]["inputs"]["text"] = negative_prompt
        seed = int.from_bytes(os.urandom(4), "big") if seed is None else seed
        for node in self.samplers:
            key = "seed" if "seed" in workflow[node]["inputs"] else "noise_seed"
            workflow[node]["inputs"][key] = seed
        answer = self.json(self.request("POST", "/prompt", json={"prompt": workflow, "client_id": uuid.uuid4().hex}))
        job = answer.get("prompt_id")
        if not job:
            raise ImageError("bad_response", f"{self.title} queued no job: {self.detail(answer) or 'no reason given'}")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            entry = self.json(self.request("GET", f"/history/{job}")).get(job)
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise ImageError("bad_request", f"{self.title} could not run the workflow: "
                                                    f"{self.execution_error(status)}")
                images = [image for output in entry.get("outputs", {}).values() for image in output.get("images", [])]
                if images:
                    picture = self.request("GET", "/view", params={k: images[0].get(k, "") for k in
                                                                   ("filename", "subfolder", "type")})
                    return read_image(picture.content, self.title)
                if status.get("completed"):
                    raise ImageError("bad_response", f"{self.title} finished the job without an image: does the "
                                                     f"workflow end in a SaveImage node?")
            time.sleep(self.poll_seconds)
        self.cancel(job)
        raise ImageError("timeout", f"{self.title} did not finish the image within {self.timeout:g} s, so the job was "
                                    f"cancelled; raise --image_timeout to wait longer.")


class OpenAIBackend(HTTPBackend):
    """Any OpenAI-compatible images endpoint: POST /v1/images/generations."""
    title, default_url, health_path = "OpenAI images API", "https://api.openai.com", "/v1/models"
    key_env = "OPENAI_API_KEY"
    takes_negative_prompt = False

    def __init__(self, args: ImageArguments):
        super().__init__(args)
        self.path = "/images/generations" if self.url.endswith("/v1") else "/v1/images/generations"
        if self._key:
            self.session.headers["Authorization"] = f"Bearer {self._key}"

    def problem(self) -> ImageError | None:
        if not self._key and self.url == self.default_url:
            return ImageError("no_key", f"No key for the OpenAI images API: set `{self.key_env}` and restart to draw "
                                        f"images.")
        return super().problem()

    def draw(self, prompt: str, negative_prompt: str = "", seed: int | None = None) -> Image.Image:
        width, height = self.args.image_width, self.args.image_height
        size = "1024x1024" if (width, height) == (512, 512) else f"{width}x{height}"
        body = {"model": self.args.image_model or "gpt-image-1", "prompt": prompt, "n": 1, "size": size}
        data = self.json(self.request("POST", self.path, json=body)).get("data")
        if not data or not isinstance(data, list) or not isinstance(data[0], dict):
            raise ImageError("bad_response", f"{self.title} answered with no image.")
        if data[0].get("b64_json"):
            return read_base64_image(data[0]["b64_json"], self.title)
        if data[0].get("url"):
            return read_image(self._download(data[0]["url"]), self.title)
        raise ImageError("bad_response", f"{self.title} answered with no image.")

    def _download(self, url: str) -> bytes:
        try:
            response = requests.get(url, timeout=self.timeout)  # no key: the link is signed
            response.raise_for_status()
            return response.content
        except requests.RequestException:
            raise ImageError("bad_response", f"{self.title}'s image link could not be downloaded.") from None


class DiffusersBackend:
    """A local diffusers pipeline (AutoPipelineForText2Image), loaded once, on the GPU in fp16 where there is one."""
    title = "diffusers pipeline"
    takes_negative_prompt = True

    def __init__(self, args: ImageArguments):
        try:
            import torch
            from diffusers import AutoPipelineForText2Image
            from diffusers.utils import logging as diffusers_logging
        except ImportError:
            raise ImageError("setup", "The diffusers back-end needs the diffusers package: "
                                      "pip install diffusers") from None
        diffusers_logging.disable_progress_bar()
        self.args, self.torch = args, torch
        self.model = args.image_model or "stabilityai/sd-turbo"
        cuda = torch.cuda.is_available() and args.image_device in ("auto", "cuda")
        self.device = "cuda" if cuda else "cpu"
        self.url = f"{self.model} ({self.device})"
        try:
            self.pipeline = AutoPipelineForText2Image.from_pretrained(
                self.model, dtype=torch.float16 if cuda else torch.float32).to(self.device)
        except (OSError, ValueError) as e:
            raise ImageError("setup", f"Could not load the diffusers pipeline {self.model}: {str(e)[:300]}") from None
        self.pipeline.set_progress_bar_config(disable=True)

    def problem(self) -> ImageError | None:
        return None  # loaded at start, or make_backend failed

    def draw(self, prompt: str, negative_prompt: str = "", seed: int | None = None) -> Image.Image:
        options = {"num_inference_steps": self.args.image_steps, "guidance_scale": self.args.image_guidance,
                   "width": self.args.image_width, "height": self.args.image_height}
        generator = self.torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        try:
            with self.torch.inference_mode():
                return self.pipeline(prompt, negative_prompt=negative_prompt or None, generator=generator,
                                     **{k: v for k, v in options.items() if v is not None}).images[0]
        except (RuntimeError, ValueError) as e:  # out of memory, a size the model cannot take...
            raise ImageError("bad_request", f"The diffusers pipeline failed: {str(e)[:300]}") from None


BACKENDS = {"karlo": KarloBackend, "a1111": A1111Backend, "comfyui": ComfyUIBackend, "openai": OpenAIBackend,
            "diffusers": DiffusersBackend}
assert list(BACKENDS) == BACKEND_NAMES


def make_backend(args: ImageArguments):
    """The back-end the arguments name; ImageError if it cannot be set up (bad workflow, no pipeline...)."""
    if args.image_backend not in BACKENDS:
        raise ImageError("setup", f"Unknown image back-end {args.image_backend!r}; choose from {', '.join(BACKENDS)}.")
    return BACKENDS[args.image_backend](args)


def describe(backend) -> str:
    return f"{backend.title} at {backend.url}"


def main() -> None:
    from transformers import HfArgumentParser
    parser = HfArgumentParser(ImageArguments, description=__doc__)
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("--negative_prompt", default="", help="what the image should not show")
    parser.add_argument("--seed", type=int, default=None, help="seed of the image (default: random)")
    parser.add_argument("-o", "--output", default="image.png", help="image file to write")
    args, extra = parser.parse_args_into_dataclasses()
    try:
        utils.check_bounds(args)
        backend = make_backend(args)
        image = backend.draw(extra.prompt, extra.negative_prompt, extra.seed)
    except (ImageError, utils.InputError) as e:
        sys.exit(f"error: {e}")
    image.save(extra.output)
    print(f"wrote {extra.output} ({describe(backend)})")


if __name__ == "__main__":
    main()
