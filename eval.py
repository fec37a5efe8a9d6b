"""Score a checkpoint with keyword-aligned ROUGE, one decoding strategy per column, as the seed's table.

    python eval.py                                          # default checkpoint, every strategy, 1 and 2 keywords
    python eval.py --input_type=two_keyword --batch_size=128 --fp16 --device=cuda

From the first one (or two) keywords of each held-out prompt the model writes a continuation, which is cut
to as many keywords as the prompt has; ROUGE compares what follows the input keywords. Each sequence stops
as soon as it holds those keywords, so no time goes to text the cut would drop. When the checkpoint has a memory
of its training prompts (memory/), it is mixed into decoding (--memory_weight 0: the model alone), and each column
also says how much was copied: the share of prompts equal to a training prompt and the mean longest run of new
keywords that one training prompt holds. Writes rouge.json,
rouge.md, rouge.png and predictions.jsonl (every prompt, input and prediction, to read what the model wrote)
into the checkpoint folder (or --output_dir). Under `accelerate launch` or
`torchrun` the prompts are shared out across processes by batch, and the scores equal a one-process run.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist

import decoding
import utils

INPUT_TYPES = {"one_keyword": 1, "two_keyword": 2}
ROW_NAMES = {"one_keyword": "One Keyword", "two_keyword": "Two Keywords"}


@dataclass
class EvalArguments:
    bounds: ClassVar[dict] = {"batch_size": (1, None), "max_samples": (1, None), "num_beams": (1, None)}
    dataset_name: str | None = field(default=None, metadata={
        "help": "Prompts to score: Hub name, folder or file. Default: the eval split saved in the checkpoint."})
    dataset_split: str | None = field(default=None, metadata={
        "help": "Split of --dataset_name. Default: validation, else test, else train."})
    text_column: str = field(default="Prompt", metadata={"help": "Column of --dataset_name holding prompts."})
    input_type: str = field(default="both", metadata={
        "choices": ["one_keyword", "two_keyword", "both"], "help": "Give the model the first one or two keywords."})
    strategy: str = field(default="all", metadata={
        "help": f"Decoding preset, a comma-separated list, or 'all': {', '.join(decoding.PRESETS)}."})
    batch_size: int = field(default=64, metadata={"help": "Prompts generated at once."})
    max_samples: int | None = field(default=None, metadata={"help": "Score only the first N prompts."})
    seed: int = field(default=42, metadata={
        "help": "Seed of the sampling presets (per batch: same numbers every run)."})
    no_early_stop: bool = field(default=False, metadata={
        "help": "Generate every sequence to the model's context (up to 1,024 tokens), past EOS and past the keywords "
                "needed, as the original recipe did; then cut. Same scores, far slower: for benchmarks."})
    no_repeat_keywords: bool = field(default=False, metadata={
        "help": "Score with the demo's no-repeated-keyword control on (off by default, so scores compare with the "
                "seed's table)."})
    num_beams: int | None = field(default=None, metadata={
        "help": "Beam width of the beam preset (default 3, the seed's)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write results. Default: the checkpoint."})


def gather(predictions: list[str | None]) -> list[str]:
    """Merge every process's predictions (each holds its own batches, None elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()):
        return predictions
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, predictions)
    return [next(p[i] for p in parts if p[i] is not None) for i in range(len(predictions))]


def load_references(args: EvalArguments, model_folder: str) -> list[str]:
    if args.dataset_name is None:
        try:
            prompts = utils.load_saved_prompts(model_folder)
        except FileNotFoundError:
            raise utils.InputError(f"{model_folder} holds no saved eval split ({utils.EVAL_PROMPTS_FILE}): pass "
                                   f"--dataset_name with the prompts to score.") from None
    else:
        dataset = utils.load_prompts(args.dataset_name, text_column=args.text_column)
        split = args.dataset_split or next(s for s in ("validation", "test", "train", *dataset) if s in dataset)
        if split not in dataset:
            raise utils.InputError(f"{args.dataset_name} has no split {split!r}; it has {list(dataset)}.")
        prompts = list(dataset[split]["Prompt"])
    references = utils.rouge_references(prompts)[: args.max_samples]
    if not references:
        raise utils.InputError("no prompt to score: the evaluation needs prompts with more than two commas.")
    return references


def copy_measures(memory, predictions: list[str], num_input_keywords: int) -> dict:
    """How much of each prediction is a training prompt's: the share (%) that equal one, and the mean longest run of
    consecutive new keywords that one training prompt holds."""
    runs = [length for length, _ in memory.longest_copied_runs(predictions, num_input_keywords)]
    return {"copied_prompts": round(100 * float(memory.is_training_prompt(predictions).mean()), 2),
            "copied_keywords": round(float(np.mean(runs)), 2)}


def memory_state(memory, weight: float) -> str:
    """One line saying whether the memory was mixed in, and how."""
    if memory is None:
        return "Memory: none (the checkpoint has no memory/ folder): the model alone."
    if weight == 0:
        return (f"Memory: off (--memory_weight 0): the model alone; copies measured against its "
                f"{memory.info['num_prompts']:,} training prompts.")
    w = memory.weights
    return (f"Memory: on, {memory.info['num_prompts']:,} training prompts, weights {w['sparse']:g} (one continuation) "
            f"/ {w['dense']:g} (several) x {weight:g}, from {w['min_match']} matched tokens.")


