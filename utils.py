"""What the scripts share: prompt clean-up, keyword helpers, tokenization, metrics, decoding presets,
model loading and keyword-aware generation."""

import bisect
import functools
import html
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
from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPTokenizer, LogitsProcessor, LogitsProcessorList,
                          StoppingCriteria, StoppingCriteriaList)

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "checkpoints/default"  # where `python run_clm.py` writes, relative to the working folder
DEMO_DATA = ROOT / "data" / "demo_prompts.txt"
DEMO_TOKENIZER = ROOT / "data" / "gpt2-tokenizer"
CLIP_TOKENIZER = ROOT / "data" / "clip-tokenizer"  # Stable Diffusion's text encoder vocabulary (OpenAI CLIP, MIT)
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


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T + bias) against targets, chunk_tokens rows at a time. Each chunk's
    gradients are made in the forward pass, next to its logits, which are then dropped: no logits are kept for the
    backward pass nor made again there."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        grad_bias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        device = hidden.device.type  # the products' precision: autocast's where it is on (as the model's own layer)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        weight_in_dtype = weight.to(dtype)  # cast once, not once per chunk
        for i in range(0, len(targets), chunk_tokens):
            h, t = hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens]
            log_probs = torch.log_softmax(F.linear(h, weight, bias).float(), dim=-1)
            total += -log_probs.gather(1, t[:, None]).sum()
            grad = log_probs.exp_()  # d(loss)/d(logits): softmax minus one-hot, then in the products' precision
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad = grad.to(dtype)
            grad_hidden[i:i + chunk_tokens] = grad @ weight_in_dtype
            grad_weight += (grad.t() @ h.to(dtype)).float()
            if bias is not None:
                grad_bias += grad.float().sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_total, grad_weight * grad_total,
                None if grad_bias is None else grad_bias * grad_total, None, None)


def chunked_causal_lm_loss(hidden: torch.Tensor, output_layer: torch.nn.Linear, labels: torch.Tensor,
                           chunk_tokens: int, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal LM loss the model computes itself (position t predicts label t+1, -100 ignored; a sum over
    num_items when given, as the Trainer asks, else a mean), made chunk_tokens labelled positions at a time with
    their gradients: the float32 logits of the whole batch never exist, padded positions cost nothing, and no
    logits are made twice."""
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[targets != -100]
    targets = targets[targets != -100]
    total = _LinearCrossEntropy.apply(hidden, output_layer.weight, output_layer.bias, targets, chunk_tokens)
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


# ---------------------------------------------------------------------------------------------------
# Generation controls: a blocklist, no repeated keyword, a CLIP token budget


def normalize_keyword(text: str) -> str:
    """How keywords compare: case, spacing and surrounding spaces ignored."""
    return " ".join(text.lower().split())


@functools.lru_cache(maxsize=4)
def _token_texts(tokenizer) -> tuple[str, ...]:
    """The lower-case text of every token id (byte-level pieces of a multi-byte character decode to U+FFFD)."""
    return tuple(tokenizer.decode([i]).lower() for i in range(len(tokenizer)))


@functools.lru_cache(maxsize=4)
def _token_index(tokenizer) -> tuple[list, list]:
    """Sorted (text, id) of every token, and of every word that starts inside a token (" greg" -> "greg")."""
    texts = _token_texts(tokenizer)
    whole = sorted((text, i) for i, text in enumerate(texts))
    inner = sorted((text[j:], i) for i, text in enumerate(texts) for j in range(1, len(text))
                   if text[j].isalnum() and not text[j - 1].isalnum())
    return whole, inner


def _tokens_starting_with(index: list, prefix: str) -> list[int]:
    """Ids of the index's texts that start with prefix and, if it ends a word, then leave that word."""
    ids = []
    for text, token_id in index[bisect.bisect_left(index, (prefix,)):]:
        if not text.startswith(prefix):
            break
        after = text[len(prefix):len(prefix) + 1]
        if not prefix[-1].isalnum() or (after and not after.isalnum()):
            ids.append(token_id)
    return ids


def _whole_word(phrase: str) -> re.Pattern:
    return re.compile(r"(?<![^\W_])" + re.escape(phrase) + r"(?![^\W_])", re.IGNORECASE)


def check_blocklist(phrases: list[str]) -> list[str]:
    """The blocklist, normalised; an entry without a letter or digit is refused, as it would block every keyword."""
    normalized = [normalize_keyword(p) for p in phrases if p.strip()]
    for phrase in normalized:
        if not any(ch.isalnum() for ch in phrase):
            raise ValueError(f"blocklist entry {phrase!r} has no letter or digit: it would block every keyword. "
                             f"Block words or phrases, e.g. 'nsfw, greg rutkowski'.")
    return normalized


class BlocklistProcessor(LogitsProcessor):
    """The model never writes a blocked word or phrase, whatever its case and however it is split into tokens.
    Phrases match whole words ("art" blocks "art" but not "artstation"). A token is masked when, after the text so
    far, it would complete a phrase from a word start through a word end; a phrase completed at a token's end
    masks what would end the word there (punctuation, spaces, EOS), so the word can only go on into another.
    Only new tokens are masked: the user's input keywords stay."""

    def __init__(self, tokenizer, phrases: list[str]):
        self.tokenizer = tokenizer
        self.phrases = check_blocklist(phrases)
        whole, inner = _token_index(tokenizer)
        # (what the text so far must end with, after a word boundary) -> token ids that then complete a phrase;
        # None: no condition (the phrase starts inside the token), "": the text ends at a word boundary.
        rules: dict[str | None, set[int]] = {}
        for phrase in self.phrases:
            rules.setdefault(None, set()).update(_tokens_starting_with(inner, phrase))
            for cut in range(len(phrase)):
                rules.setdefault(phrase[:cut], set()).update(_tokens_starting_with(whole, phrase[cut:]))
        self.rules = {prefix: torch.tensor(sorted(ids)) for prefix, ids in rules.items() if ids}
        word_enders = [i for i, text in enumerate(_token_texts(tokenizer)) if not text[:1].isalnum()]
        self.word_enders = torch.tensor(word_enders + [tokenizer.eos_token_id])
        self.tail_tokens = max((len(p) for p in self.phrases), default=0) + 2  # enough tokens to hold any prefix

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, -self.tail_tokens:], skip_special_tokens=True)
        blocked = torch.zeros_like(scores, dtype=torch.bool)
        for row, tail in enumerate(tails):
            tail = tail.lower()
            for prefix, ids in self.rules.items():
                if prefix is None or (tail.endswith(prefix) and not tail[:len(tail) - len(prefix)][-1:].isalnum()):
                    blocked[row, ids.to(scores.device)] = True
            for phrase in self.phrases:  # a phrase written up to a token's end may not end there
                if phrase[-1].isalnum() and tail.endswith(phrase) and not tail[:-len(phrase)][-1:].isalnum():
                    blocked[row, self.word_enders.to(scores.device)] = True
        return mask_scores(scores, blocked, self.tokenizer.eos_token_id)

    def drop_blocked_keywords(self, prompt: str, keep: int) -> str:
        """The prompt without new keywords that hold a blocked phrase: one that reached the token limit before
        its word could go on."""
        keywords = split_keywords(prompt)
        patterns = [_whole_word(p) for p in self.phrases]
        return ", ".join(keywords[:keep] + [k for k in keywords[keep:] if not any(p.search(k) for p in patterns)])


