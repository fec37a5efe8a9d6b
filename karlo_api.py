"""Client for Kakao Brain's Karlo text-to-image REST API (v2), the seed's image service.

    export KARLO_API_KEY=...                      # never put the key in code
    python karlo_api.py "a castle, oil painting" -o castle.png

A thin face over image_backends.KarloBackend, which shares the other HTTP back-ends' client: the key comes from
KARLO_API_KEY (or api_key=) and never appears in a log line or an error message; KARLO_API_URL points the client at
another deployment (or a local test server); every request has a timeout; 429 and 5xx answers are retried a bounded
number of times with backoff; every failure is one exception, KarloError, whose message says what went wrong.
"""

import argparse
import sys

from PIL import Image

from image_backends import ImageArguments, ImageError, KarloBackend

KarloError = ImageError  # `kind`: no_key, bad_key, quota, down, timeout, unreachable, bad_request, bad_response


class KarloClient:
    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 1.0):
        self._backend = KarloBackend(ImageArguments(image_backend="karlo", image_url=base_url, image_timeout=timeout),
                                     key=api_key)
        self._backend.retries, self._backend.backoff = retries, backoff
        self.url = self._backend.url

    def __repr__(self) -> str:  # no key here, ever
        return f"KarloClient(url={self.url!r}, key={'set' if self.has_key else 'missing'})"

    @property
    def has_key(self) -> bool:
        return self._backend.problem() is None

    def text_to_image(self, prompt: str, negative_prompt: str = "", **options) -> list[Image.Image]:
        """Images for a prompt. options: version, width, height, image_format, return_type, samples, ..."""
        return self._backend.text_to_image(prompt, negative_prompt, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("--negative_prompt", default="", help="what the image should not show")
    parser.add_argument("-o", "--output", default="karlo.png", help="image file to write")
    parser.add_argument("--api_key", default=None, help="API key (default: $KARLO_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per request")
    args = parser.parse_args()
    if args.timeout <= 0:
        sys.exit(f"error: --timeout must be more than 0 seconds; got {args.timeout:g}.")
    try:
        image = KarloClient(args.api_key, timeout=args.timeout).text_to_image(args.prompt, args.negative_prompt)[0]
    except KarloError as e:
        sys.exit(f"error: {e}")
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
