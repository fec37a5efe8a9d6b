"""The memory at scale: build time, size on disk and query latency (p50, p95) of memory.py's index, for the
stand-in corpus and for a synthetic corpus of 10^8 tokens (about 1.8 M prompts, DiffusionDB's size).

The synthetic prompts are made of the stand-in's own keywords, drawn as often as people use them (each prompt the
keyword count of a random stand-in prompt), so the index sees the repetition real prompts have. A query is what a
decoding step asks: the longest suffix of a context seen in the corpus, looked up from scratch, and the tokens that
followed it; a decoding step advances every row by one token: 3 rows (the demo: one prompt's beams) or 192 (eval.py:
64 prompts, 3 beams). A few rows are searched row by row, many with numpy (memory.SCALAR_ROWS).

    python bench/memory_index.py                                   # stand-in, then 10^8 tokens (a few minutes)
    python bench/memory_index.py --synthetic_tokens 10000000       # a smaller synthetic corpus
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when imported
import machine  # noqa: E402

import memory as prompt_memory  # noqa: E402
import utils  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sd-discord-prompts"
BPE = Path(__file__).resolve().parent / "runs" / "bpe-8k"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[int(q * (len(values) - 1))], 3)


def synthetic(prompts: list[str], tokenizer, tokens: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Prompts of the corpus's keywords at their natural frequencies, until they hold `tokens` tokens. Every
    keyword is drawn at once and the prompts' tokens laid out with numpy: per-prompt draws took hours at 10^8."""
    rng = np.random.default_rng(seed)
    keywords = [k for p in prompts for k in utils.split_keywords(p)]
    vocabulary, counts = np.unique(keywords, return_counts=True)
    comma = tokenizer(",", add_special_tokens=False)["input_ids"]
    first = tokenizer(list(vocabulary), add_special_tokens=False)["input_ids"]
    later = [comma + ids for ids in tokenizer([" " + k for k in vocabulary], add_special_tokens=False)["input_ids"]]
    sizes = np.array([len(utils.split_keywords(p)) for p in prompts])
    probabilities = counts / counts.sum()
    # One table of each keyword's tokens, as the first keyword of a prompt and as a later one (", " before it).
    flat = [np.concatenate([np.asarray(ids, dtype=np.int64) for ids in t]) for t in (first, later)]
    lengths = [np.array([len(ids) for ids in t]) for t in (first, later)]
    offsets = [np.cumsum(n) - n for n in lengths]
    offsets[1] += len(flat[0])  # the later keywords' table follows the first keywords' in `source`
    source = np.concatenate(flat)
    documents, texts, total = [], [], 0
    while total < tokens:  # in chunks of about a tenth of the corpus
        prompt_sizes = rng.choice(sizes, size=max(1000, int(tokens / 10 / (np.dot(probabilities, lengths[1]) *
                                                                         sizes.mean() + 2))))
        picks = rng.choice(len(vocabulary), size=int(prompt_sizes.sum()), p=probabilities)
        opens = np.zeros(len(picks), dtype=bool)
        opens[np.concatenate([[0], np.cumsum(prompt_sizes)[:-1]])] = True
        pick_lengths = np.where(opens, lengths[0][picks], lengths[1][picks])
        pick_offsets = np.where(opens, offsets[0][picks], offsets[1][picks])
        within = np.arange(int(pick_lengths.sum())) - np.repeat(np.cumsum(pick_lengths) - pick_lengths, pick_lengths)
        ids = source[np.repeat(pick_offsets, pick_lengths) + within]
        ends = np.cumsum(pick_lengths)[np.flatnonzero(np.append(opens[1:], True))]  # each prompt's end in ids
        begin, pick = 0, 0
        for size, end in zip(prompt_sizes, ends):
            if total >= tokens:
                break
            documents.append(np.append(ids[begin:end], tokenizer.eos_token_id))
            texts.append(", ".join(vocabulary[picks[pick:pick + size]]))
            total += end - begin + 2
            begin, pick = end, pick + size
    return documents, texts