class NoRepeatedKeywordProcessor(LogitsProcessor):
    """The model never ends a keyword that the prompt already holds (input keywords included, case ignored). The
    comma or EOS that would close a repeat is masked; once the keyword being written equals an earlier one, only a
    new word may follow ("trending" -> "trending on artstation"), neither the same word again nor letters glued
    to the last one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        texts = _token_texts(tokenizer)
        self.closers: dict[str, list[int]] = {}  # the text a token adds before its comma -> token ids
        for token_id, text in enumerate(texts):
            if "," in text:
                self.closers.setdefault(text.split(",")[0].rstrip(), []).append(token_id)
        self.not_a_new_word = torch.tensor([not (t[:1].isspace() and t[1:2].isalnum()) for t in texts])
        self.word_tokens: dict[str, list[int]] = {}  # " trending" -> "trending": to stop "trending trending"
        for token_id, text in enumerate(texts):
            if text[:1].isspace():
                self.word_tokens.setdefault(text.strip(), []).append(token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        blocked = torch.zeros_like(scores, dtype=torch.bool)
        for row, text in enumerate(self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)):
            *done, partial = text.lower().split(",")
            done = {normalize_keyword(k) for k in done} - {""}
            words = " ".join(partial.split())  # the keyword being written, spaced as keywords compare
            if words in done:  # a new word must follow, and not the same word again
                blocked[row, :len(self.not_a_new_word)] = self.not_a_new_word.to(scores.device)
                blocked[row, self.word_tokens.get(words.split()[-1], [])] = True
                blocked[row, self.tokenizer.eos_token_id] = True
                continue
            partial = words + (" " if words and partial[-1:].isspace() else "")
            if not words:  # nor an empty keyword (", ,") in place of a repeat
                blocked[row, self.closers.get("", [])] = True
            for keyword in done:
                if keyword.startswith(partial):
                    rest = keyword[len(partial):]  # what a closing token must add (after a comma: with its space)
                    ids = self.closers.get(rest, []) + (self.closers.get(" " + rest, []) if not partial else [])
                    blocked[row, ids] = True
        return mask_scores(scores, blocked, self.tokenizer.eos_token_id)


def mask_scores(scores: torch.FloatTensor, blocked: torch.BoolTensor, eos_token_id: int) -> torch.FloatTensor:
    """Blocked tokens get -inf; a row with nothing left may still end (EOS), so generation never breaks."""
    scores = scores.masked_fill(blocked, -float("inf"))
    stuck = torch.isinf(scores).all(dim=-1)
    scores[stuck, eos_token_id] = 0.0
    return scores


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """Stable Diffusion's text-encoder tokenizer (OpenAI CLIP's BPE, shipped in data/clip-tokenizer)."""
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)


def clip_token_counts(prompts: list[str]) -> list[int]:
    """Tokens each prompt takes in CLIP's 77-token context (75 of them for text), counted as open_clip and the
    Stable Diffusion pipelines count them: text fixed by ftfy, HTML entities undone, then CLIP's BPE."""
    import ftfy  # only the CLIP budget needs it
    texts = [html.unescape(html.unescape(ftfy.fix_text(p))).strip() for p in prompts]
    return [len(ids) for ids in clip_tokenizer()(texts, add_special_tokens=False)["input_ids"]]


