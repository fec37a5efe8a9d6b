"""Decoding: the strategies of the seed's table, loading a checkpoint for inference, stopping at the keywords
needed, the generation controls (blocklist, no repeated keyword, CLIP token budget, copy limit), the memory's mix
into the model's next-token distribution, and generate_prompts, which every script calls."""

import bisect
import functools
import html
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    set_seed,
)

import memory as prompt_memory
import utils

SCALAR_ENTRIES = 512  # a few rows with at most this many memory continuations are mixed with Python lists
CLIP_TOKENIZER = utils.ROOT / "data" / "clip-tokenizer"  # Stable Diffusion's text encoder vocabulary (OpenAI CLIP, MIT)

# The decoding strategies of the seed's table; sampling ones are seeded by the caller.
PRESETS = {
    "greedy": dict(do_sample=False, num_beams=1),
    "no_repeat_ngram": dict(do_sample=False, num_beams=1, no_repeat_ngram_size=3),
    "beam": dict(do_sample=False, num_beams=3, no_repeat_ngram_size=3),
    "temperature": dict(do_sample=True, temperature=0.7, top_k=0),
    "top_k": dict(do_sample=True, top_k=50),
    "top_p": dict(do_sample=True, top_p=0.9, top_k=0),
}


@dataclass
class InferenceArguments:
    """What eval.py, run_generation.py and run_gradio.py share: the checkpoint, where it runs, and its memory."""
    bounds: ClassVar[dict] = {"memory_weight": (0, None), "max_copied_keywords": (1, None)}
    model_name_or_path: str = field(default=utils.DEFAULT_CHECKPOINT, metadata={
        "help": "Checkpoint folder written by run_clm.py (or memory.py), or any causal LM."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    fp16: bool = field(default=False, metadata={"help": "Run the model in float16 (GPU)."})
    bf16: bool = field(default=False, metadata={"help": "Run the model in bfloat16."})
    memory_weight: float = field(default=1.0, metadata={"help":
        "Scale of the memory's mixing weights, the ones chosen for this checkpoint and stored in its memory/ folder: "
        "1 as chosen, 0 the model alone. A checkpoint without memory/ decodes with the model alone."})
    max_copied_keywords: int | None = field(default=None, metadata={"help":
        "Never write more than this many consecutive keywords of any one training prompt, enforced while decoding "
        "(your own input keywords do not count). Needs the checkpoint's memory. Default: no limit."})

    def load(self):
        """(model, tokenizer, memory or None) for these arguments; InputError on anything a user can fix."""
        model, tokenizer = load_checkpoint(self.model_name_or_path, self.device, self.fp16, self.bf16)
        memory = prompt_memory.load_memory(self.model_name_or_path, tokenizer, self.memory_weight)
        if self.max_copied_keywords is not None and memory is None:
            raise utils.InputError(f"--max_copied_keywords needs the memory of the training prompts, and "
                                   f"{self.model_name_or_path} has none: python memory.py --model_name_or_path "
                                   f"{self.model_name_or_path} --dataset_name YOUR_TRAINING_DATA")
        return model, tokenizer, memory

    def memory_controls(self, memory) -> dict:
        """generate_prompts' memory arguments."""
        return dict(memory=memory, memory_weight=self.memory_weight, max_copied_keywords=self.max_copied_keywords)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise utils.InputError("--device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu or "
                               "auto.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise utils.InputError(f"--device {device} is not a device: use auto, cpu or cuda.") from None


def load_checkpoint(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False):
    """Model (eval mode, on the device) and tokenizer (left padding, for batched generation) of a folder
    run_clm.py wrote, or of any causal LM by Hub name."""
    if not os.path.isdir(path) and (utils.looks_like_path(path) or path == utils.DEFAULT_CHECKPOINT):
        raise utils.InputError(f"checkpoint folder {path} not found. Train one first: python run_clm.py "
                               f"(it writes {utils.DEFAULT_CHECKPOINT}), or pass --model_name_or_path.")
    target = resolve_device(device)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
    if dtype == torch.float16 and target.type == "cpu":
        print("note: --fp16 needs a GPU; computing in float32 on the CPU.", file=sys.stderr)
        dtype = torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(target).eval()
    except OSError as e:
        raise utils.InputError(f"could not load a model from {path}: {' '.join(str(e).split())[:300]}") from None
    utils.ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"  # generated tokens must follow the prompt directly
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if target.type == "cpu":
        use_faster_output_layer(model)
    return model, tokenizer


class WeightFirstLinear(torch.nn.Linear):
    """nn.Linear computed as (W x^T)^T, the same product in the other order. On an AMD EPYC, PyTorch's CPU kernel
    for a few rows times a transposed weight (MKL's) ran GPT-2's 50k-token output layer 7 times slower: 24 ms
    against 3.1 for beam search's 3 rows, at every decoding step (bench/README.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(self.weight, x.reshape(-1, x.shape[-1]).T)
        # Rows laid out one after another again: the log-softmax and top-k of decoding ran 2-6 times slower on the
        # transposed product, and stacking its columns copies it several times faster than .contiguous() here.
        out = torch.stack(out.unbind(1)).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def use_faster_output_layer(model, rows: int = 3) -> bool:
    """Compute the model's output layer weight first where that is at least twice as fast on this CPU, measured on
    `rows` rows (the demo's beams); elsewhere leave it as it is. The layer keeps its (tied) weight. True if changed."""
    layer = model.get_output_embeddings()
    if type(layer) is not torch.nn.Linear:
        return False
    x = torch.randn(rows, layer.in_features, dtype=layer.weight.dtype, device=layer.weight.device)

    def seconds(forward) -> float:
        forward(x)  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            forward(x)
        return time.perf_counter() - started
    with torch.inference_mode():
        faster = 2 * seconds(functools.partial(WeightFirstLinear.forward, layer)) < seconds(layer.forward)
    if faster:
        layer.__class__ = WeightFirstLinear  # the same module and parameters, another forward
    return faster


def model_context(model) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


class KeywordStoppingCriteria(StoppingCriteria):
    """Marks a sequence done once its new tokens hold the commas that complete the keywords it needs:
    whatever follows would be cut away anyway. Counts commas per token id, no decoding per step."""

    def __init__(self, tokenizer, vocab_size: int, prompt_length: int, commas_needed: list[int]):
        self.commas_per_token = _commas_per_token(tokenizer, vocab_size)
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


@functools.lru_cache(maxsize=4)
def _token_texts(tokenizer) -> tuple[str, ...]:
    """The lower-case text of every token id (byte-level pieces of a multi-byte character decode to U+FFFD)."""
    return tuple(tokenizer.decode([i]).lower() for i in range(len(tokenizer)))


@functools.lru_cache(maxsize=4)
def _commas_per_token(tokenizer, vocab_size: int) -> torch.Tensor:
    """Commas in each token id's text, 0 for ids the tokenizer lacks: made once, not per call (5 ms over 50k ids)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    counts = [token.count(",") if token else 0 for token in tokens]
    return torch.tensor(counts + [0] * max(0, vocab_size - len(counts)))


@functools.lru_cache(maxsize=4)
def _keyword_tables(tokenizer) -> tuple[dict, torch.Tensor, dict]:
    """What NoRepeatedKeywordProcessor looks up, built once per tokenizer (tens of ms a call in the demo): the text a
    token adds before its comma -> token ids; which tokens do not start a new word; word -> tokens that write it
    as a new word (" trending" -> "trending": to stop "trending trending")."""
    texts = _token_texts(tokenizer)
    closers: dict[str, list[int]] = {}
    word_tokens: dict[str, list[int]] = {}
    for token_id, text in enumerate(texts):
        if "," in text:
            closers.setdefault(text.split(",")[0].rstrip(), []).append(token_id)
        if text[:1].isspace():
            word_tokens.setdefault(text.strip(), []).append(token_id)
    not_a_new_word = torch.tensor([not (t[:1].isspace() and t[1:2].isalnum()) for t in texts])
    return closers, not_a_new_word, word_tokens


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
    normalized = [utils.normalize_keyword(p) for p in phrases if p.strip()]
    for phrase in normalized:
        if not any(ch.isalnum() for ch in phrase):
            raise utils.InputError(f"blocklist entry {phrase!r} has no letter or digit: it would block every keyword. "
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
        keywords = utils.split_keywords(prompt)
        patterns = [_whole_word(p) for p in self.phrases]
        return ", ".join(keywords[:keep] + [k for k in keywords[keep:] if not any(p.search(k) for p in patterns)])


class NoRepeatedKeywordProcessor(LogitsProcessor):
    """The model never ends a keyword that the prompt already holds (input keywords included, case ignored). The
    comma or EOS that would close a repeat is masked; once the keyword being written equals an earlier one, only a
    new word may follow ("trending" -> "trending on artstation"), neither the same word again nor letters glued
    to the last one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.closers, self.not_a_new_word, self.word_tokens = _keyword_tables(tokenizer)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Token ids collected per row and masked at once: a tensor call per keyword cost more than the rest.
        vocabulary, eos = scores.shape[1], self.tokenizer.eos_token_id
        tokens, new_word_rows = [], []
        for row, text in enumerate(self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)):
            *done, partial = text.lower().split(",")
            done = {utils.normalize_keyword(k) for k in done} - {""}
            words = " ".join(partial.split())  # the keyword being written, spaced as keywords compare
            if words in done:  # a new word must follow, and not the same word again
                new_word_rows.append(row)
                ids = self.word_tokens.get(words.split()[-1], []) + [eos]
            else:
                partial = words + (" " if words and partial[-1:].isspace() else "")
                ids = [] if words else list(self.closers.get("", []))  # nor an empty keyword (", ,") for a repeat
                for keyword in done:
                    if keyword.startswith(partial):
                        rest = keyword[len(partial):]  # what a closing token must add (after a comma: its space)
                        ids += self.closers.get(rest, []) + (self.closers.get(" " + rest, []) if not partial else [])
            tokens += [row * vocabulary + i for i in ids]
        blocked = None
        if new_word_rows:
            blocked = torch.zeros_like(scores, dtype=torch.bool)
            blocked[new_word_rows, :len(self.not_a_new_word)] = self.not_a_new_word.to(scores.device)
        return mask_scores(scores, blocked, eos, tokens)


def mask_scores(scores: torch.FloatTensor, blocked: torch.BoolTensor | None, eos_token_id: int,
                tokens: list[int] = ()) -> torch.FloatTensor:
    """Blocked tokens get -inf (a mask, and/or flat indices row * vocabulary + id); a row with nothing left may still
    end (EOS), so generation never breaks."""
    scores = scores.masked_fill(blocked, -float("inf")) if blocked is not None else scores.clone()
    if tokens:
        scores.view(-1)[torch.tensor(tokens, device=scores.device)] = -float("inf")
    stuck = scores.amax(dim=-1) == -float("inf")  # a max, not an isinf pass: a tenth of the time over 50k tokens
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
    keywords = utils.split_keywords(prompt)
    cuts = [utils.cut_to_keywords(prompt, n) for n in range(keep_keywords, len(keywords) + 1)]
    fitting = [cut for cut, count in zip(cuts, clip_token_counts(cuts)) if count <= max_tokens]
    return fitting[-1] if fitting else cuts[0]


def drop_repeated_keywords(prompt: str) -> str:
    """The prompt without keywords it already holds (case and spacing ignored), first ones kept."""
    seen, kept = set(), []
    for keyword in utils.split_keywords(prompt):
        if utils.normalize_keyword(keyword) not in seen:
            seen.add(utils.normalize_keyword(keyword))
            kept.append(keyword)
    return ", ".join(kept)


def check_clip_budget(inputs: list[str], max_clip_tokens: int) -> None:
    """Refuse inputs that alone take more CLIP tokens than the budget allows."""
    for text, count in zip(inputs, clip_token_counts([t.rstrip(", ") for t in inputs])):
        if count > max_clip_tokens:
            raise utils.InputError(f"the input {text.rstrip(', ')!r} alone takes {count} CLIP tokens, over the budget "
                                   f"of {max_clip_tokens}: give fewer keywords or a larger budget.")



# ---------------------------------------------------------------------------------------------------
# The memory: its next-token distribution mixed into the model's, and the copy limit


class MemoryProcessor(LogitsProcessor):
    """Mixes the memory's next-token distribution into the model's: p = w * p_memory + (1 - w) * p_model, where
    p_memory is what followed the context's longest suffix in the training prompts, and w the memory's weight for
    one continuation ("sparse") or several ("dense"), times `scale`; 0 where the suffix is shorter than min_match.
    It runs after the other processors and keeps their masks: a masked token has no memory share either. Each row's
    match is carried from one step to the next (keyed by its tokens, so beams that swap rows keep theirs).
    log_probs: the scores are log-probabilities, as beam search hands them, and the processor's to change: a row no
    other processor masked needs no normalising, and the mix is written into them."""

    def __init__(self, memory, prompt_starts: list[int], scale: float = 1.0, log_probs: bool = False):
        self.memory, self.scale, self.log_probs = memory, scale, log_probs
        self.prompt_starts = np.asarray(prompt_starts)  # where each input's tokens start after left padding
        self.matches: dict[bytes, prompt_memory.Node] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids.cpu().numpy()
        per_input = len(ids) // len(self.prompt_starts)
        memory, weights = self.memory, self.memory.weights
        # Row by row with Python numbers: a step grows each row's match by a token, mostly a lookup among the
        # branches of its last match, which the memory keeps (the demo's 3 beams cost tens of microseconds).
        contexts = [context[self.prompt_starts[row // per_input]:] for row, context in enumerate(ids)]
        keys = [context.tobytes() for context in contexts]
        nodes = memory.follow([self.matches.get(key[:-ids.itemsize]) for key in keys], contexts)
        self.matches = dict(zip(keys, nodes))
        branches = [memory.branches(node) if node[0] >= weights["min_match"] else None for node in nodes]
        entries = sum(len(b.tokens) for b in branches if b is not None)
        if not entries:
            return scores
        if len(ids) <= prompt_memory.SCALAR_ROWS and entries <= SCALAR_ENTRIES:
            return self._mix_rows(scores, branches)
        return self._mix_batch(scores, *memory.gather(branches))

    # The mix, log((1 - w) p_model + w p_memory) with p_model = exp(score - log Z): a mixed row is the model's row
    # normalised (a log-softmax: half the time of a logsumexp) and moved by log(1 - w), a row left alone stays as it
    # was, and the memory's continuations add w p_memory to theirs. Beam search's rows are log-probabilities already
    # and only one another control masked needs its log-softmax (at 192 rows x 50k one costs 23 ms a step on a
    # 2-core EPYC, a pass that adds log(1 - w) in place 2 ms). A few rows (the demo's beams) are mixed with Python
    # lists, many (eval.py's batches) with numpy arrays: the same mix, where numpy's calls would cost the demo more than
    # the mix itself. Entries are addressed by flat index (row * vocabulary + token): a 1-D gather costs a tenth
    # of a 2-D one.

    def _normalized(self, scores: torch.FloatTensor, mixed_rows: list[int]) -> torch.FloatTensor:
        """The model's log-probabilities over the tokens other processors left, in the rows to mix. Beam search's are
        so already, but for the rows another processor masked (a row's sum is then -inf): those are normalised, in
        place. Other scores (logits) get a log-softmax over every row, in a new tensor."""
        if not self.log_probs:
            return torch.log_softmax(scores.float(), dim=-1)
        scores = scores.float()  # itself where float32, as generate() hands them
        masked = torch.isinf(scores.sum(dim=1)).tolist()
        renormalize = [row for row in mixed_rows if masked[row]]
        if renormalize:
            rows = torch.tensor(renormalize, device=scores.device)
            scores.index_copy_(0, rows, torch.log_softmax(scores.index_select(0, rows), dim=-1))
        return scores

    def _row_weights(self, totals, distinct) -> list[float]:
        """Each row's memory weight: sparse where one continuation is allowed, dense where several, 0 where none."""
        sparse, dense = self.memory.weights["sparse"], self.memory.weights["dense"]
        return [min(max((sparse if d == 1 else dense) * self.scale, 0.0), 1.0) if t > 0 else 0.0
                for t, d in zip(totals, distinct)]

    def _mix_rows(self, scores, branches: list) -> torch.FloatTensor:
        vocabulary, device = scores.shape[1], scores.device
        entries = [(row, row * vocabulary + t, c) for row, known in enumerate(branches) if known is not None
                   for t, c in zip(known.tokens, known.counts) if t < vocabulary]
        index = torch.tensor([flat for _, flat, _ in entries], device=device)
        model = scores.reshape(-1).take(index).tolist()  # the model's, at the memory's tokens
        totals, distinct = [0] * len(scores), [0] * len(scores)
        for (r, _, c), score in zip(entries, model):
            if score != -math.inf:  # masked by another processor: no memory share either
                totals[r] += c
                distinct[r] += 1
        weight = self._row_weights(totals, distinct)
        if not any(weight):
            return scores
        normalized = self._normalized(scores, [r for r, w in enumerate(weight) if w])
        share = normalized.reshape(-1).take(index).tolist()
        log_rest = [math.log1p(-w) if w < 1 else -math.inf for w in weight]
        values = []  # every entry rewritten: mixed, or as it was (masked, or in a row left alone)
        for (r, _, c), score, model_share in zip(entries, model, share):
            if score == -math.inf or not weight[r]:
                values.append(score)
            else:
                values.append(log_add_exp(model_share + log_rest[r], math.log(weight[r] * c / totals[r])))
        if len(set(log_rest)) == 1:  # the beams mostly share a weight: one number, not a column of them
            normalized.add_(log_rest[0])
        else:
            normalized.add_(torch.tensor(log_rest, device=device).unsqueeze(1))
        if not self.log_probs:  # a new tensor: rows left alone get their scores back (in place they moved by log 1)
            for row in (r for r, w in enumerate(weight) if not w):
                normalized[row] = scores[row]
        return normalized.view(-1).index_put_((index,), torch.tensor(values, device=device)).view_as(normalized)

    def _mix_batch(self, scores, rows: np.ndarray, tokens: np.ndarray, counts: np.ndarray) -> torch.FloatTensor:
        vocabulary, device = scores.shape[1], scores.device
        counts = counts.astype(np.float64)
        keep = tokens < vocabulary
        rows, tokens, counts = rows[keep], tokens[keep], counts[keep]
        flat = torch.from_numpy(rows * vocabulary + tokens).to(device)
        model = scores.reshape(-1).take(flat).double().cpu().numpy()
        allowed = model != -np.inf
        totals = np.bincount(rows, weights=np.where(allowed, counts, 0), minlength=len(scores))
        weight = np.array(self._row_weights(totals, np.bincount(rows[allowed], minlength=len(scores))))
        if not weight.any():
            return scores
        normalized = self._normalized(scores, np.flatnonzero(weight).tolist())
        model_share = normalized.reshape(-1).take(flat).double().cpu().numpy()
        with np.errstate(divide="ignore"):
            log_rest = np.log1p(-weight)
            mixed = allowed & (weight[rows] > 0)
            memory_share = np.log(weight[rows] * counts / np.maximum(totals[rows], 1))
        out = normalized.add_(torch.from_numpy(log_rest).float().to(device)[:, None])
        if not weight.all() and not self.log_probs:  # as above; copied back, not chosen by a pass over every row
            alone = torch.from_numpy(np.flatnonzero(weight == 0)).to(device)
            out.index_copy_(0, alone, scores.float().index_select(0, alone))
        entries = np.logaddexp(model_share + log_rest[rows], memory_share)[mixed]
        out.view(-1).index_copy_(0, flat[torch.from_numpy(mixed).to(device)],
                                 torch.from_numpy(entries).float().to(device))
        return out


def log_add_exp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) of two Python floats, -inf allowed."""
    high, low = max(a, b), min(a, b)
    return high if low == -math.inf else high + math.log1p(math.exp(low - high))


class CopyLimitProcessor(LogitsProcessor):
    """Never more than max_keywords consecutive keywords of any one training prompt: once the last max_keywords new
    keywords and the one being written stand together in a training prompt, the comma or EOS that would close it is
    masked, so the keyword goes on into another. The input keywords do not count."""

    def __init__(self, tokenizer, memory, max_keywords: int, prompt_length: int):
        self.tokenizer, self.memory = tokenizer, memory
        self.max_keywords, self.prompt_length = max_keywords, prompt_length
        closers = [i for i, text in enumerate(_token_texts(tokenizer)) if "," in text]
        self.closers = torch.tensor(closers + [tokenizer.eos_token_id])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        rows, runs = [], []
        for row, text in enumerate(texts):
            *done, partial = text.split(",")  # the new text starts after the input's closing comma
            if partial.strip() and len(done) >= self.max_keywords:
                rows.append(row)
                runs.append(done[len(done) - self.max_keywords:] + [partial])
        blocked = torch.zeros_like(scores, dtype=torch.bool)
        for row, held in zip(rows, self.memory.holds_runs(runs)):
            if held:
                blocked[row, self.closers.to(scores.device)] = True
        return mask_scores(scores, blocked, self.tokenizer.eos_token_id) if blocked.any() else scores


def drop_copied_keywords(prompt: str, keep: int, memory, max_keywords: int) -> str:
    """The prompt without the keywords that end a run of more than max_keywords consecutive keywords of one training
    prompt (after its first `keep`, the input): what decoding could not avoid (a row with nothing else left)."""
    keywords = utils.split_keywords(prompt)
    while True:
        starts = list(range(keep, len(keywords) - max_keywords))
        held = memory.holds_runs([keywords[s:s + max_keywords + 1] for s in starts])
        if not held.any():
            return ", ".join(keywords)
        del keywords[starts[int(np.argmax(held))] + max_keywords]


# ---------------------------------------------------------------------------------------------------
# Generation


def generate_prompts(model, tokenizer, inputs: list[str], preset: dict, max_new_tokens: int,
                     num_keywords: list[int] | None = None, num_return_sequences: int = 1, stop_at_eos: bool = True,
                     blocklist: list[str] | None = None, no_repeat_keywords: bool = False,
                     max_clip_tokens: int | None = None, memory=None, memory_weight: float = 1.0,
                     max_copied_keywords: int | None = None) -> list[str]:
    """Continue each input; return the cleaned full prompts (num_return_sequences per input, in order).
    With num_keywords, each sequence stops and is cut once it holds that many keywords. stop_at_eos=False
    generates all max_new_tokens as the original recipe did (its model never learned to stop); the text
    is cut at the first EOS all the same, so the result is the one of stopping there.
    Controls (all off by default, so scores stay comparable): blocklist, words or phrases the model may never
    write; no_repeat_keywords, no keyword the prompt already holds; max_clip_tokens, the prompt ends at the last
    whole keyword that fits this many CLIP tokens; max_copied_keywords, never more consecutive keywords of one
    training prompt. memory (a memory.PromptMemory) mixes the training prompts into decoding, its weights scaled by
    memory_weight (0: the model alone). A bad control raises InputError."""
    if max_clip_tokens is not None:
        check_clip_budget(inputs, max_clip_tokens)
    if max_copied_keywords is not None and memory is None:
        raise utils.InputError("max_copied_keywords needs the memory of the training prompts.")
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
    # Never past the model's context: a learned position table has no row there (GPT-2 fails with an index error).
    max_new_tokens = max(1, min(max_new_tokens, model_context(model) - prompt_length))
    if max_copied_keywords is not None:
        processors.append(CopyLimitProcessor(tokenizer, memory, max_copied_keywords, prompt_length))
    if memory is not None and memory_weight > 0:  # last: it mixes what the others left unmasked
        processors.append(MemoryProcessor(memory, (prompt_length - batch["attention_mask"].sum(dim=1)).tolist(),
                                          memory_weight, log_probs=preset.get("num_beams", 1) > 1))
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
    source = [inputs[i // num_return_sequences] for i in range(len(continuations))]
    prompts = [utils.clean_prompt(text + continuation) for text, continuation in zip(source, continuations)]
    if blocker:
        prompts = [blocker.drop_blocked_keywords(p, text.count(",")) for p, text in zip(prompts, source)]
    if no_repeat_keywords:  # clean-up can make two keywords equal that decoding saw apart ("sci - fi", "sci-fi")
        prompts = [drop_repeated_keywords(p) for p in prompts]
    if max_copied_keywords is not None:
        prompts = [drop_copied_keywords(p, text.count(","), memory, max_copied_keywords)
                   for p, text in zip(prompts, source)]
    if num_keywords is not None:
        prompts = [utils.cut_to_keywords(p, num_keywords[i // num_return_sequences]) for i, p in enumerate(prompts)]
    if max_clip_tokens is not None:
        prompts = [fit_clip_budget(p, max_clip_tokens, text.count(",")) for p, text in zip(prompts, source)]
    return prompts


def predict_keywords(model, tokenizer, references: list[str], num_input_keywords: int, preset: dict,
                     batch_size: int = 64, seed: int = 42, early_stop: bool = True, rank: int = 0, world_size: int = 1,
                     progress: bool = False, **controls) -> list[str | None]:
    """What eval.py scores: each reference continued from its first keywords to as many keywords as it has.
    Batches of similar reference length (rows tend to finish together), seeded per batch, and under several
    processes shared out by batch (None where another process predicts). early_stop=False generates to the
    model's context, past EOS, as the original recipe did: the same text, far slower."""
    from tqdm.auto import tqdm
    inputs = [utils.first_keywords(r, num_input_keywords) for r in references]
    num_keywords = [len(utils.split_keywords(r)) for r in references]
    reference_tokens = [len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(references)), key=lambda i: reference_tokens[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    context = min(model_context(model), 1024)
    predictions = {}
    for number, batch in enumerate(tqdm(batches, desc="Generating", disable=not progress or rank != 0)):
        if number % world_size != rank:
            continue
        set_seed(seed + number)  # per batch, so sharding across processes draws the same samples
        batch_inputs = [inputs[i] for i in batch]
        room = context - max(len(ids) for ids in tokenizer(batch_inputs, add_special_tokens=False)["input_ids"])
        if early_stop:
            # No token bound of its own: a row stops at EOS or once it holds its keywords, so the text is the
            # one the full-length run would keep, even for a model that rambles without commas.
            texts = generate_prompts(model, tokenizer, batch_inputs, preset, room,
                                     num_keywords=[num_keywords[i] for i in batch], **controls)
        else:
            texts = generate_prompts(model, tokenizer, batch_inputs, preset, room, stop_at_eos=False, **controls)
            texts = [utils.cut_to_keywords(t, num_keywords[i]) for t, i in zip(texts, batch)]
        predictions.update(zip(batch, texts))
    return [predictions.get(i) for i in range(len(references))]
