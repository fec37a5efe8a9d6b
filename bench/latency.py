"""Generation latency for one prompt, the demo's path: median and p95 over repeated calls, without and with the
demo's default controls (no repeated keyword, a 75-token CLIP budget).

    python bench/latency.py --model_name_or_path checkpoints/default --repeats 30
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--prompt", default="young, curly haired,", help="input keywords")
    parser.add_argument("--num_keywords", type=int, default=12, help="keywords to write (the demo's default)")
    parser.add_argument("--strategy", default="beam", choices=list(utils.PRESETS))
    parser.add_argument("--repeats", type=int, default=30, help="timed calls")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--fp16", action="store_true", help="run the model in float16 (GPU)")
    parser.add_argument("--output", default="bench/results/latency.json", help="JSON to write")
    args = parser.parse_args()
    model, tokenizer = utils.load_checkpoint(args.model_name_or_path, args.device, args.fp16)
    max_new_tokens = 12 * args.num_keywords + 16  # as run_gradio.py
    result = {"repeats": args.repeats, "strategy": args.strategy, "model": args.model_name_or_path,
              "device": f"{model.device.type} {model.dtype}"}
    print("| model | strategy | controls | median ms | p95 ms |\n|---|---|---|---|---|")
    for name, controls in {"none": {}, "demo's": dict(no_repeat_keywords=True, max_clip_tokens=75)}.items():
        times = []
        for i in range(args.repeats + 1):
            set_seed(i)
            started = time.perf_counter()
            utils.generate_prompts(model, tokenizer, [args.prompt], utils.PRESETS[args.strategy], max_new_tokens,
                                   num_keywords=[args.num_keywords], **controls)
            if i:  # the first call warms up
                times.append(1000 * (time.perf_counter() - started))
        times.sort()
        row = {"median_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}
        if name == "none":
            result.update(row)  # the keys earlier reports used
        else:
            result["with_controls"] = row
        print(f"| {args.model_name_or_path} | {args.strategy} | {name} | {row['median_ms']} | {row['p95_ms']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