def markdown_table(scores: dict, input_types: list[str], strategies: list[str]) -> str:
    lines = ["| ROUGE-L | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
    for input_type in input_types:
        cells = [f"{scores[input_type][s]['rougeL']:.2f}" for s in strategies]
        lines.append(f"| {ROW_NAMES[input_type]} | " + " | ".join(cells) + " |")
    if "copied_prompts" in scores[input_types[0]][strategies[0]]:
        for input_type in input_types:
            for key, label in (("copied_prompts", "% equal to a training prompt"),
                               ("copied_keywords", "longest run copied (keywords)")):
                cells = [f"{scores[input_type][s][key]:.2f}" for s in strategies]
                lines.append(f"| {ROW_NAMES[input_type]}: {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(scores: dict, input_types: list[str], strategies: list[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(1.6 * len(strategies) + 2, 4))
    width = 0.8 / len(input_types)
    for row, input_type in enumerate(input_types):
        values = [scores[input_type][s]["rougeL"] for s in strategies]
        positions = [i + row * width for i in range(len(strategies))]
        bars = axes.bar(positions, values, width, label=ROW_NAMES[input_type])
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks([i + width * (len(input_types) - 1) / 2 for i in range(len(strategies))], strategies)
    axes.set_ylabel("ROUGE-L")
    axes.set_title(f"Keyword-aligned ROUGE-L: {os.path.basename(os.path.abspath(path.rsplit('/', 1)[0]))}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def update_model_card(model_folder: str, table: str, result: dict) -> None:
    """Put the table into the model card run_clm.py wrote, one section per prompt set, replacing an older one."""
    card = os.path.join(model_folder, "README.md")
    if not os.path.isfile(card):
        return
    dataset = result["dataset"] or "held-out split saved with the model"
    memory = f"memory x{result['memory_weight']:g}" if result["memory"] else "no memory"
    heading = f"## Keyword-aligned ROUGE-L: {dataset}, {memory}"
    sections = [s for s in open(card).read().rstrip("\n").split("\n\n## ") if ("## " + s).split("\n")[0] != heading]
    body = f"{heading}\n\n{result['num_prompts']} prompts, `python eval.py` ({result['seconds']} s):\n\n{table}"
    with open(card, "w") as f:
        f.write("\n\n## ".join(sections) + "\n\n" + body + "\n")


def main() -> None:
    inference, args = utils.parse_arguments((decoding.InferenceArguments, EvalArguments))
    strategies = list(decoding.PRESETS) if args.strategy == "all" else args.strategy.split(",")
    unknown = [s for s in strategies if s not in decoding.PRESETS]
    if unknown:
        raise utils.InputError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(decoding.PRESETS)} "
                               f"or all.")
    input_types = list(INPUT_TYPES) if args.input_type == "both" else [args.input_type]

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available() and inference.device == "auto":
            inference.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    model, tokenizer, memory = inference.load()
    references = load_references(args, inference.model_name_or_path)
    state = memory_state(memory, inference.memory_weight)
    if rank == 0:
        print(state, file=sys.stderr)
    scores, rows, started = {}, [], time.time()
    for input_type in input_types:
        scores[input_type] = {}
        k = INPUT_TYPES[input_type]
        for strategy in strategies:
            if rank == 0:
                print(f"{ROW_NAMES[input_type]}, {strategy}: {len(references)} prompts", file=sys.stderr)
            preset = decoding.PRESETS[strategy]
            if args.num_beams and preset.get("num_beams", 1) > 1:
                preset = {**preset, "num_beams": args.num_beams}
            predictions = gather(decoding.predict_keywords(
                model, tokenizer, references, k, preset, args.batch_size, args.seed, not args.no_early_stop, rank,
                world_size, progress=True, no_repeat_keywords=args.no_repeat_keywords,
                **inference.memory_controls(memory)))
            scores[input_type][strategy] = utils.keyword_aligned_rouge(references, predictions, k)
            if memory is not None:
                scores[input_type][strategy].update(copy_measures(memory, predictions, k))
            rows += [{"input_type": input_type, "strategy": strategy, "reference": r,
                      "input": utils.first_keywords(r, k), "prediction": p} for r, p in zip(references, predictions)]
    if world_size > 1:  # every prediction is gathered; an exit with gloo threads alive aborts
        utils.leave_process_group()
    if rank != 0:
        return
    table = state + "\n\n" + markdown_table(scores, input_types, strategies)
    print(table)
    folder = args.output_dir or inference.model_name_or_path
    os.makedirs(folder, exist_ok=True)
    memory_used = memory is not None and inference.memory_weight > 0
    result = {"model": inference.model_name_or_path, "dataset": args.dataset_name, "num_prompts": len(references),
              "seed": args.seed, "early_stop": not args.no_early_stop, "no_repeat_keywords": args.no_repeat_keywords,
              "num_beams": args.num_beams, "memory": memory_used, "memory_weight": inference.memory_weight,
              "memory_weights": memory.weights if memory_used else None,
              "max_copied_keywords": inference.max_copied_keywords, "seconds": round(time.time() - started, 1),
              "scores": scores}
    with open(os.path.join(folder, "rouge.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(folder, "rouge.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(folder, "predictions.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    plot(scores, input_types, strategies, os.path.join(folder, "rouge.png"))
    update_model_card(inference.model_name_or_path, table, result)
    print(f"\nWrote rouge.json, rouge.md, rouge.png and predictions.jsonl to {folder} ({result['seconds']} s)")


if __name__ == "__main__":
    utils.run_main(main)
