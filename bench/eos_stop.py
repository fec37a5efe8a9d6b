"""Does the model stop by itself? Greedy generation from the first keyword of held-out prompts, with no
keyword stop, up to the model's context (at most 1,024 tokens): the share of sequences that end with EOS.

    python bench/eos_stop.py --model_name_or_path checkpoints/standin --num_prompts 100
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import decoding  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--dataset_name", default=None,
                        help="prompt file or folder to start from (default: the eval split saved in the checkpoint)")
    parser.add_argument("--num_prompts", type=int, default=100, help="held-out prompts to start from")
    parser.add_argument("--output", default="bench/results/eos_stop.json", help="JSON to write")
    args = parser.parse_args()
    model, tokenizer = decoding.load_checkpoint(args.model_name_or_path, "cpu")
    if args.dataset_name:
        dataset = utils.load_prompts(args.dataset_name)
        split = next(s for s in ("validation", "test", "train") if s in dataset)
        prompts = dataset[split]["Prompt"][: args.num_prompts]
    else:
        prompts = utils.load_saved_prompts(args.model_name_or_path)[: args.num_prompts]
    inputs = [utils.first_keywords(p, 1) for p in prompts]
    limit = min(decoding.model_context(model), 1024)
    lengths = []
    for start in range(0, len(inputs), 25):
        batch = tokenizer(inputs[start:start + 25], return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(**batch, do_sample=False, max_new_tokens=limit - batch["input_ids"].shape[1])
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            lengths.append(row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None)
    stopped = [n for n in lengths if n is not None]
    result = {"model": args.model_name_or_path, "num_prompts": len(lengths),
              "stopped_share": round(len(stopped) / len(lengths), 3),
              "median_new_tokens_when_stopped": statistics.median(stopped) if stopped else None,
              "max_new_tokens_when_stopped": max(stopped) if stopped else None, "context": limit}
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
