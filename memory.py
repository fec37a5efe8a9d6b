"""A memory of the training prompts, mixed into decoding: it recalls what people wrote, the model invents the rest.

    python memory.py --model_name_or_path checkpoints/default --dataset_name data/demo_prompts.txt
    python memory.py --model_name_or_path gpt2 --dataset_name Gustavosta/Stable-Diffusion-Prompts \
        --output_dir gpt2-memory

A suffix array over the token ids of every training prompt (an unbounded n-gram, "infini-gram", Liu et al. 2024)
answers, for each context, the longest suffix that occurs in a training prompt and the tokens that followed it
there; decoding.MemoryProcessor mixes that next-token distribution with the model's. A second suffix array over
the prompts' keywords says how many consecutive keywords a prompt shares with one training prompt (provenance, and
--max_copied_keywords). The files live in the checkpoint's memory/ folder, load by memory-map, and record the
tokenizer they were built with. run_clm.py builds one at the end of training; this script builds one for any
checkpoint (a model from the Hub, a GGUF folder, a model trained elsewhere) and chooses its mixing weights on
prompts set aside from the training data.
"""

import bisect
import collections
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

import utils

MEMORY_DIR = "memory"
FORMAT = 2  # 2: symbols stored big-endian, so comparing their bytes compares them as numbers
MAX_MATCH = 512  # longest suffix looked up, in tokens; prompts are far shorter
EXACT_COUNT_LIMIT = 4096  # continuations counted one by one up to this many occurrences; above, by sorted runs
# Above this many occurrences (a corpus of 10^8 tokens has ranges of millions), continuations are counted on this many
# evenly spaced suffixes of the range: the next-token distribution to about 1/65,536, at a bounded cost.
SAMPLED_COUNT_LIMIT = 65536
RUNS_CACHE_SIZE = 16384  # large ranges whose continuation counts are kept (a few KB each)
SCALAR_ROWS = 8  # batches up to this many rows search (and decoding mixes) row by row, larger ones with numpy
SCALAR_RANGE = 64  # ranges up to this size have their continuations counted one by one, in Python
MATCH_CACHE_SIZE = 65536  # longest-suffix answers kept: beams and prompts break off into the same common tails
PATTERN_CACHE_SIZE = 65536  # ranges of the patterns a lookup searched the whole suffix array for
BRANCH_CACHE_SIZE = 65536  # matched suffixes whose continuations are kept: beams and prompts pass the same ones
# Mixing weights before any tuning: the memory's share where it has one continuation, where it has several, and the
# shortest matched suffix (the separator before a prompt's start counts as a token) that it is used for.
DEFAULT_WEIGHTS = {"sparse": 0.9, "dense": 0.3, "min_match": 3}
TUNING_GRID = {"sparse": (0.5, 0.7, 0.9), "dense": (0.1, 0.3, 0.5, 0.7, 0.9)}


def rebuild_hint(folder: str) -> str:
    model = os.path.dirname(os.path.abspath(folder))
    return f"rebuild it: python memory.py --model_name_or_path {model} --dataset_name YOUR_TRAINING_DATA"