def measure(name: str, documents, texts: list[str], tokenizer, contexts: list[list[int]], queries: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    try:
        started = time.perf_counter()
        memory = prompt_memory.PromptMemory.build(documents, texts, tokenizer, str(folder), progress=False)
        build = time.perf_counter() - started
        size = sum(f.stat().st_size for f in (folder / prompt_memory.MEMORY_DIR).iterdir())
        token_files = sum((folder / prompt_memory.MEMORY_DIR / f).stat().st_size
                          for f in ("tokens.npy", "suffix_array.npy", "prompt_starts.npy"))
        single = []
        for context in contexts[:queries]:  # one context, from scratch: match and continuations
            started = time.perf_counter()
            memory.continuations(memory.match([context]))
            single.append(1000 * (time.perf_counter() - started))
        steps = {rows: decoding_steps(memory, tokenizer, contexts, rows) for rows in (3, 192)}
        row = {"corpus": name, "prompts": len(texts), "tokens": memory.info["num_tokens"],
               "build_s": round(build, 2), "disk_mb": round(size / 2**20, 1),
               "token_index_mb": round(token_files / 2**20, 1),
               "query_p50_ms": percentile(single, 0.5), "query_p95_ms": percentile(single, 0.95),
               **{f"step_{rows}_rows_{q}_ms": percentile(times, level) for rows, times in steps.items()
                  for q, level in (("p50", 0.5), ("p95", 0.95))}}
        print(f"| {name} | {row['prompts']:,} | {row['tokens']:,} | {row['build_s']} | {row['disk_mb']} | "
              f"{row['query_p50_ms']} | {row['query_p95_ms']} | {row['step_3_rows_p50_ms']} | "
              f"{row['step_192_rows_p50_ms']} | {row['step_192_rows_p95_ms']} |", flush=True)
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def decoding_steps(memory, tokenizer, contexts: list[list[int]], rows: int, steps: int = 30) -> list[float]:
    """Milliseconds of each decoding step of `rows` contexts: every row grows by a comma, or now and then by its
    own last token, and its match is advanced, then its continuations counted."""
    batch = [list(c) for c in contexts[:rows]]
    matches = memory.match(batch)
    comma = tokenizer.encode(",")[0]
    times = []
    for step in range(steps):
        batch = [c + [c[-1]] if step % 5 == 4 else c + [comma] for c in batch]
        started = time.perf_counter()
        matches = memory.advance(matches, batch)
        memory.continuations(matches)
        times.append(1000 * (time.perf_counter() - started))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help="prompt corpus (its train split is remembered)")
    parser.add_argument("--tokenizer", default=str(BPE) if BPE.exists() else str(utils.DEMO_TOKENIZER),
                        help="tokenizer folder (default: the best recipe's 8k BPE if trained, else GPT-2's)")
    parser.add_argument("--synthetic_tokens", type=int, default=10**8, help="size of the synthetic corpus (0: none)")
    parser.add_argument("--queries", type=int, default=500, help="single-context lookups timed per corpus")
    parser.add_argument("--output", default="bench/results/memory_index.json", help="JSON to write")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = utils.load_prompts(args.data)
    prompts = list(dataset["train"]["Prompt"])
    held_out = list(dataset["test"]["Prompt"] if "test" in dataset else prompts[-1000:])
    rng = np.random.default_rng(1)
    contexts = []  # prefixes of held-out prompts, as decoding meets them
    for ids in tokenizer(held_out[: args.queries + 192], add_special_tokens=False)["input_ids"]:
        contexts.append(ids[: int(rng.integers(1, len(ids) + 1))])
    print(f"tokenizer {args.tokenizer} ({len(tokenizer)} tokens), {machine.describe()}\n")
    print("| corpus | prompts | tokens | build s | disk MB | query p50 ms | query p95 ms | step of 3 rows p50 ms | "
          "step of 192 rows p50 ms | p95 ms |\n|---|---|---|---|---|---|---|---|---|---|")
    documents = [np.array(ids + [tokenizer.eos_token_id]) for ids in
                 tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    rows = [measure("stand-in train split", documents, prompts, tokenizer, contexts, args.queries)]
    if args.synthetic_tokens:
        started = time.perf_counter()
        documents, texts = synthetic(prompts, tokenizer, args.synthetic_tokens)
        print(f"(synthetic corpus made in {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        rows.append(measure(f"synthetic, {args.synthetic_tokens:.0e} tokens", documents, texts, tokenizer, contexts,
                            args.queries))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"tokenizer": args.tokenizer, "machine": machine.describe(), "rows": rows},
                                            indent=2))


if __name__ == "__main__":
    main()
