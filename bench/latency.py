"""Generation latency for one prompt, the demo's path: median and p95 over repeated calls, without and with the
demo's default controls (no repeated keyword, a 75-token CLIP budget), and with them and the checkpoint's memory
(the demo's default when the checkpoint has one). The rows take turns call by call, so drift hits them alike. Each
call's input is the first keyword of another of the checkpoint's held-out prompts (or --prompt every time); the
table also says how many tokens each row wrote, since the memory's keywords are longer ones, and how many decoding
steps (forward passes) a call took. A last row replays the scores the memory's row handed beam search, step by step
(bench/memory_replay.py): the same steps and prompt with the memory's own work free, so what it adds over the demo's row
is the floor of any faster memory with these predictions on this machine.

    python bench/latency.py --model_name_or_path checkpoints/default --repeats 30
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when imported
import machine  # noqa: E402
import memory_replay  # noqa: E402

import decoding  # noqa: E402
import memory as prompt_memory  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--prompt", default=None,
                        help="input keywords of every call (default: the first keyword of held-out prompts, in turn)")
    parser.add_argument("--num_keywords", type=int, default=12, help="keywords to write (the demo's default)")
    parser.add_argument("--strategy", default="beam", choices=list(decoding.PRESETS))
    parser.add_argument("--repeats", type=int, default=30, help="timed calls")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--fp16", action="store_true", help="run the model in float16 (GPU)")
    parser.add_argument("--output", default="bench/results/latency.json", help="JSON to write")
    args = parser.parse_args()
    utils.keep_freed_memory()  # as the product's scripts do (utils.run_main)
    model, tokenizer = decoding.load_checkpoint(args.model_name_or_path, args.device, args.fp16)
    memory = prompt_memory.load_memory(args.model_name_or_path, tokenizer)
    max_new_tokens = 12 * args.num_keywords + 16  # as run_gradio.py
    result = {"repeats": args.repeats, "strategy": args.strategy, "model": args.model_name_or_path,
              "device": f"{model.device.type} {model.dtype}", "machine": machine.describe()}
    if args.prompt:
        inputs = [args.prompt]
    else:
        inputs = [utils.first_keywords(p, 1) for p in
                  utils.rouge_references(utils.load_saved_prompts(args.model_name_or_path))[:args.repeats + 1]]
    demo = dict(no_repeat_keywords=True, max_clip_tokens=75)
    rows = {"none": {}, "demo's": demo}
    if memory is not None:
        rows["demo's + memory"] = dict(demo, memory=memory)
        rows["demo's + memory replayed, free"] = dict(demo, memory=memory)
    times, tokens, steps = ({name: [] for name in rows} for _ in range(3))
    forward_passes = [0]  # counted by a hook on the model: beam search's steps, the prompt's pass included
    model.register_forward_pre_hook(lambda module, args: forward_passes.__setitem__(0, forward_passes[0] + 1))

    def generate(seed: int, prompt: str, controls: dict) -> str:
        set_seed(seed)
        (written,) = decoding.generate_prompts(model, tokenizer, [prompt], decoding.PRESETS[args.strategy],
                                               max_new_tokens, num_keywords=[args.num_keywords], **controls)
        return written

    for i in range(args.repeats + 1):
        prompt = inputs[i % len(inputs)]
        for name, controls in rows.items():
            replay = name.endswith("replayed, free")
            if replay:
                with memory_replay.recording():  # untimed: it keeps every step's scores
                    recorded = generate(i, prompt, controls)
            forward_passes[0] = 0
            with memory_replay.replaying() if replay else contextlib.nullcontext():
                started = time.perf_counter()
                written = generate(i, prompt, controls)
                seconds = time.perf_counter() - started
            if replay and written != recorded:
                raise RuntimeError(f"the replay wrote {written!r}, the memory {recorded!r}")
            if i:  # the first call warms up
                times[name].append(1000 * seconds)
                steps[name].append(forward_passes[0])
                tokens[name].append(len(tokenizer(written)["input_ids"]) - len(tokenizer(prompt)["input_ids"]))
    print(f"{machine.describe()}\n\n| model | strategy | controls | median ms | p95 ms | tokens written | steps |\n"
          "|---|---|---|---|---|---|---|")
    for name, measured in times.items():
        measured.sort()
        row = {"median_ms": round(statistics.median(measured), 1),
               "p95_ms": round(measured[int(0.95 * (len(measured) - 1))], 1),
               "tokens_mean": round(statistics.mean(tokens[name]), 1),
               "steps_mean": round(statistics.mean(steps[name]), 1)}
        if name == "none":
            result.update(row)  # the keys earlier reports used
        else:
            result[{"demo's": "with_controls", "demo's + memory": "with_controls_and_memory"}.get(
                name, "with_controls_and_memory_replayed")] = row
        print(f"| {args.model_name_or_path} | {args.strategy} | {name} | {row['median_ms']} | {row['p95_ms']} | "
              f"{row['tokens_mean']} | {row['steps_mean']} |")
    if memory is not None:
        added = result["with_controls_and_memory"]["median_ms"] - result["with_controls"]["median_ms"]
        floor = result["with_controls_and_memory_replayed"]["median_ms"] - result["with_controls"]["median_ms"]
        result["memory_adds_median_ms"] = round(added, 1)
        result["memory_replayed_adds_median_ms"] = round(floor, 1)
        print(f"\nthe memory adds {added:.1f} ms to the median; replayed (its own work free, its steps kept) "
              f"{floor:.1f} ms")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
