"""Evaluation speed: eval.py's path (each sequence stops at EOS or once it holds the keywords its reference
has) against generating every sequence to the model's context (at most 1,024 tokens) as the original recipe
did. Same checkpoint, same prompts; checks the ROUGE is identical.

The original generated to 1,024 tokens. A small GPT-2 trained here has a shorter context; --context 1024
lengthens its position table (positions past the trained ones repeat the last trained row) so both paths
can run to 1,024 as the original did. Those positions are only reached after the keywords the score keeps.

    python bench/eval_speed.py --model_name_or_path checkpoints/standin --num_prompts 64
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import eval as evaluation  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--num_prompts", type=int, default=64, help="held-out prompts to score")
    parser.add_argument("--strategy", default="greedy", choices=list(utils.PRESETS), help="decoding preset")
    parser.add_argument("--input_type", default="one_keyword", choices=list(evaluation.INPUT_TYPES))
    parser.add_argument("--batch_size", type=int, default=32, help="prompts generated at once")
    parser.add_argument("--context", type=int, default=None, help="lengthen a GPT-2's context to this (see above)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--fp16", action="store_true", help="run the model in float16 (GPU), as eval.py --fp16")
    parser.add_argument("--output", default="bench/results/eval_speed.json", help="JSON to write")
    args = parser.parse_args()

    model, tokenizer = utils.load_checkpoint(args.model_name_or_path, args.device, args.fp16)
    if args.context and args.context > model.config.n_positions:
        trained = model.transformer.wpe.weight.data
        table = torch.nn.Embedding(args.context, trained.shape[1], device=trained.device, dtype=trained.dtype)
        table.weight.data[:] = trained[-1]
        table.weight.data[: len(trained)] = trained
        model.transformer.wpe, model.config.n_positions = table, args.context
    references = utils.rouge_references(utils.load_eval_prompts(args.model_name_or_path))[: args.num_prompts]
    k = evaluation.INPUT_TYPES[args.input_type]
    rows = []
    for label, no_early_stop in (("eval.py (early stop)", False), ("to max length (original)", True)):
        options = evaluation.EvalArguments(batch_size=args.batch_size, no_early_stop=no_early_stop)
        started = time.perf_counter()
        predictions = evaluation.evaluate(model, tokenizer, references, k, utils.PRESETS[args.strategy], options)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rouge = utils.keyword_aligned_rouge(references, predictions, k)
        rows.append({"path": label, "seconds": round(seconds, 2), "prompts_per_s": round(len(references) / seconds, 2),
                     **rouge})
    speedup = rows[1]["seconds"] / rows[0]["seconds"]
    identical = all(rows[0][m] == rows[1][m] for m in ("rouge1", "rouge2", "rougeL"))
    print(f"\n{len(references)} prompts, {args.strategy}, {args.input_type}, {model.device.type} {model.dtype}, context "
          f"{min(utils.model_context(model), 1024)} tokens, {args.model_name_or_path}\n")
    print("| path | seconds | prompts/s | ROUGE-1 | ROUGE-2 | ROUGE-L |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['seconds']} | {r['prompts_per_s']} | {r['rouge1']} | {r['rouge2']} | {r['rougeL']} |")
    print(f"\nspeed-up {speedup:.1f}x; ROUGE identical: {identical}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"rows": rows, "speedup": round(speedup, 2), "identical": identical,
                                             "num_prompts": len(references), "strategy": args.strategy}, indent=2))


if __name__ == "__main__":
    main()
