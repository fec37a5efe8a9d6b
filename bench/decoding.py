"""Decoding settings side by side on one checkpoint: beam width, length penalty, repeated n-grams.

Keyword-aligned ROUGE-L through eval.py's own evaluation loop, on the first N scorable prompts of a test set,
from one and two keywords. Measures candidates for the `beam` preset before any of them goes into utils.PRESETS.

    python bench/decoding.py --model_name_or_path bench/runs/quality/best --num_prompts 300
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import eval as evaluation  # noqa: E402
import utils  # noqa: E402

CANDIDATES = {
    "beam 3, no repeated 3-gram (the beam preset)": utils.PRESETS["beam"],
    "beam 5, no repeated 3-gram": dict(do_sample=False, num_beams=5, no_repeat_ngram_size=3),
    "beam 8, no repeated 3-gram": dict(do_sample=False, num_beams=8, no_repeat_ngram_size=3),
    "beam 5, no repeated 3-gram, length penalty 1.5": dict(do_sample=False, num_beams=5, no_repeat_ngram_size=3,
                                                           length_penalty=1.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="checkpoint folder")
    parser.add_argument("--dataset_name", default=str(Path(__file__).resolve().parents[2] / "shared/data/sd-discord-prompts"),
                        help="prompts to score (Hub name, folder or file); its test split, else validation, else train")
    parser.add_argument("--num_prompts", type=int, default=300, help="scorable prompts to score")
    parser.add_argument("--batch_size", type=int, default=64, help="prompts generated at once")
    parser.add_argument("--output", default="bench/results/decoding.json", help="JSON to write")
    args = parser.parse_args()
    model, tokenizer = utils.load_checkpoint(args.model_name_or_path, "cpu")
    dataset = utils.load_prompts(args.dataset_name)
    split = next(s for s in ("test", "validation", "train") if s in dataset)
    references = utils.rouge_references(dataset[split]["Prompt"])[: args.num_prompts]
    rows = {}
    for name, preset in CANDIDATES.items():
        started = time.perf_counter()
        rows[name] = {}
        for input_type, k in evaluation.INPUT_TYPES.items():
            options = evaluation.EvalArguments(batch_size=args.batch_size)
            predictions = evaluation.evaluate(model, tokenizer, references, k, preset, options)
            rows[name][input_type] = utils.keyword_aligned_rouge(references, predictions, k)["rougeL"]
        rows[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    print(f"\n{len(references)} prompts of {args.dataset_name} ({split}), {args.model_name_or_path}\n")
    print("| decoding | 1 kw ROUGE-L | 2 kw ROUGE-L | seconds |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['one_keyword']:.2f} | {r['two_keyword']:.2f} | {r['seconds']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"model": args.model_name_or_path, "num_prompts": len(references),
                                             "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
