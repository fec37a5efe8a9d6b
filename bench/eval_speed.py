"""Evaluation speed: eval.py's path (each sequence stops at EOS or once it holds the keywords its reference
has) against generating every sequence to the model's context (at most 1,024 tokens) as the original recipe
did, same checkpoint, same prompts, checking the ROUGE is identical; and eval.py with the checkpoint's memory
against the model alone, in alternating rounds (each row keeps its fastest: interference only slows a run). The table
counts each row's decoding steps (forward passes): a batch runs until its longest row ends, so a memory that writes
longer prompts costs steps as well as its own time a step. A third row replays the scores the memory's row handed
decoding (bench/memory_replay.py): the same steps and predictions with the memory's own work free, the floor of any
faster memory with these predictions on this machine.

The original generated to 1,024 tokens. A small GPT-2 trained here has a shorter context; --context 1024
lengthens its position table (positions past the trained ones repeat the last trained row) so both paths
can run to 1,024 as the original did. Those positions are only reached after the keywords the score keeps.

    python bench/eval_speed.py --model_name_or_path checkpoints/standin --num_prompts 64
    python bench/eval_speed.py --model_name_or_path bench/runs/quality/best --strategy beam --no_full_length --rounds 2
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when imported
import machine  # noqa: E402
import memory_replay  # noqa: E402

import decoding  # noqa: E402
import eval as evaluation  # noqa: E402
import memory as prompt_memory  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--num_prompts", type=int, default=64, help="held-out prompts to score")
    parser.add_argument("--strategy", default="greedy", choices=list(decoding.PRESETS), help="decoding preset")
    parser.add_argument("--input_type", default="one_keyword", choices=list(evaluation.INPUT_TYPES))
    parser.add_argument("--batch_size", type=int, default=32, help="prompts generated at once")
    parser.add_argument("--context", type=int, default=None, help="lengthen a GPT-2's context to this (see above)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--fp16", action="store_true", help="run the model in float16 (GPU), as eval.py --fp16")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the early-stop rows")
    parser.add_argument("--no_full_length", action="store_true", help="skip the slow generate-to-1,024 row")
    parser.add_argument("--output", default="bench/results/eval_speed.json", help="JSON to write")
    args = parser.parse_args()
    utils.keep_freed_memory()  # as the product's scripts do (utils.run_main)

    model, tokenizer = decoding.load_checkpoint(args.model_name_or_path, args.device, args.fp16)
    if args.context and args.context > model.config.n_positions:
        trained = model.transformer.wpe.weight.data
        table = torch.nn.Embedding(args.context, trained.shape[1], device=trained.device, dtype=trained.dtype)
        table.weight.data[:] = trained[-1]
        table.weight.data[: len(trained)] = trained
        model.transformer.wpe, model.config.n_positions = table, args.context
    references = utils.rouge_references(utils.load_saved_prompts(args.model_name_or_path))[: args.num_prompts]
    memory = prompt_memory.load_memory(args.model_name_or_path, tokenizer)
    k = evaluation.INPUT_TYPES[args.input_type]
    preset = decoding.PRESETS[args.strategy]
    forward_passes = [0]  # decoding steps, counted by a hook on the model: a batch runs until its longest row ends
    model.register_forward_pre_hook(lambda module, args: forward_passes.__setitem__(0, forward_passes[0] + 1))

    def predict(early_stop: bool, with_memory) -> list[str]:
        return decoding.predict_keywords(model, tokenizer, references, k, preset, args.batch_size,
                                         early_stop=early_stop, memory=with_memory)

    def timed(early_stop: bool, with_memory, replay: bool = False) -> dict:
        if replay:
            with memory_replay.recording():  # untimed: it keeps every step's scores
                recorded = predict(early_stop, with_memory)
        forward_passes[0] = 0
        with memory_replay.replaying() if replay else contextlib.nullcontext():
            started = time.perf_counter()
            predictions = predict(early_stop, with_memory)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        if replay and predictions != recorded:
            raise RuntimeError("the replay's predictions differ from the memory's")
        new_tokens = sum(len(ids) for ids in tokenizer(predictions)["input_ids"]) - \
            sum(len(ids) for ids in tokenizer([utils.first_keywords(r, k) for r in references])["input_ids"])
        return {"seconds": round(seconds, 2), "prompts_per_s": round(len(references) / seconds, 2),
                "new_tokens_per_prompt": round(new_tokens / len(references), 1), "steps": forward_passes[0],
                **utils.keyword_aligned_rouge(references, predictions, k)}

    paths = {"eval.py (early stop), model alone": (True, None)}
    if memory is not None:
        paths["eval.py (early stop), with memory"] = (True, memory)
        paths["eval.py (early stop), with memory replayed, free"] = (True, memory, True)
    fastest = {}
    for _ in range(args.rounds):
        for label, path in paths.items():
            row = timed(*path)
            if label not in fastest or row["seconds"] < fastest[label]["seconds"]:
                fastest[label] = row
    rows = [{"path": label, **row} for label, row in fastest.items()]
    if not args.no_full_length:
        rows.insert(1, {"path": "to max length (original)", **timed(False, None)})
    full = next((r for r in rows if r["path"] == "to max length (original)"), None)
    speedup = full["seconds"] / rows[0]["seconds"] if full else None
    identical = all(rows[0][m] == full[m] for m in ("rouge1", "rouge2", "rougeL")) if full else None
    with_memory = next((r for r in rows if r["path"].endswith("with memory")), None)
    memory_share = round(with_memory["prompts_per_s"] / rows[0]["prompts_per_s"], 3) if with_memory else None
    replayed = next((r for r in rows if r["path"].endswith("replayed, free")), None)
    replayed_share = round(replayed["prompts_per_s"] / rows[0]["prompts_per_s"], 3) if replayed else None
    print(f"\n{len(references)} prompts, {args.strategy}, {args.input_type}, {model.device.type} {model.dtype}, "
          f"context "
          f"{min(decoding.model_context(model), 1024)} tokens, {args.model_name_or_path}, {machine.describe()}\n")
    print("| path | seconds | prompts/s | new tokens per prompt | decoding steps | ROUGE-1 | ROUGE-2 | ROUGE-L |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['seconds']} | {r['prompts_per_s']} | {r['new_tokens_per_prompt']} | {r['steps']} | "
              f"{r['rouge1']} | {r['rouge2']} | {r['rougeL']} |")
    if full:
        print(f"\nspeed-up of the early stop {speedup:.1f}x; ROUGE identical: {identical}")
    if with_memory:
        alone = rows[0]
        tokens = (f"{with_memory['new_tokens_per_prompt'] / alone['new_tokens_per_prompt']:.2f}x the new tokens"
                  if alone["new_tokens_per_prompt"] else f"{with_memory['new_tokens_per_prompt']} new tokens a prompt "
                  f"(alone: none)")
        print(f"with memory: {memory_share:.0%} of the model alone's prompts/s; it writes {tokens}, "
              f"in {with_memory['steps'] / alone['steps']:.2f}x the decoding steps; replayed (its own work free, "
              f"its steps kept): {replayed_share:.0%}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "rows": rows, "speedup": round(speedup, 2) if speedup else None, "identical": identical,
        "memory_share_of_prompts_per_s": memory_share, "memory_replayed_share_of_prompts_per_s": replayed_share,
        "num_prompts": len(references), "strategy": args.strategy,
        "rounds": args.rounds, "batch_size": args.batch_size, "machine": machine.describe()}, indent=2))


if __name__ == "__main__":
    main()