def fit_clip_budget(prompt: str, max_tokens: int, keep_keywords: int = 1) -> str:
    """The prompt cut after its last whole keyword that fits max_tokens CLIP tokens (at least keep_keywords)."""
    keywords = split_keywords(prompt)
    cuts = [cut_to_keywords(prompt, n) for n in range(keep_keywords, len(keywords) + 1)]
    fitting = [cut for cut, count in zip(cuts, clip_token_counts(cuts)) if count <= max_tokens]
    return fitting[-1] if fitting else cuts[0]


def drop_repeated_keywords(prompt: str) -> str:
    """The prompt without keywords it already holds (case and spacing ignored), first ones kept."""
    seen, kept = set(), []
    for keyword in split_keywords(prompt):
        if normalize_keyword(keyword) not in seen:
            seen.add(normalize_keyword(keyword))
            kept.append(keyword)
    return ", ".join(kept)


def check_clip_budget(inputs: list[str], max_clip_tokens: int) -> None:
    """Refuse inputs that alone take more CLIP tokens than the budget allows."""
    for text, count in zip(inputs, clip_token_counts([t.rstrip(", ") for t in inputs])):
        if count > max_clip_tokens:
            raise ValueError(f"the input {text.rstrip(', ')!r} alone takes {count} CLIP tokens, over the budget of "
                             f"{max_clip_tokens}: give fewer keywords or a larger budget.")


def generate_prompts(model, tokenizer, inputs: list[str], preset: dict, max_new_tokens: int,
                     num_keywords: list[int] | None = None, num_return_sequences: int = 1, stop_at_eos: bool = True,
                     blocklist: list[str] | None = None, no_repeat_keywords: bool = False,
                     max_clip_tokens: int | None = None) -> list[str]:
    """Continue each input; return the cleaned full prompts (num_return_sequences per input, in order).
    With num_keywords, each sequence stops and is cut once it holds that many keywords. stop_at_eos=False
    generates all max_new_tokens as the original recipe did (its model never learned to stop); the text
    is cut at the first EOS all the same, so the result is the one of stopping there.
    Controls (all off by default, so scores stay comparable): blocklist, words or phrases the model may never
    write; no_repeat_keywords, no keyword the prompt already holds; max_clip_tokens, the prompt ends at the last
    whole keyword that fits this many CLIP tokens. A bad blocklist or an input over the budget raises ValueError."""
    if max_clip_tokens is not None:
        check_clip_budget(inputs, max_clip_tokens)
    processors = LogitsProcessorList()
    blocker = BlocklistProcessor(tokenizer, blocklist) if blocklist and check_blocklist(blocklist) else None
    if blocker:
        processors.append(blocker)
    if no_repeat_keywords:
        processors.append(NoRepeatedKeywordProcessor(tokenizer))
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
        output = model.generate(**batch, **preset, **extra, max_new_tokens=max_new_tokens, logits_processor=processors,
                                stopping_criteria=stopping, num_return_sequences=num_return_sequences)
    new_tokens = [row.tolist() for row in output[:, prompt_length:]]
    eos = tokenizer.eos_token_id
    new_tokens = [row[: row.index(eos)] if eos in row else row for row in new_tokens]
    continuations = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    prompts = [clean_prompt(inputs[i // num_return_sequences] + text) for i, text in enumerate(continuations)]
    if blocker:
        prompts = [blocker.drop_blocked_keywords(p, inputs[i // num_return_sequences].count(","))
                   for i, p in enumerate(prompts)]
    if no_repeat_keywords:  # clean-up can make two keywords equal that decoding saw apart ("sci - fi", "sci-fi")
        prompts = [drop_repeated_keywords(p) for p in prompts]
    if num_keywords is not None:
        prompts = [cut_to_keywords(p, num_keywords[i // num_return_sequences]) for i, p in enumerate(prompts)]
    if max_clip_tokens is not None:
        prompts = [fit_clip_budget(p, max_clip_tokens, inputs[i // num_return_sequences].count(","))
                   for i, p in enumerate(prompts)]
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
