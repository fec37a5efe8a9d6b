"""Client for Kakao Brain's Karlo text-to-image REST API (v2).

    export KARLO_API_KEY=...                      # never put the key in code
    python karlo_api.py "a castle, oil painting" -o castle.png

The key comes from KARLO_API_KEY (or api_key=) and never appears in a log line or an error message.
KARLO_API_URL points the client at another deployment (or a local test server). Every request has a
timeout; 429 and 5xx answers are retried a bounded number of times with backoff; every failure is one
exception, KarloError, whose message says what went wrong in words a person understands.
"""

import argparse
import base64
import io
import os
import sys
import time

import requests
from PIL import Image

DEFAULT_URL = "https://api.kakaobrain.com"
T2I_PATH = "/v2/inference/karlo/t2i"


class KarloError(Exception):
    """Any failure of the Karlo service, explained. `kind`: no_key, bad_key, quota, down, timeout,
    unreachable, bad_request, bad_response."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class KarloClient:
    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 1.0):
        self._key = api_key or os.environ.get("KARLO_API_KEY") or None
        self.url = (base_url or os.environ.get("KARLO_API_URL") or DEFAULT_URL).rstrip("/") + T2I_PATH
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.session = requests.Session()

    def __repr__(self) -> str:  # no key here, ever
        return f"KarloClient(url={self.url!r}, key={'set' if self._key else 'missing'})"

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def text_to_image(self, prompt: str, negative_prompt: str = "", **options) -> list[Image.Image]:
        """Images for a prompt. options: version, width, height, image_format, return_type, samples, ..."""
        if not self._key:
            raise KarloError("no_key", "No Karlo API key: set KARLO_API_KEY to generate images.")
        body = {"prompt": prompt, "negative_prompt": negative_prompt, **options}
        answer = self._post(body)
        try:
            images = [entry["image"] for entry in answer["images"]]
        except (KeyError, TypeError):
            raise KarloError("bad_response", "Karlo answered without images: unexpected response format.") from None
        if not images:
            raise KarloError("bad_response", "Karlo answered with no image.")
        return [self._to_image(image) for image in images]

    def _post(self, body: dict) -> dict:
        headers = {"Authorization": f"KakaoAK {self._key}", "Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except requests.Timeout:
                raise KarloError("timeout", f"Karlo did not answer within {self.timeout:g} s; try again later.") from None
            except requests.ConnectionError:
                raise KarloError("unreachable", f"Could not reach the Karlo service at {self.url}.") from None
            retryable = response.status_code == 429 or response.status_code >= 500
            if retryable and attempt < self.retries:
                time.sleep(self._delay(response, attempt))
                continue
            if response.status_code != 200:
                raise self._error(response)
            try:
                return response.json()
            except ValueError:
                raise KarloError("bad_response", "Karlo answered with something that is not JSON.") from None
        raise AssertionError("unreachable")

    def _delay(self, response: requests.Response, attempt: int) -> float:
        retry_after = response.headers.get("Retry-After", "")
        wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else self.backoff * 2 ** attempt
        return min(wait, 10.0)  # bounded: the demo must not hang

    def _error(self, response: requests.Response) -> KarloError:
        try:
            detail = str(response.json().get("msg", ""))
        except (ValueError, AttributeError):
            detail = ""
        detail = self._scrub(detail)[:200]
        status = response.status_code
        if status in (401, 403):
            return KarloError("bad_key", f"Karlo rejected the API key (HTTP {status}); check KARLO_API_KEY. {detail}")
        if status == 429:
            return KarloError("quota", f"Karlo's rate limit or quota is used up (HTTP 429); try later. {detail}")
        if status >= 500:
            return KarloError("down", f"The Karlo service is failing (HTTP {status}); try later. {detail}")
        return KarloError("bad_request", f"Karlo refused the request (HTTP {status}): {detail or 'no reason given'}")

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _to_image(self, image: str) -> Image.Image:
        """A PIL image from a URL or a base64 string, whichever the service sent."""
        try:
            if image.startswith(("http://", "https://")):
                response = self.session.get(image, timeout=self.timeout)
                response.raise_for_status()
                data = response.content
            else:
                data = base64.b64decode(image, validate=True)
            picture = Image.open(io.BytesIO(data))
            picture.load()
            return picture
        except requests.Timeout:
            raise KarloError("timeout", f"The image download did not finish within {self.timeout:g} s.") from None
        except requests.RequestException:
            raise KarloError("bad_response", "Karlo's image link could not be downloaded.") from None
        except (ValueError, OSError):
            raise KarloError("bad_response", "Karlo sent image data that is not a readable image.") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("--negative_prompt", default="", help="what the image should not show")
    parser.add_argument("-o", "--output", default="karlo.png", help="image file to write")
    parser.add_argument("--api_key", default=None, help="API key (default: $KARLO_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per request")
    args = parser.parse_args()
    try:
        image = KarloClient(args.api_key, timeout=args.timeout).text_to_image(args.prompt, args.negative_prompt)[0]
    except KarloError as e:
        sys.exit(f"error: {e}")
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
