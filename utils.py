"""What the scripts share: prompt clean-up, keyword helpers, tokenization, metrics, decoding presets,
model loading and keyword-aware generation."""

import json
import os
import re
import resource
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import DatasetDict, load_dataset
from rouge_score import rouge_scorer
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/default"  # where `python run_clm.py` writes, relative to the working folder
DEMO_DATA = ROOT / "data" / "demo_prompts.txt"
DEMO_TOKENIZER = ROOT / "data" / "gpt2-tokenizer"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"  # the cleaned held-out split, saved next to the model

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


def chunked_causal_lm_loss(hidden: torch.Tensor, output_layer: torch.nn.Module, labels: torch.Tensor,
                           chunk_tokens: int, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal LM loss the model computes itself (position t predicts label t+1, -100 ignored; a sum over
    num_items when given, as the Trainer asks, else a mean), made chunk_tokens labelled positions at a time.
    Each chunk's logits are made, used and dropped, and made again in the backward pass: the float32 logits
    of the whole batch never exist, and padded positions cost nothing."""
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[targets != -100]
    targets = targets[targets != -100]

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output_layer(h).float(), t, reduction="sum")

    total = sum(checkpoint(chunk_loss, hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens], use_reentrant=False)
                for i in range(0, len(targets), chunk_tokens))
    return total / (num_items if num_items is not None else max(len(targets), 1))


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Keep only the argmax: the full logits of an eval set would not fit in memory.
    return logits.argmax(dim=-1)


def next_token_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of next tokens predicted right. Position t predicts label t+1; padding (-100) is ignored,
    the EOS is counted."""
    predictions, labels = predictions[:, :-1], labels[:, 1:]
    mask = labels != -100
    return float((predictions[mask] == labels[mask]).mean()) if mask.any() else 0.0


def compute_metrics(eval_pred) -> dict:
    return {"accuracy": next_token_accuracy(eval_pred.predictions, eval_pred.label_ids)}


def ensure_pad_token(tokenizer) -> None:
    """Pad with the EOS when the tokenizer has no pad token: no new embedding row needed."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def peak_memory_gib() -> float:
    """Peak memory of this process so far: the GPU's allocations on CUDA, else the resident set (Linux's VmHWM,
    which, unlike getrusage, does not inherit the peak of the process that started this one)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 2**20, 2)
    except (OSError, AttributeError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def save_eval_prompts(prompts: list[str], folder: str) -> None:
    with open(os.path.join(folder, EVAL_PROMPTS_FILE), "w") as f:
        f.writelines(json.dumps({"Prompt": p}) + "\n" for p in prompts)


def load_eval_prompts(folder: str) -> list[str]:
    with open(os.path.join(folder, EVAL_PROMPTS_FILE)) as f:
        return [json.loads(line)["Prompt"] for line in f]


def load_prompts(name: str | None, config_name: str | None = None, text_column: str = "Prompt") -> DatasetDict:
    """A dataset of prompts from the Hub, a local folder or a parquet/csv/json/txt file (default: the demo
    prompts), as a DatasetDict with one cleaned, non-empty `Prompt` column per split."""
    name = name or str(DEMO_DATA)
    if os.path.isfile(name):
        ext = name.rsplit(".", 1)[-1].lower()
        builder = {"jsonl": "json", "txt": "text"}.get(ext, ext)
        if builder not in ("parquet", "csv", "json", "text"):
            sys.exit(f"error: {name}: unsupported file type .{ext}; use parquet, csv, json, jsonl or txt.")
        dataset = load_dataset(builder, data_files=name)
    elif os.path.isdir(name):
        dataset = load_dataset(name)
    elif looks_like_path(name):
        sys.exit(f"error: dataset path {name} does not exist.")
    else:
        try:
            dataset = load_dataset(name, config_name)
        except Exception as e:  # the Hub is unreachable, or the name is wrong
            sys.exit(f"error: could not load dataset {name!r} from the Hugging Face Hub ({type(e).__name__}: "
                     f"{str(e)[:300]}).\nWithout Hub access pass a local copy: --dataset_name path/to/folder "
                     f"or a .parquet/.csv/.json/.txt file.")
    columns = next(iter(dataset.values())).column_names
    if text_column not in columns:
        if len(columns) != 1:
            sys.exit(f"error: dataset {name} has no column {text_column!r}; its columns are {columns}. "
                     f"Pass --text_column NAME.")
        text_column = columns[0]  # a .txt file's `text`, or any single-column file
    dataset = dataset.select_columns([text_column])
    if text_column != "Prompt":
        dataset = dataset.rename_column(text_column, "Prompt")
    dataset = dataset.map(lambda b: {"Prompt": [clean_prompt(p or "") for p in b["Prompt"]]}, batched=True,
                          desc="Cleaning")
    return dataset.filter(lambda b: [bool(p) for p in b["Prompt"]], batched=True)


# ---------------------------------------------------------------------------------------------------
# Generation

# The decoding strategies of the seed's table; sampling ones are seeded by the caller.
PRESETS = {
    "greedy": dict(do_sample=False, num_beams=1),
    "no_repeat_ngram": dict(do_sample=False, num_beams=1, no_repeat_ngram_size=3),
    "beam": dict(do_sample=False, num_beams=3, no_repeat_ngram_size=3),
    "temperature": dict(do_sample=True, temperature=0.7, top_k=0),
    "top_k": dict(do_sample=True, top_k=50),
    "top_p": dict(do_sample=True, top_p=0.9, top_k=0),
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu or auto.")
    return torch.device(device)


def load_checkpoint(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False):
    """Model (eval mode, on the device) and tokenizer (left padding, for batched generation) of a folder
    run_clm.py wrote, or of any causal LM by Hub name."""
    if not os.path.isdir(path) and (looks_like_path(path) or path == DEFAULT_CHECKPOINT):
        sys.exit(f"error: checkpoint folder {path} not found. Train one first: python run_clm.py "
                 f"(it writes {DEFAULT_CHECKPOINT}), or pass --model_name_or_path.")
    target = resolve_device(device)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
    if dtype == torch.float16 and target.type == "cpu":
        print("note: --fp16 needs a GPU; computing in float32 on the CPU.", file=sys.stderr)
        dtype = torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(target).eval()
    except OSError as e:
        sys.exit(f"error: could not load a model from {path}: {e}")
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"  # generated tokens must follow the prompt directly
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_context(model) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


class KeywordStoppingCriteria(StoppingCriteria):
    """Marks a sequence done once its new tokens hold the commas that complete the keywords it needs:
    whatever follows would be cut away anyway. Counts commas per token id, no decoding per step."""

    def __init__(self, tokenizer, vocab_size: int, prompt_length: int, commas_needed: list[int]):
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        counts = [token.count(",") if token else 0 for token in tokens]
        self.commas_per_token = torch.tensor(counts + [0] * max(0, vocab_size - len(counts)))
        self.prompt_length = prompt_length
        self.commas_needed = torch.tensor(commas_needed)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_length:]
        commas = self.commas_per_token.to(input_ids.device)[new_tokens].sum(dim=1)
        # Beams and returned sequences come as consecutive rows per input.
        needed = self.commas_needed.to(input_ids.device).repeat_interleave(len(input_ids) // len(self.commas_needed))
        return commas >= needed


def generate_prompts(model, tokenizer, inputs: list[str], preset: dict, max_new_tokens: int,
                     num_keywords: list[int] | None = None, num_return_sequences: int = 1,
                     stop_at_eos: bool = True) -> list[str]:
    """Continue each input; return the cleaned full prompts (num_return_sequences per input, in order).
    With num_keywords, each sequence stops and is cut once it holds that many keywords. stop_at_eos=False
    generates all max_new_tokens as the original recipe did (its model never learned to stop); the text
    is cut at the first EOS all the same, so the result is the one of stopping there."""
    if preset.get("num_beams", 1) > 1:  # beam search returns at most one sequence per beam
        preset = {**preset, "num_beams": max(preset["num_beams"], num_return_sequences)}
    batch = tokenizer(inputs, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_length = batch["input_ids"].shape[1]
    stopping = None
    if num_keywords is not None:
        commas_needed = [max(n - text.count(","), 0) for text, n in zip(inputs, num_keywords)]
        stopping = StoppingCriteriaList([KeywordStoppingCriteria(
            tokenizer, model.config.vocab_size, prompt_length, commas_needed)])
    extra = {} if stop_at_eos else {"eos_token_id": []}
    with torch.inference_mode():
        output = model.generate(**batch, **preset, **extra, max_new_tokens=max_new_tokens,
                                stopping_criteria=stopping, num_return_sequences=num_return_sequences)
    new_tokens = [row.tolist() for row in output[:, prompt_length:]]
    eos = tokenizer.eos_token_id
    new_tokens = [row[: row.index(eos)] if eos in row else row for row in new_tokens]
    continuations = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    prompts = [clean_prompt(inputs[i // num_return_sequences] + text) for i, text in enumerate(continuations)]
    if num_keywords is not None:
        prompts = [cut_to_keywords(p, num_keywords[i // num_return_sequences]) for i, p in enumerate(prompts)]
    return prompts


# ---------------------------------------------------------------------------------------------------
# Keyword-aligned ROUGE


def keyword_aligned_rouge(references: list[str], predictions: list[str], num_input_keywords: int) -> dict:
    """ROUGE-1/2/L F1 x100 of what follows the input keywords, the prediction cut to as many keywords as
    its reference has. A plain mean over pairs: the same numbers on every run."""
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