def tokenizer_fingerprint(tokenizer) -> str:
    """What a memory must match: the same token ids for the same text, and the same EOS."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(f"{vocab}\n{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


class SuffixIndex:
    """A suffix array over a sequence of symbols 1..K (0 pads the end, the dtype's largest value separates
    documents). A batch of queries is answered with numpy, every lookup a vectorised binary search; a few rows (one
    prompt's beams) search one at a time, comparing big-endian bytes, which costs far less than numpy's overhead."""

    def __init__(self, symbols: np.ndarray, suffix_array: np.ndarray, starts: np.ndarray, separator: int):
        self.symbols, self.suffix_array, self.starts, self.separator = symbols, suffix_array, starts, separator
        self.size = len(suffix_array)
        self.width = symbols.dtype.itemsize
        self.big_endian = symbols.dtype.byteorder == ">" or (symbols.dtype.byteorder in "=|" and sys.byteorder == "big")
        if self.big_endian:  # memoryviews of the (memory-mapped) arrays: Python ints and bytes without numpy calls
            self.raw = memoryview(symbols.view(np.uint8))
            self.positions = memoryview(np.ascontiguousarray(suffix_array))
        # Large ranges are the common contexts (", highly detailed"): counted once, then recalled at every step.
        self._runs = functools.lru_cache(maxsize=RUNS_CACHE_SIZE)(self._count_runs)
        # The short patterns a lookup gallops through (a context's last 2, 4, 8 tokens) recur from step to step.
        self._patterns: dict[bytes, tuple[int, int]] = {}

    @staticmethod
    def build(documents, dtype, separator: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(symbols, suffix array, document starts) of documents given as arrays of symbols >= 1."""
        from pydivsufsort import divsufsort
        lengths = np.fromiter((len(d) + 1 for d in documents), dtype=np.int64, count=len(documents))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum()) + 1
        symbols = np.zeros(total + MAX_MATCH + 1, dtype=dtype)  # zeros after the end: shorter sorts first
        symbols[starts] = separator
        for start, document in zip(starts, documents):
            symbols[start + 1:start + 1 + len(document)] = document
        symbols[total - 1] = separator
        suffix_array = divsufsort(symbols[:total])
        return (symbols.astype(symbols.dtype.newbyteorder(">")),
                suffix_array.astype(np.int32 if total < 2**31 else np.int64), starts)

    def search(self, wanted: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row, the range [lo, hi) of suffixes whose symbols offsets[row] onwards start with
        wanted[row, :counts[row]], searched within the given range, whose suffixes are known to share their first
        offsets[row] symbols."""
        if len(wanted) <= SCALAR_ROWS and self.big_endian:
            key_type = self.symbols.dtype
            bounds = [self._range(int(a), int(b), int(o), wanted[row, :c].astype(key_type).tobytes())
                      for row, (a, b, o, c) in enumerate(zip(lo, hi, offsets, counts))]
            return (np.array([b[0] for b in bounds], dtype=np.int64).reshape(-1),
                    np.array([b[1] for b in bounds], dtype=np.int64).reshape(-1))
        width = wanted.shape[1]
        columns = offsets[:, None] + np.arange(width)
        valid = np.arange(width) < counts[:, None]
        # Lower and upper bounds in one loop: rows twice over, the second half looks for the first suffix past it.
        upper = np.repeat([False, True], len(wanted))
        lo, hi = np.concatenate([lo, lo]), np.concatenate([hi, hi])
        columns, valid, wanted = (np.concatenate([a, a]) for a in (columns, valid, wanted))
        rows = np.arange(len(upper))
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) >> 1
            positions = self.suffix_array[np.minimum(mid, self.size - 1)].astype(np.int64)
            window = self.symbols[positions[:, None] + columns]
            differs = (window != wanted) & valid
            first = differs.argmax(axis=1)
            mismatch = differs[rows, first]
            greater = mismatch & (window[rows, first] > wanted[rows, first])
            right = np.where(upper, ~greater, mismatch & ~greater)
            lo = np.where(active & right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        return lo[:len(lo) // 2], lo[len(lo) // 2:]

    def _range(self, lo: int, hi: int, offset: int, key: bytes) -> tuple[int, int]:
        """The range of suffixes in [lo, hi) whose symbols from offset on start with key (big-endian bytes)."""
        raw, width, size = self.raw, self.width, len(key)

        def head(position: int) -> bytes:  # the suffix's first symbols from offset on, as many as key holds
            start = (position + offset) * width
            return raw[start:start + size].tobytes()
        first = bisect.bisect_left(self.positions, key, lo, hi, key=head)
        return first, bisect.bisect_right(self.positions, key, first, hi, key=head)

    def find(self, patterns: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The range of suffixes starting with each row's patterns[row, :lengths[row]]."""
        zeros = np.zeros(len(patterns), dtype=np.int64)
        return self.search(patterns, lengths, zeros, np.full(len(patterns), self.size, dtype=np.int64), zeros)

    def longest_suffixes(self, queries: list[np.ndarray], longest: np.ndarray | None = None):
        """For each query, the longest suffix that occurs (at most `longest` symbols): (length, lo, hi)."""
        count = len(queries)
        queries = [q[-MAX_MATCH:] for q in queries]
        query_lengths = np.array([len(q) for q in queries], dtype=np.int64)
        bad = query_lengths + 1 if longest is None else np.minimum(query_lengths, longest) + 1
        if 0 < count <= SCALAR_ROWS and self.big_endian:
            found = [self._longest(q, int(b) - 1) for q, b in zip(queries, bad)]
            return tuple(np.array(column, dtype=np.int64) for column in zip(*found))
        matrix = np.zeros((count, max(int(query_lengths.max(initial=0)), 1)), dtype=np.int64)
        for row, q in enumerate(queries):
            matrix[row, :len(q)] = q
        good = np.zeros(count, dtype=np.int64)  # the empty suffix always occurs
        good_lo, good_hi = np.zeros(count, dtype=np.int64), np.full(count, self.size, dtype=np.int64)
        while True:
            open_rows = np.flatnonzero(bad - good > 1)
            if not len(open_rows):
                return good, good_lo, good_hi
            trial = (good[open_rows] + bad[open_rows]) // 2
            start = query_lengths[open_rows] - trial  # the suffix of `trial` symbols, moved to column 0
            width = int(trial.max())
            columns = np.minimum(start[:, None] + np.arange(width), matrix.shape[1] - 1)
            lo, hi = self.find(matrix[open_rows[:, None], columns], trial)
            found = hi > lo
            for target, value in ((good, trial), (good_lo, lo), (good_hi, hi)):
                target[open_rows[found]] = value[found]
            bad[open_rows[~found]] = trial[~found]

    def _longest(self, query: np.ndarray, bound: int) -> tuple[int, int, int]:
        """longest_suffixes for one query, by bytes comparisons: the suffix's length is galloped up from 2, then
        searched between the last length found and the first not found (a broken match mostly restarts at 2 to 5
        tokens, however long it was)."""
        key, width = query.astype(self.symbols.dtype).tobytes(), self.width
        good, good_lo, good_hi, bad = 0, 0, self.size, bound + 1

        def occurs(length: int) -> bool:
            nonlocal good, good_lo, good_hi, bad
            pattern = key[len(key) - length * width:]
            lo, hi = self._patterns.get(pattern) or self._pattern_range(pattern)
            if hi > lo:
                good, good_lo, good_hi = length, lo, hi
            else:
                bad = length
            return hi > lo
        trial = 2
        while trial < bad and occurs(trial):
            trial *= 2
        while bad - good > 1:
            occurs((good + bad) // 2)
        return good, good_lo, good_hi

    def _pattern_range(self, pattern: bytes) -> tuple[int, int]:
        if len(self._patterns) >= PATTERN_CACHE_SIZE:
            self._patterns.clear()
        self._patterns[pattern] = self._range(0, self.size, 0, pattern)
        return self._patterns[pattern]

    def narrow(self, lo: int, hi: int, offset: int, symbol: int) -> tuple[int, int]:
        """The part of the range [lo, hi) (suffixes sharing their first `offset` symbols) followed by symbol."""
        if self.big_endian:
            return self._range(lo, hi, offset, symbol.to_bytes(self.width, "big"))
        found = self.search(np.array([[symbol]]), np.ones(1, dtype=np.int64), np.array([lo]), np.array([hi]),
                            np.array([offset]))
        return int(found[0][0]), int(found[1][0])

    def extend(self, lo: np.ndarray, hi: np.ndarray, lengths: np.ndarray, symbols: np.ndarray):
        """Narrow each row's range (suffixes sharing `lengths` symbols) to those followed by the row's symbol."""
        return self.search(symbols[:, None], np.ones(len(lo), dtype=np.int64), lo, hi, np.minimum(lengths, MAX_MATCH))

    def next_symbols(self, lo: int, hi: int, length: int) -> tuple[list[int], list[int], bool]:
        """What follows the range's suffixes (which share their first `length` symbols): (symbols in ascending
        order, their counts, whether the counts are exact). The range is sorted by that next symbol, so with exact
        counts the suffixes followed by the k-th symbol are the k-th run of the range. A large range is counted by
        runs (between two probes with the same symbol, all are that symbol), a huge one on a sample."""
        if hi - lo <= SCALAR_RANGE and self.big_endian:  # Python ints from the bytes: no numpy calls
            raw, width = self.raw, self.width
            counted = collections.Counter(int.from_bytes(raw[(p + length) * width:(p + length + 1) * width], "big")
                                          for p in self.positions[lo:hi])
            return list(counted), list(counted.values()), True
        if hi - lo <= EXACT_COUNT_LIMIT:
            after = self.symbols[self.suffix_array[lo:hi].astype(np.int64) + length]
            symbols, counts = np.unique(after, return_counts=True)
        else:
            symbols, counts = self._runs(lo, hi, length)
        return symbols.tolist(), counts.tolist(), hi - lo <= SAMPLED_COUNT_LIMIT

    def _count_runs(self, lo: int, hi: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        def symbol_at(index: np.ndarray) -> np.ndarray:
            return self.symbols[self.suffix_array[index].astype(np.int64) + length].astype(np.int64)
        if hi - lo > SAMPLED_COUNT_LIMIT:  # counts estimated from evenly spaced suffixes, scaled to the range
            sample = lo + np.arange(SAMPLED_COUNT_LIMIT, dtype=np.int64) * (hi - lo) // SAMPLED_COUNT_LIMIT
            symbols, counts = np.unique(symbol_at(sample), return_counts=True)
            return symbols, np.maximum(counts * (hi - lo) // SAMPLED_COUNT_LIMIT, 1)
        step = math.ceil((hi - lo) / EXACT_COUNT_LIMIT)
        edges = np.append(np.arange(lo, hi, step), hi)
        first, last = symbol_at(edges[:-1]), symbol_at(edges[1:] - 1)
        same = first == last
        symbols, counts = [first[same]], [(edges[1:] - edges[:-1])[same]]
        starts, ends = edges[:-1][~same], edges[1:][~same]  # segments where the symbol changes: read whole
        if len(starts):
            sizes = ends - starts
            index = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
            segment_symbols, segment_counts = np.unique(symbol_at(index), return_counts=True)
            symbols.append(segment_symbols)
            counts.append(segment_counts)
        symbols, counts = np.concatenate(symbols), np.concatenate(counts)
        unique, inverse = np.unique(symbols, return_inverse=True)
        return unique, np.bincount(inverse, weights=counts).astype(np.int64)

    def document_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, positions, side="right") - 1


Node = tuple[int, int, int]  # a context's match: its length, and the suffix array range [lo, hi) of its occurrences


@dataclass
class Branches:
    """What followed a matched suffix in the training prompts: token ids and their counts, and, where the counts are
    exact, the range of suffixes each symbol continues (what the match grows into)."""
    tokens: list[int]
    counts: list[int]
    ranges: dict[int, tuple[int, int]] | None

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """tokens and counts as arrays, for batches (a common context is followed by thousands of tokens)."""
        return np.array(self.tokens, dtype=np.int64), np.array(self.counts, dtype=np.int64)


@dataclass
class Matches:
    """Where each context stands in the memory: its longest suffix seen in a training prompt (length in tokens, the
    separator before a prompt counted) and the suffix array range of its occurrences."""
    lengths: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def of(nodes: list[Node]) -> "Matches":
        return Matches(*np.array(nodes, dtype=np.int64).reshape(-1, 3).T)

    def nodes(self) -> list[Node]:
        return list(zip(self.lengths.tolist(), self.lo.tolist(), self.hi.tolist()))

    def anchored(self, context_lengths: np.ndarray) -> np.ndarray:
        """Matched whole, from the separator on: the context is the start of a training prompt."""
        return self.lengths == context_lengths + 1


class PromptMemory:
    """The memory of one checkpoint: token index (decoding), keyword index (provenance, copy limits), weights."""

    def __init__(self, folder: str, info: dict, tokens: SuffixIndex, keyword_files: dict):
        self.folder, self.info, self.tokens = folder, info, tokens
        self.weights = dict(DEFAULT_WEIGHTS, **info.get("weights", {}))
        self._keyword_files, self._keywords, self._keyword_ids = keyword_files, None, None
        self._matched: dict[bytes, Node] = {}  # match()'s answers, by the tokens they depend on
        self._branches: dict[Node, Branches] = {}
        self.vocab_size = info["vocab_size"]
        self.separator = tokens.separator
        self.unseen = self.vocab_size + 1  # a symbol no prompt holds: ids the tokenizer lacks map here

    # ---- building and loading

    @staticmethod
    def build(token_ids, prompts: list[str], tokenizer, folder: str, source: str = "", weights: dict | None = None,
              progress: bool = True) -> "PromptMemory":
        """Build the memory of prompts (their token ids, EOS last, and their texts) into folder/memory, atomically:
        a build cut short leaves no memory rather than a broken one."""
        from tqdm.auto import tqdm
        started = time.time()
        vocab_size = len(tokenizer)
        dtype, separator = (np.uint16, 2**16 - 1) if vocab_size + 2 < 2**16 - 1 else (np.uint32, 2**32 - 1)
        documents = [np.asarray(ids, dtype=np.int64) + 1 for ids in tqdm(
            token_ids, desc="Memory: tokens", disable=not progress, total=len(prompts), mininterval=1)]
        symbols, suffix_array, starts = SuffixIndex.build(documents, dtype, separator)
        vocabulary: dict[str, int] = {}
        keyword_documents = []
        for prompt in tqdm(prompts, desc="Memory: keywords", disable=not progress, mininterval=1):
            keywords = [utils.normalize_keyword(k) for k in utils.split_keywords(prompt)]
            keyword_documents.append(np.array([vocabulary.setdefault(k, len(vocabulary) + 1) for k in keywords],
                                              dtype=np.int64))
        keyword_symbols, keyword_array, keyword_starts = SuffixIndex.build(keyword_documents, np.uint32, 2**32 - 1)
        target = os.path.join(folder, MEMORY_DIR)
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        arrays = {"tokens": symbols, "suffix_array": suffix_array, "prompt_starts": starts,
                  "keyword_symbols": keyword_symbols, "keyword_suffix_array": keyword_array,
                  "keyword_prompt_starts": keyword_starts}
        for name, array in arrays.items():
            np.save(os.path.join(partial, f"{name}.npy"), array)
        with open(os.path.join(partial, "keywords.txt"), "w", encoding="utf-8") as f:
            f.writelines(k + "\n" for k in vocabulary)
        info = {"format": FORMAT, "source": source, "num_prompts": len(prompts), "num_tokens": int(len(suffix_array)),
                "num_keywords": len(vocabulary), "vocab_size": vocab_size, "eos_token_id": tokenizer.eos_token_id,
                "tokenizer": tokenizer_fingerprint(tokenizer), "weights": dict(weights or DEFAULT_WEIGHTS),
                "shapes": {name: list(array.shape) for name, array in arrays.items()},
                "build_seconds": round(time.time() - started, 2)}
        with open(os.path.join(partial, "memory.json"), "w") as f:
            json.dump(info, f, indent=2)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        return PromptMemory.load(folder, tokenizer)

    @staticmethod
    def exists(folder: str) -> bool:
        return os.path.isfile(os.path.join(folder, MEMORY_DIR, "memory.json"))

    @staticmethod
    def load(folder: str, tokenizer) -> "PromptMemory":
        """The memory in folder/memory, memory-mapped. InputError if it is missing, damaged, truncated or was built
        with another tokenizer."""
        path = os.path.join(folder, MEMORY_DIR)
        try:
            with open(os.path.join(path, "memory.json")) as f:
                info = json.load(f)
        except FileNotFoundError:
            raise utils.InputError(f"{folder} has no memory ({path}/memory.json is missing); "
                                   f"{rebuild_hint(path)}, or pass --memory_weight 0.") from None
        except (OSError, ValueError) as e:
            raise utils.InputError(f"the memory in {path} is damaged (memory.json: {e}); "
                                   f"{rebuild_hint(path)}.") from None
        if info.get("format") != FORMAT:
            raise utils.InputError(f"the memory in {path} has format {info.get('format')}, this version reads "
                                   f"{FORMAT}; {rebuild_hint(path)}.")
        if info.get("tokenizer") != tokenizer_fingerprint(tokenizer) or info.get("vocab_size") != len(tokenizer):
            raise utils.InputError(f"the memory in {path} was built with another tokenizer ({info.get('vocab_size')} "
                                   f"tokens, not this model's {len(tokenizer)}, or other ids); {rebuild_hint(path)}.")
        arrays = {}
        for name, shape in info["shapes"].items():
            file = os.path.join(path, f"{name}.npy")
            try:
                arrays[name] = np.load(file, mmap_mode="r")
            except FileNotFoundError:
                raise utils.InputError(f"the memory in {path} is incomplete: {name}.npy is missing; "
                                       f"{rebuild_hint(path)}.") from None
            except (OSError, ValueError) as e:
                raise utils.InputError(f"the memory file {file} is truncated or damaged ({e}); "
                                       f"{rebuild_hint(path)}.") from None
            if list(arrays[name].shape) != shape:
                raise utils.InputError(f"the memory file {file} holds {arrays[name].shape[0]:,} values, not "
                                       f"{shape[0]:,}: it is truncated or from another build; {rebuild_hint(path)}.")
        tokens = SuffixIndex(arrays["tokens"], arrays["suffix_array"], arrays["prompt_starts"],
                             int(np.iinfo(arrays["tokens"].dtype).max))
        keywords = {"index": tuple(arrays[f"keyword_{n}"] for n in ("symbols", "suffix_array", "prompt_starts")),
                    "vocabulary": os.path.join(path, "keywords.txt")}
        return PromptMemory(path, info, tokens, keywords)

    def save_weights(self, weights: dict, tuning: dict | None = None) -> None:
        self.weights = dict(DEFAULT_WEIGHTS, **weights)
        self.info["weights"] = self.weights
        if tuning is not None:
            self.info["tuning"] = tuning
        with open(os.path.join(self.folder, "memory.json"), "w") as f:
            json.dump(self.info, f, indent=2)

    # ---- token queries, for decoding

    def query(self, token_ids: list[int]) -> np.ndarray:
        """A context as the memory stores it: the separator, then each id + 1 (ids it cannot hold: unseen)."""
        ids = np.asarray(token_ids, dtype=np.int64)
        return np.concatenate([[self.separator], np.where((ids >= 0) & (ids < self.vocab_size), ids + 1, self.unseen)])

    def match(self, contexts: list, longest: np.ndarray | None = None) -> Matches:
        """Each context's longest suffix seen in a training prompt (at most `longest` tokens)."""
        return Matches.of(self.nodes(contexts, longest))

    def nodes(self, contexts: list, longest=None) -> list[Node]:
        """match() as (length, lo, hi) tuples, looked up from scratch or recalled: the answer depends on the
        context's last `longest` tokens alone."""
        queries = [self.query(c)[-MAX_MATCH:] for c in contexts]
        limits = [MAX_MATCH] * len(queries) if longest is None else longest
        bounds = [min(len(q), int(b)) for q, b in zip(queries, limits)]
        keys = [q[len(q) - b:].tobytes() for q, b in zip(queries, bounds)]
        answers = {key: self._matched[key] for key in keys if key in self._matched}
        missing = [row for row, key in enumerate(keys) if key not in answers]
        if missing:
            found = self.tokens.longest_suffixes([queries[row] for row in missing],
                                                 np.array([bounds[row] for row in missing], dtype=np.int64))
            if len(self._matched) + len(missing) > MATCH_CACHE_SIZE:
                self._matched.clear()
            for i, row in enumerate(missing):
                answers[keys[row]] = self._matched[keys[row]] = tuple(int(column[i]) for column in found)
        return [answers[key] for key in keys]

    def follow(self, parents: list, contexts: list) -> list[Node]:
        """Each context's match, grown from its parent's (the match of the context without its last token, None where
        unknown): a match grows by at most that token, which mostly costs a lookup among the parent's branches (or
        one narrowing search). The contexts without a parent, and those whose match broke, are looked up together,
        the latter among suffixes no longer than their broken match."""
        found, again, limits = [], [], []
        for row, (parent, context) in enumerate(zip(parents, contexts)):
            grown = None if parent is None else self._grow(parent, int(context[-1]))
            found.append(grown)
            if grown is None:
                again.append(row)
                limits.append(MAX_MATCH if parent is None else parent[0])
        if again:
            for row, node in zip(again, self.nodes([contexts[row] for row in again], limits)):
                found[row] = node
        return found

    def _grow(self, node: Node, token: int) -> Node | None:
        length, lo, hi = node
        symbol = token + 1 if 0 <= token < self.vocab_size else self.unseen
        known = self._branches.get(node)
        if known is not None and known.ranges is not None:
            grown = known.ranges.get(symbol)
        else:
            grown = self.tokens.narrow(lo, hi, min(length, MAX_MATCH), symbol)
        return (length + 1, *grown) if grown is not None and grown[1] > grown[0] else None

    def branches(self, node: Node) -> Branches:
        """What followed the node's suffix in the training prompts (kept: beams and prompts pass the same nodes)."""
        known = self._branches.get(node)
        if known is None:
            length, lo, hi = node
            symbols, counts, exact = self.tokens.next_symbols(lo, hi, min(length, MAX_MATCH))
            ranges = None
            if exact:
                ends = list(itertools.accumulate(counts, initial=lo))
                ranges = dict(zip(symbols, zip(ends[:-1], ends[1:])))
            real = [i for i, s in enumerate(symbols) if 1 <= s <= self.vocab_size]  # not the separator after EOS
            known = Branches([symbols[i] - 1 for i in real], [counts[i] for i in real], ranges)
            if len(self._branches) >= BRANCH_CACHE_SIZE:
                self._branches.clear()
            self._branches[node] = known
        return known

    def advance(self, matches: Matches, contexts: list) -> Matches:
        """The matches after each context grew by its last token (follow())."""
        return Matches.of(self.follow(matches.nodes(), contexts))

    def continuations(self, matches: Matches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, token id, count) of the tokens that followed each row's suffix in the training prompts."""
        return self.gather([self.branches(node) if node[2] > node[1] else None for node in matches.nodes()])

    @staticmethod
    def gather(branches: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, token id, count) arrays of each row's branches (None: none). Short ones are joined as lists, long ones
        (a common context is followed by thousands of tokens) as arrays."""
        rows, tokens, counts, parts = [], [], [], []
        for row, known in enumerate(branches):
            if known is not None and len(known.tokens) <= SCALAR_RANGE:
                rows += [row] * len(known.tokens)
                tokens += known.tokens
                counts += known.counts
            elif known is not None:
                parts.append((np.full(len(known.tokens), row), *known.arrays))
        parts.append(tuple(np.array(column, dtype=np.int64) for column in (rows, tokens, counts)))
        return tuple(np.concatenate(column) for column in zip(*parts))

    def prompt_tokens(self, index: int) -> list[int]:
        """The token ids of training prompt `index` (EOS dropped)."""
        start = int(self.tokens.starts[index]) + 1
        end = int(self.tokens.starts[index + 1]) if index + 1 < len(self.tokens.starts) else self.tokens.size - 1
        return [int(t) - 1 for t in self.tokens.symbols[start:end] if 0 < t <= self.vocab_size
                and t - 1 != self.info["eos_token_id"]]

    # ---- keyword queries, for provenance and copy limits

    def _keyword_index(self) -> tuple[SuffixIndex, dict]:
        if self._keywords is None:
            symbols, array, starts = self._keyword_files["index"]
            self._keywords = SuffixIndex(symbols, array, starts, 2**32 - 1)
            with open(self._keyword_files["vocabulary"], encoding="utf-8") as f:
                self._keyword_ids = {line.rstrip("\n"): i for i, line in enumerate(f, 1)}
        return self._keywords, self._keyword_ids

    def keyword_symbols(self, keywords: list[str]) -> np.ndarray:
        index, vocabulary = self._keyword_index()
        return np.array([vocabulary.get(utils.normalize_keyword(k), 2**32 - 2) for k in keywords], dtype=np.int64)

    def holds_runs(self, runs: list[list[str]]) -> np.ndarray:
        """For each list of keywords, whether one training prompt holds them consecutively."""
        index, _ = self._keyword_index()
        if not runs:
            return np.zeros(0, dtype=bool)
        lengths = np.array([len(r) for r in runs], dtype=np.int64)
        patterns = np.zeros((len(runs), max(int(lengths.max()), 1)), dtype=np.int64)
        for row, run in enumerate(runs):
            patterns[row, :len(run)] = self.keyword_symbols(run)
        lo, hi = index.find(patterns, lengths)
        return hi > lo

    def is_training_prompt(self, prompts: list[str]) -> np.ndarray:
        """Whether each prompt equals a training prompt (keywords compared as keywords compare: case and spacing
        ignored)."""
        index, _ = self._keyword_index()
        runs = [utils.split_keywords(p) for p in prompts]
        lengths = np.array([len(r) + 2 for r in runs], dtype=np.int64)
        patterns = np.full((len(runs), int(lengths.max(initial=2))), index.separator, dtype=np.int64)
        for row, run in enumerate(runs):
            patterns[row, 1:len(run) + 1] = self.keyword_symbols(run)
        lo, hi = index.find(patterns, lengths)
        return hi > lo

    def longest_copied_runs(self, prompts: list[str], skip: list[int] | int = 0) -> list[tuple[int, int | None]]:
        """For each prompt, the most consecutive keywords (after its first `skip`, the input) that one training prompt
        holds, and which training prompt (None when no keyword is one a training prompt holds)."""
        index, _ = self._keyword_index()
        skip = [skip] * len(prompts) if isinstance(skip, int) else skip
        keyword_lists = [self.keyword_symbols(utils.split_keywords(p)[s:]) for p, s in zip(prompts, skip)]
        # One row per (prompt, first keyword of a run), all grown a keyword at a time together.
        owners = np.array([n for n, k in enumerate(keyword_lists) for _ in range(len(k))], dtype=np.int64)
        firsts = np.array([i for k in keyword_lists for i in range(len(k))], dtype=np.int64)
        width = max((len(k) for k in keyword_lists), default=0)
        matrix = np.zeros((len(prompts), width + 1), dtype=np.int64)
        for n, k in enumerate(keyword_lists):
            matrix[n, :len(k)] = k
        sizes = np.array([len(k) for k in keyword_lists], dtype=np.int64)
        lo, hi = np.zeros(len(owners), dtype=np.int64), np.full(len(owners), index.size, dtype=np.int64)
        lengths = np.zeros(len(owners), dtype=np.int64)
        best = [(0, None)] * len(prompts)
        alive = np.arange(len(owners))
        while len(alive):
            alive = alive[firsts[alive] + lengths[alive] < sizes[owners[alive]]]
            if not len(alive):
                break
            following = matrix[owners[alive], firsts[alive] + lengths[alive]]
            new_lo, new_hi = index.extend(lo[alive], hi[alive], lengths[alive], following)
            grew = new_hi > new_lo
            alive = alive[grew]
            lo[alive], hi[alive], lengths[alive] = new_lo[grew], new_hi[grew], lengths[alive] + 1
            for row in alive:
                if lengths[row] > best[owners[row]][0]:
                    position = int(index.suffix_array[lo[row]])
                    best[owners[row]] = (int(lengths[row]), int(index.document_of(np.array([position]))[0]))
        return best


def load_memory(folder: str, tokenizer, memory_weight: float = 1.0) -> PromptMemory | None:
    """The checkpoint's memory when it has one (also at memory_weight 0: it still measures copying), else None;
    an InputError when a weight other than the default asks for a memory the checkpoint lacks."""
    if os.path.isdir(folder) and PromptMemory.exists(folder):
        return PromptMemory.load(folder, tokenizer)
    if memory_weight not in (0, 1.0):
        raise utils.InputError(f"--memory_weight {memory_weight:g} was given, but {folder} has no memory; build "
                               f"one: python memory.py --model_name_or_path {folder} --dataset_name DATA")
    return None


# ---------------------------------------------------------------------------------------------------
# Choosing the mixing weights


def tune_weights(model, tokenizer, memory: PromptMemory, prompts: list[str], grid: dict | None = None,
                 batch_size: int = 64, progress: bool = True) -> tuple[dict, dict]:
    """The weights that score best (keyword-aligned ROUGE-L with `beam`, mean of one- and two-keyword inputs) on
    prompts neither the model nor the memory holds, saved with the memory. A search one weight at a time: the dense
    weight over its grid at the default sparse one, then the sparse weight at the best dense one (7 decodings of
    the prompts, not 15). Returns (weights, every point's scores and copy shares)."""
    from tqdm.auto import tqdm

    import decoding
    grid = grid or TUNING_GRID
    references = utils.rouge_references(prompts)
    if not references:
        return memory.weights, {}
    results = {}

    def score(weights: dict) -> float:
        key = (weights["sparse"], weights["dense"])
        if key not in results:
            memory.weights = weights
            point = {"weights": dict(weights)}
            for k in (1, 2):
                predictions = decoding.predict_keywords(model, tokenizer, references, k, decoding.PRESETS["beam"],
                                                        batch_size, memory=memory)
                point[f"{k}kw"] = utils.keyword_aligned_rouge(references, predictions, k)["rougeL"]
                point[f"{k}kw_copied"] = round(100 * float(memory.is_training_prompt(predictions).mean()), 1)
            results[key] = point
            bar.update()
        return results[key]["1kw"] + results[key]["2kw"]

    start = dict(DEFAULT_WEIGHTS)
    points = len(set(grid["dense"]) | {start["dense"]}) + len(set(grid["sparse"]) - {start["sparse"]})
    with tqdm(total=points, desc="Memory: choosing weights", disable=not progress) as bar:
        dense = max(sorted(set(grid["dense"]) | {start["dense"]}), key=lambda d: score(dict(start, dense=d)))
        sparse = max(sorted(set(grid["sparse"]) | {start["sparse"]}), key=lambda w: score(dict(start, sparse=w,
                                                                                              dense=dense)))
    best = dict(start, sparse=sparse, dense=dense)
    tuning = {"num_prompts": len(references), "strategy": "beam", "points": list(results.values())}
    memory.save_weights(best, tuning)
    return best, tuning


# ---------------------------------------------------------------------------------------------------
# Command line


@dataclass
class MemoryArguments:
    bounds: ClassVar[dict] = {"memory_tuning_samples": (0, None), "batch_size": (1, None)}
    model_name_or_path: str = field(default=utils.DEFAULT_CHECKPOINT, metadata={
        "help": "Checkpoint folder (run_clm.py's, or any model's) or Hub name whose tokenizer the memory uses."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "The training prompts to remember: Hub name, dataset folder or parquet/csv/json/jsonl/txt file. "
                "Default: the demo prompts."})
    dataset_split: str = field(default="train", metadata={"help": "Split of --dataset_name to remember."})
    text_column: str = field(default="Prompt", metadata={"help": "Column holding the prompts."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Folder to write memory/ into. Default: the checkpoint folder. A Hub model is saved there with it "
                "(model and tokenizer), so every script can load the pair."})
    memory_tuning_samples: int = field(default=300, metadata={
        "help": "Prompts used to choose the mixing weights: the checkpoint's memory_tuning_prompts.jsonl (left out of "
                "the memory) if it has one, else this many set aside from the data. 0: keep the default weights."})
    batch_size: int = field(default=64, metadata={"help": "Prompts generated at once while choosing weights."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda (for choosing weights)."})


def main() -> None:
    from transformers import AutoTokenizer

    import decoding
    (args,) = utils.parse_arguments((MemoryArguments,), description=__doc__)
    local = os.path.isdir(args.model_name_or_path)
    if not local and utils.looks_like_path(args.model_name_or_path):
        raise utils.InputError(f"checkpoint folder {args.model_name_or_path} not found.")
    output_dir = args.output_dir or (args.model_name_or_path if local else None)
    if output_dir is None:
        raise utils.InputError(f"{args.model_name_or_path} is a Hub model: pass --output_dir FOLDER to save it there "
                               f"with its memory.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    except OSError as e:
        raise utils.InputError(f"could not load the tokenizer of {args.model_name_or_path}: "
                               f"{' '.join(str(e).split())[:300]}") from None
    dataset = utils.load_prompts(args.dataset_name, text_column=args.text_column)
    if args.dataset_split not in dataset:
        raise utils.InputError(f"{args.dataset_name} has no split {args.dataset_split!r}; it has {list(dataset)}.")
    prompts = list(dataset[args.dataset_split]["Prompt"])
    saved = os.path.join(args.model_name_or_path, utils.TUNING_PROMPTS_FILE)
    if local and os.path.isfile(saved):  # set aside before training: keep them out of the memory too
        tuning = utils.load_saved_prompts(args.model_name_or_path, utils.TUNING_PROMPTS_FILE)
        held = set(tuning)
        prompts = [p for p in prompts if p not in held]
    else:
        rest, aside = utils.set_aside(dataset[args.dataset_split], min(args.memory_tuning_samples, len(prompts) // 10))
        prompts, tuning = list(rest["Prompt"]), list(aside["Prompt"])
    if not prompts:
        raise utils.InputError(f"{args.dataset_name or 'the data'} has no prompts to remember.")
    model, _ = decoding.load_checkpoint(args.model_name_or_path, args.device)
    if output_dir != args.model_name_or_path:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    memory = PromptMemory.build([x + [tokenizer.eos_token_id] for x in ids], prompts, tokenizer, output_dir,
                                source=args.dataset_name or "demo prompts")
    print(f"Memory: {memory.info['num_prompts']:,} prompts, {memory.info['num_tokens']:,} tokens, built in "
          f"{memory.info['build_seconds']} s, in {memory.folder}", file=sys.stderr)
    if args.memory_tuning_samples and tuning:
        _, model_tokenizer = decoding.load_checkpoint(output_dir, args.device)
        weights, _ = tune_weights(model, model_tokenizer, memory, tuning, batch_size=args.batch_size)
        print(f"Memory weights chosen on {len(tuning)} set-aside prompts: {weights}", file=sys.stderr)


if __name__ == "__main__":
    utils.run_main(main)
