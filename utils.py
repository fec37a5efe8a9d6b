"""What the scripts share, as the seed had it: prompt clean-up and keywords, tokenization, padding-aware accuracy,
keyword-aligned ROUGE and loading prompt data. Decoding lives in decoding.py, the memory in memory.py."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/default"  # where `python run_clm.py` writes, relative to the working folder
DEMO_DATA = ROOT / "data" / "demo_prompts.txt"
DEMO_TOKENIZER = ROOT / "data" / "gpt2-tokenizer"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"  # the cleaned held-out split, saved next to the model
TUNING_PROMPTS_FILE = "memory_tuning_prompts.jsonl"  # train prompts set aside to choose the memory's mixing weights


class InputError(ValueError):
    """Input a user can fix: the message says what was wrong and what to pass instead. Library code raises it; each
    script's main prints it as one line (run_main)."""


_skip_teardown = False  # set by leave_process_group


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory PyTorch frees and hand it out again, instead of returning each large block to
    the system and taking fresh pages back, a page fault every 4 KB (about 2.4 us each on a 2-core AMD EPYC VM:
    a 40 MB tensor cost 25 ms to make and fill, 5 ms this way). Large blocks are the logits of a batch over a 50k
    vocabulary: eval.py's beams, the training loss's chunks. The price is a larger resident set: the heap keeps the
    blocks it grew to (eval.py's peak 0.73 -> 1.31 GB, a default training's 2.37 -> 3.04 GB, bench/README.md).
    Only where the C library is glibc; True if set."""
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    # No block from mmap (glibc mmaps any block over 32 MB, whatever the threshold), and the top of the heap kept.
    return bool(mallopt) and bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**30))


def run_main(main) -> None:
    """Run a script's main, turning an InputError into a one-line `error: ...` exit instead of a traceback."""
    keep_freed_memory()
    try:
        main()
    except InputError as e:
        sys.exit(f"error: {e}")
    if _skip_teardown:  # a launched process: gloo's threads can abort or hang the interpreter's teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def leave_process_group(timeout_s: float = 60) -> None:
    """All processes of a torchrun/accelerate launch meet, then close the process group. Closing it now and then never
    returns (pytorch/pytorch#75097); everything is written by then, so after timeout_s the process goes on without,
    and run_main ends it without the interpreter's teardown, where gloo's threads have aborted or hung it too."""
    import threading

    import torch.distributed as dist
    global _skip_teardown
    _skip_teardown = True
    dist.barrier()
    closing = threading.Thread(target=dist.destroy_process_group, daemon=True)
    closing.start()
    closing.join(timeout_s)
    if closing.is_alive():
        print(f"warning: the process group did not close in {timeout_s:.0f} s; exiting without it", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Prompt clean-up and keywords

_SPACED_DIGITS = re.compile(r"(?<=\d) (?=\d)")  # "1 6 k" -> "16 k"
_SPACED_K = re.compile(r"(?<=\d) (?=k\b)")  # "4 k" -> "4k"
_SPACED_HYPHEN = re.compile(r"\s*-\s*")  # "sci - fi" -> "sci-fi"
_COMMA = re.compile(r"\s*,\s*")


def clean_prompt(text: str) -> str:
    """Normalise a prompt the way the training data is normalised, so inputs, outputs and references
    compare like with like."""
    text = text.replace("_", " ")
    text = re.sub(r"\s+", " ", text)
    text = _SPACED_DIGITS.sub("", text)
    text = _SPACED_K.sub("", text)
    text = _SPACED_HYPHEN.sub("-", text)
    text = _COMMA.sub(", ", text)
    return text.strip(", ")


def split_keywords(prompt: str) -> list[str]:
    """The comma-separated keywords of a prompt (empty ones kept, so counts match commas)."""
    return [k.strip() for k in prompt.split(",")]


def first_keywords(prompt: str, k: int) -> str:
    """The first k keywords with their trailing comma: the model's input ("young, curly haired,")."""
    return ", ".join(split_keywords(prompt)[:k]) + ","


def cut_to_keywords(prompt: str, n: int) -> str:
    """The prompt cut after its n-th keyword, without empty keywords left dangling at the end (as clean_prompt)."""
    return ", ".join(split_keywords(prompt)[:n]).rstrip(", ")


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hub name ("org/name" or "name")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


# ---------------------------------------------------------------------------------------------------
# Training data


def tokenize_prompts(batch: dict, tokenizer, text_column: str, max_length: int) -> dict:
    """One prompt per example, EOS appended so the model learns to stop. Labels are a copy of the ids;
    the collator pads them with -100 by position, so an EOS that equals the pad id is still learned."""
    ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
    ids = [x[: max_length - 1] + [tokenizer.eos_token_id] for x in ids]
    return {"input_ids": ids, "labels": ids, "length": [len(x) for x in ids]}


def next_token_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of next tokens predicted right. Position t predicts label t+1; padding (-100) is ignored,
    the EOS is counted."""
    predictions, labels = predictions[:, :-1], labels[:, 1:]
    mask = labels != -100
    return float((predictions[mask] == labels[mask]).mean()) if mask.any() else 0.0


def ensure_pad_token(tokenizer) -> None:
    """Pad with the EOS when the tokenizer has no pad token: no new embedding row needed."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def save_prompts(prompts: list[str], folder: str, name: str = EVAL_PROMPTS_FILE) -> None:
    """Cleaned prompts saved next to the model, one JSON record per line."""
    with open(os.path.join(folder, name), "w") as f:
        f.writelines(json.dumps({"Prompt": p}) + "\n" for p in prompts)


def load_saved_prompts(folder: str, name: str = EVAL_PROMPTS_FILE) -> list[str]:
    with open(os.path.join(folder, name)) as f:
        return [json.loads(line)["Prompt"] for line in f]


def load_prompts(name: str | None, config_name: str | None = None, text_column: str = "Prompt"):
    """A dataset of prompts from the Hub, a local folder or a parquet/csv/json/txt file (default: the demo
    prompts), as a DatasetDict with one cleaned, non-empty `Prompt` column per split."""
    from datasets import load_dataset  # only the stages that read datasets pay for importing it
    name = name or str(DEMO_DATA)
    if os.path.isfile(name):
        ext = name.rsplit(".", 1)[-1].lower()
        builder = {"jsonl": "json", "txt": "text"}.get(ext, ext)
        if builder not in ("parquet", "csv", "json", "text"):
            raise InputError(f"{name}: unsupported file type .{ext}; use parquet, csv, json, jsonl or txt.")
        try:
            dataset = load_dataset(builder, data_files=name)
        except ValueError as e:  # a file with a header and no rows, or no data at all
            raise InputError(f"{name} holds no prompts ({' '.join(str(e).split())[:200]}); give a file with one "
                             f"prompt per row.") from None
    elif os.path.isdir(name):
        dataset = load_dataset(name)
    elif looks_like_path(name):
        raise InputError(f"dataset path {name} does not exist.")
    else:
        try:
            dataset = load_dataset(name, config_name)
        except Exception as e:  # the Hub is unreachable, or the name is wrong
            raise InputError(f"could not load dataset {name!r} from the Hugging Face Hub ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}). Without Hub access pass a local copy: --dataset_name "
                             f"path/to/folder or a .parquet/.csv/.json/.txt file.") from None
    columns = next(iter(dataset.values())).column_names
    if text_column not in columns:
        if len(columns) != 1:
            raise InputError(f"dataset {name} has no column {text_column!r}; its columns are {columns}. "
                             f"Pass --text_column NAME.")
        text_column = columns[0]  # a .txt file's `text`, or any single-column file
    dataset = dataset.select_columns([text_column])
    if text_column != "Prompt":
        dataset = dataset.rename_column(text_column, "Prompt")
    dataset = dataset.map(lambda b: {"Prompt": [clean_prompt(p or "") for p in b["Prompt"]]}, batched=True,
                          desc="Cleaning")
    return dataset.filter(lambda b: [bool(p) for p in b["Prompt"]], batched=True)


def parse_arguments(dataclass_types: tuple, argv: list[str] | None = None, description: str | None = None) -> tuple:
    """A script's flags parsed into its argument dataclasses (HfArgumentParser), numbers checked against their
    bounds; a value a dataclass refuses (the Trainer's arguments check their own) is an InputError too."""
    from transformers import HfArgumentParser
    parser = HfArgumentParser(dataclass_types, description=description)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as e:
        raise InputError(" ".join(str(e).split())) from None
    check_bounds(*parsed)
    return tuple(parsed)


def check_bounds(*arguments) -> None:
    """Refuse numbers outside the bounds an arguments dataclass declares in its `bounds` ({flag: (min, max)}, None:
    unbounded), naming the flag and what it takes."""
    for args in arguments:
        for name, (low, high) in getattr(args, "bounds", {}).items():
            value = getattr(args, name)
            if value is None or (low is None or value >= low) and (high is None or value <= high):
                continue
            takes = f"at least {low:g}" if high is None else f"at most {high:g}" if low is None else \
                f"between {low:g} and {high:g}"
            raise InputError(f"--{name} must be {takes}; got {value:g}.")


def set_aside(dataset, count: int, seed: int = 42) -> tuple:
    """(the rest, `count` prompts drawn at random): a fixed draw, so the same data always sets aside the same prompts,
    and the rest keep their order."""
    import random
    chosen = set(random.Random(seed).sample(range(len(dataset)), min(count, len(dataset))))
    return dataset.select([i for i in range(len(dataset)) if i not in chosen]), dataset.select(sorted(chosen))


def normalize_keyword(text: str) -> str:
    """How keywords compare: case, spacing and surrounding spaces ignored."""
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------------------------------------
# Keyword-aligned ROUGE


def keyword_aligned_rouge(references: list[str], predictions: list[str], num_input_keywords: int) -> dict:
    """ROUGE-1/2/L F1 x100 of what follows the input keywords, the prediction cut to as many keywords as
    its reference has. A plain mean over pairs: the same numbers on every run."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for reference, prediction in zip(references, predictions, strict=True):
        reference_keywords = split_keywords(reference)
        target = ", ".join(reference_keywords[num_input_keywords:])
        predicted = ", ".join(split_keywords(prediction)[num_input_keywords:len(reference_keywords)])
        for name, score in scorer.score(target, predicted).items():
            totals[name] += score.fmeasure
    return {name: round(100 * total / max(len(references), 1), 2) for name, total in totals.items()}


def rouge_references(prompts: list[str]) -> list[str]:
    """The prompts the seed's evaluation scores: those with more than two commas."""
    return [p for p in prompts if p.count(",") > 2]
