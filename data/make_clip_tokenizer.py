"""Write data/clip-tokenizer: Stable Diffusion's CLIP tokenizer (OpenAI CLIP's byte-level BPE, MIT licence) as the
vocab.json and merges.txt that transformers' CLIPTokenizer loads, from the vocabulary open_clip's wheel ships.

    pip download --no-deps open_clip_torch && python data/make_clip_tokenizer.py open_clip_torch-*.whl

The vocabulary is built the way CLIP builds it: the 256 byte symbols, the same with the end-of-word mark </w>,
one entry per merge (the first 48,894 of the file), then the start and end tokens: 49,408 ids.
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "clip-tokenizer"
MERGES = 49408 - 256 * 2 - 2  # CLIP's vocabulary size less the byte symbols and the two special tokens


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte, in byte order of CLIP's table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help="open_clip_torch wheel (or the bpe_simple_vocab_16e6.txt.gz inside it)")
    args = parser.parse_args()
    if args.wheel.endswith(".whl"):
        data = zipfile.ZipFile(args.wheel).read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    else:
        data = Path(args.wheel).read_bytes()
    merges = gzip.decompress(data).decode("utf-8").split("\n")[1:MERGES + 1]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (OUTPUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"wrote {OUTPUT}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
