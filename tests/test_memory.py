"""The memory of the training prompts: exact counts, decoding with it, its controls, its files and their errors."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

import decoding
import memory
import utils
from conftest import TINY, run


@pytest.fixture(scope="module")
def tokenizer(gpt2_tokenizer):
    return gpt2_tokenizer


@pytest.fixture(scope="module")
def demo_prompts() -> list[str]:
    return utils.DEMO_DATA.read_text().splitlines()


@pytest.fixture(scope="module")
def demo_memory(tmp_path_factory, tokenizer, demo_prompts) -> memory.PromptMemory:
    """A memory of the demo prompts, built here from their GPT-2 tokens."""
    folder = tmp_path_factory.mktemp("memory")
    ids = [x + [tokenizer.eos_token_id] for x in tokenizer(demo_prompts, add_special_tokens=False)["input_ids"]]
    return memory.PromptMemory.build(ids, demo_prompts, tokenizer, str(folder), progress=False)


def occurrences(sequence: np.ndarray, pattern: list[int]) -> np.ndarray:
    """Brute force: every position where pattern starts in sequence."""
    hits = np.flatnonzero(sequence[:len(sequence) - len(pattern) + 1] == pattern[0])
    for offset, value in enumerate(pattern[1:], 1):
        hits = hits[sequence[hits + offset] == value]
    return hits


BOTH_SEARCHES = pytest.mark.parametrize("scalar_rows", [0, 10**6], ids=["numpy", "row-by-row"])


def use_search(memory_module, store, scalar_rows: int, monkeypatch) -> None:
    """Search and count with numpy (scalar_rows 0) or row by row, nothing recalled from an earlier run."""
    monkeypatch.setattr(memory_module, "SCALAR_ROWS", scalar_rows)
    monkeypatch.setattr(memory_module, "SCALAR_RANGE", min(scalar_rows, 64))
    for cache in ("_matched", "_branches"):
        monkeypatch.setattr(store, cache, {})
    monkeypatch.setattr(store.tokens, "_patterns", {})


@BOTH_SEARCHES
def test_counts_equal_a_brute_force_count(demo_memory, tokenizer, demo_prompts, scalar_rows, monkeypatch):
    """Longest suffix, anchoring and next-token counts of random contexts, against counting in the plain sequence
    SEP p1 EOS SEP p2 EOS ... SEP; by the vectorised search and the row-by-row one, then recalled from the cache."""
    use_search(memory, demo_memory, scalar_rows, monkeypatch)
    eos, sep = tokenizer.eos_token_id, -1
    plain = [sep]
    for ids in tokenizer(demo_prompts, add_special_tokens=False)["input_ids"]:
        plain += ids + [eos, sep]
    plain = np.array(plain)
    rng = random.Random(0)
    contexts = []
    for _ in range(150):
        prompt = tokenizer(rng.choice(demo_prompts), add_special_tokens=False)["input_ids"]
        cut = rng.randrange(1, len(prompt))
        context = prompt[:cut]
        if rng.random() < 0.5:  # a context no prompt starts with: a random prefix, or a token swapped
            other = tokenizer(rng.choice(demo_prompts))["input_ids"][:3]
            opening = rng.choice([[rng.randrange(len(tokenizer))], other])
            context = opening + context[rng.randrange(len(context)):]
        contexts.append(context)
    matches = demo_memory.match(contexts)
    recalled = demo_memory.match(contexts)
    assert all((getattr(recalled, n) == getattr(matches, n)).all() for n in ("lengths", "lo", "hi"))
    anchored = matches.anchored(np.array([len(c) for c in contexts]))
    rows, tokens, counts = demo_memory.continuations(matches)
    for row, context in enumerate(contexts):
        query = [sep] + context
        longest = max(m for m in range(1, len(query) + 1) if len(occurrences(plain, query[len(query) - m:])))
        assert matches.lengths[row] == longest
        assert anchored[row] == (longest == len(query))
        hits = occurrences(plain, query[len(query) - longest:])
        following = plain[hits + longest]
        expected = {int(t): int(c) for t, c in zip(*np.unique(following[following != sep], return_counts=True))}
        assert {int(t): int(c) for t, c in zip(tokens[rows == row], counts[rows == row])} == expected


def test_lookups_survive_a_full_cache(demo_memory, tokenizer, demo_prompts, monkeypatch):
    """When the lookups a batch misses fill the cache, it is emptied, and the batch still gets every answer."""
    monkeypatch.setattr(memory, "MATCH_CACHE_SIZE", 2)
    monkeypatch.setattr(demo_memory, "_matched", {})
    contexts = [tokenizer(p, add_special_tokens=False)["input_ids"][:4] for p in demo_prompts[:3]]
    first = demo_memory.nodes(contexts[:2])
    assert demo_memory.nodes(contexts)[:2] == first


@BOTH_SEARCHES
def test_advancing_a_match_equals_matching_from_scratch(demo_memory, tokenizer, demo_prompts, scalar_rows,
                                                        monkeypatch):
    """A match grows through its branches where they were counted, by one narrowing search where not."""
    use_search(memory, demo_memory, scalar_rows, monkeypatch)
    rng = random.Random(1)
    texts = [rng.choice(demo_prompts) for _ in range(40)]
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"][:2] for t in texts]
    matches = demo_memory.match(contexts)
    for step in range(25):  # grow each context by its own next token, or by a random one now and then
        if step % 2:
            demo_memory.continuations(matches)  # counts the branches the next step grows into
        else:
            demo_memory._branches.clear()
        for row, text in enumerate(texts):
            own = tokenizer(text, add_special_tokens=False)["input_ids"]
            nxt = own[len(contexts[row])] if len(contexts[row]) < len(own) and rng.random() < 0.8 else \
                rng.randrange(len(tokenizer))
            contexts[row] = contexts[row] + [nxt]
        matches = demo_memory.advance(matches, contexts)
        fresh = demo_memory.match(contexts)
        assert (matches.lengths == fresh.lengths).all()
        assert (matches.lo == fresh.lo).all() and (matches.hi == fresh.hi).all()


def test_large_ranges_are_counted_exactly(demo_memory, tokenizer, monkeypatch):
    """Suffixes seen thousands of times are counted by runs of the sorted suffix array: the same counts."""
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" art by", ",", " and")]
    matches = demo_memory.match(contexts)
    assert (matches.hi - matches.lo > 300).all()
    exact = demo_memory.continuations(matches)
    monkeypatch.setattr(memory, "EXACT_COUNT_LIMIT", 16)
    monkeypatch.setattr(demo_memory, "_branches", {})  # counted again, not recalled
    by_runs = demo_memory.continuations(matches)
    assert sorted(zip(*map(list, exact))) == sorted(zip(*map(list, by_runs)))


def test_huge_ranges_are_counted_on_a_sample(demo_memory, tokenizer, monkeypatch):
    """Past SAMPLED_COUNT_LIMIT occurrences the counts come from evenly spaced suffixes: each within one sample's
    share of the exact count, the same most frequent continuation."""
    matches = demo_memory.match([tokenizer(",", add_special_tokens=False)["input_ids"]])
    size = int(matches.hi[0] - matches.lo[0])
    rows, tokens, exact = demo_memory.continuations(matches)
    monkeypatch.setattr(memory, "SAMPLED_COUNT_LIMIT", size // 4)
    monkeypatch.setattr(demo_memory, "_branches", {})
    _, sampled_tokens, sampled = demo_memory.continuations(matches)
    estimate = dict(zip(sampled_tokens.tolist(), sampled.tolist()))
    assert size > 400 and tokens[exact.argmax()] == sampled_tokens[sampled.argmax()]
    for token, count in zip(tokens.tolist(), exact.tolist()):
        assert abs(estimate.get(token, 0) - count) <= 4 + 1, (token, count, estimate.get(token))


def test_32_bit_symbols_for_large_vocabularies():
    """Token ids past 65,535 (vocabularies of 100k and more) are stored in 32 bits and found as such."""
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 200_000, rng.integers(1, 9)) for _ in range(300)]
    documents += [np.array([70_000, 70_001, 5])] * 3
    symbols, suffix_array, starts = memory.SuffixIndex.build(documents, np.uint32, 2**32 - 1)
    index = memory.SuffixIndex(symbols, suffix_array, starts, 2**32 - 1)
    lengths, lo, hi = index.longest_suffixes([np.array([9, 70_000, 70_001])])
    assert symbols.dtype.itemsize == 4 and lengths[0] == 2 and hi[0] - lo[0] >= 3
    following, counts, exact = index.next_symbols(int(lo[0]), int(hi[0]), int(lengths[0]))
    assert 5 in following and exact


def test_keyword_runs_and_training_prompts(demo_memory, demo_prompts):
    prompt = demo_prompts[10]
    keywords = utils.split_keywords(prompt)
    assert demo_memory.is_training_prompt([prompt, prompt.upper(), prompt + ", unheard of keyword"]).tolist() == \
        [True, True, False]
    (length, index), = demo_memory.longest_copied_runs([prompt], 1)
    assert length == len(keywords) - 1 and utils.split_keywords(demo_prompts[index])[1:] == keywords[1:] or \
        demo_memory.holds_runs([keywords[1:]])[0]
    mixed = ", ".join(keywords[:3] + ["an unheard of keyword"] + keywords[3:5])
    assert demo_memory.longest_copied_runs([mixed], 0)[0][0] >= 3
    assert demo_memory.longest_copied_runs(["no such, keywords here"], 0) == [(0, None)]


def test_mixing_keeps_other_processors_masks(demo_memory, tokenizer, demo_prompts):
    """Where the memory is sure of the next token and another processor masked it, it stays masked."""
    context = tokenizer(demo_prompts[0], add_special_tokens=False)["input_ids"][:6]
    rows, tokens, counts = demo_memory.continuations(demo_memory.match([context]))
    assert len(tokens) >= 1
    scores = torch.zeros(1, len(tokenizer))
    scores[0, tokens[0]] = -float("inf")
    mixed = decoding.MemoryProcessor(demo_memory, [0])(torch.tensor([context]), scores.clone())
    assert torch.isneginf(mixed[0, tokens[0]]) and torch.isneginf(mixed).sum() == 1
    unmasked = decoding.MemoryProcessor(demo_memory, [0])(torch.tensor([context]), torch.zeros(1, len(tokenizer)))
    assert int(unmasked[0].argmax()) in tokens.tolist()  # the memory moved the choice onto what followed
    assert torch.allclose(unmasked[0].exp().sum(), torch.tensor(1.0), atol=1e-4)  # still a distribution


def mixing_batch(tokenizer, demo_prompts, demo_memory):
    """Five contexts from the demo prompts and one without a match of 3 tokens, left padded; and the memory's
    continuations of the first two."""
    rng = random.Random(2)
    contexts = [tokenizer(rng.choice(demo_prompts), add_special_tokens=False)["input_ids"][:rng.randrange(3, 12)]
                for _ in range(5)]
    contexts.append(tokenizer("zqx vorpal", add_special_tokens=False)["input_ids"][:3])
    width = max(map(len, contexts))
    input_ids = torch.tensor([[0] * (width - len(c)) + c for c in contexts])
    _, tokens, _ = demo_memory.continuations(demo_memory.match(contexts[:2]))
    return input_ids, [width - len(c) for c in contexts], tokens


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_few_rows_and_many_rows_mix_alike(demo_memory, tokenizer, demo_prompts, scale, monkeypatch):
    """The demo's few rows are mixed with Python numbers, eval.py's many with numpy: the same scores, masks kept,
    rows without a match left as they were (scale 2 gives rows a weight of 1)."""
    input_ids, starts, tokens = mixing_batch(tokenizer, demo_prompts, demo_memory)
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(len(input_ids), len(tokenizer), generator=generator) * 3  # logits, as greedy decoding passes
    scores[0, tokens[:1]] = -float("inf")  # another processor's mask on a memory token
    mixed = {}
    for scalar_rows in (0, 10**6):
        monkeypatch.setattr(memory, "SCALAR_ROWS", scalar_rows)
        mixed[scalar_rows] = decoding.MemoryProcessor(demo_memory, starts, scale)(input_ids, scores.clone())
    few, many = mixed[10**6], mixed[0]
    assert torch.equal(torch.isneginf(few), torch.isneginf(many))
    assert torch.allclose(few.nan_to_num(neginf=0), many.nan_to_num(neginf=0), atol=1e-6)
    assert torch.equal(few[-1], scores[-1]) and not torch.equal(few[1], scores[1])
    assert torch.isneginf(few[0, tokens[0]])


@pytest.mark.parametrize("scalar_rows", [0, 10**6])
def test_log_probabilities_mix_in_place_as_logits_do(demo_memory, tokenizer, demo_prompts, scalar_rows, monkeypatch):
    """Beam search hands log-probabilities, which the mix changes in place, normalising only the rows another
    processor masked: the same scores as the log-softmax of every row, masks kept, a row without a match as it was."""
    monkeypatch.setattr(memory, "SCALAR_ROWS", scalar_rows)
    input_ids, starts, tokens = mixing_batch(tokenizer, demo_prompts, demo_memory)
    generator = torch.Generator().manual_seed(1)
    scores = torch.log_softmax(torch.randn(len(input_ids), len(tokenizer), generator=generator) * 3, dim=-1)
    scores[0, tokens[:1]] = -float("inf")  # masks of other processors: on a memory token, and elsewhere
    scores[1, scores[1].argmax()] = -float("inf")
    expected = decoding.MemoryProcessor(demo_memory, starts)(input_ids, scores.clone())
    given = scores.clone()
    mixed = decoding.MemoryProcessor(demo_memory, starts, log_probs=True)(input_ids, given)
    assert mixed.data_ptr() == given.data_ptr()
    assert torch.equal(torch.isneginf(mixed), torch.isneginf(expected))
    assert torch.allclose(mixed.nan_to_num(neginf=0), expected.nan_to_num(neginf=0), atol=1e-5)
    assert torch.equal(mixed[-1], scores[-1]) and not torch.equal(mixed[1], scores[1])
    assert torch.allclose(mixed[1].exp().sum(), torch.tensor(1.0), atol=1e-4)  # renormalised after its mask


@pytest.fixture(scope="module")
def recall_checkpoint(tmp_path_factory):
    """A tiny GPT-2 trained in the test on the demo prompts, with the memory run_clm.py builds by default."""
    folder = tmp_path_factory.mktemp("recall") / "model"
    result = run("run_clm.py", "--output_dir", folder, "--max_steps", "40", "--learning_rate", "1e-2",
                 "--max_eval_samples", "16", *TINY, "--memory_tuning_samples", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def unique_openings(prompts: list[str], count: int) -> list[str]:
    """Prompts whose first keyword opens no other prompt and that appear once."""
    openings = {}
    for p in prompts:
        openings.setdefault(utils.first_keywords(p, 1), []).append(p)
    return [ps[0] for ps in openings.values() if len(ps) == 1 and len(utils.split_keywords(ps[0])) >= 5][:count]


def test_memory_recalls_a_training_prompt_word_for_word(recall_checkpoint):
    """With its memory the model continues a training prompt with a unique opening word for word from its first
    keyword; the model alone does not."""
    model, tokenizer, store = decoding.InferenceArguments(str(recall_checkpoint)).load()
    assert store is not None and json.loads((recall_checkpoint / "memory" / "memory.json").read_text())["tuning"]
    train = [p for p in utils.DEMO_DATA.read_text().splitlines() if p not in
             set(utils.load_saved_prompts(recall_checkpoint)) | set(utils.load_saved_prompts(
                 recall_checkpoint, utils.TUNING_PROMPTS_FILE))]
    targets = unique_openings(train, 8)
    inputs = [utils.first_keywords(p, 1) for p in targets]
    sizes = [len(utils.split_keywords(p)) for p in targets]
    recalled = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS["beam"], 80, num_keywords=sizes,
                                         memory=store)
    alone = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS["beam"], 80, num_keywords=sizes)
    assert sum(r == t for r, t in zip(recalled, targets)) >= 6, list(zip(recalled, targets))
    assert sum(a == t for a, t in zip(alone, targets)) <= 1
    zero = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS["beam"], 80, num_keywords=sizes,
                                     memory=store, memory_weight=0)
    assert zero == alone  # weight 0 is exactly the model alone


def test_copy_limit_holds_and_the_blocklist_beats_the_memory(recall_checkpoint):
    model, tokenizer, store = decoding.InferenceArguments(str(recall_checkpoint)).load()
    targets = unique_openings(utils.DEMO_DATA.read_text().splitlines(), 10)
    inputs = [utils.first_keywords(p, 1) for p in targets]
    free = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS["beam"], 80, num_keywords=[10] * 10,
                                     memory=store)
    assert max(n for n, _ in store.longest_copied_runs(free, 1)) > 2
    for preset in ("beam", "top_k"):
        limited = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS[preset], 80,
                                            num_keywords=[10] * 10, memory=store, max_copied_keywords=2)
        assert all(n <= 2 for n, _ in store.longest_copied_runs(limited, 1)), limited
        assert all(p.startswith(i.rstrip(",")) for p, i in zip(limited, inputs))
    word = utils.split_keywords(free[0])[2].split()[-1]
    blocked = decoding.generate_prompts(model, tokenizer, inputs[:1], decoding.PRESETS["beam"], 80,
                                        num_keywords=[10], memory=store, blocklist=[word])
    assert word.lower() not in " ".join(utils.split_keywords(blocked[0].lower())[1:]).split()


def test_command_line_uses_the_memory_with_no_flag(recall_checkpoint, tmp_path):
    target = unique_openings(utils.DEMO_DATA.read_text().splitlines(), 1)[0]
    keyword = utils.first_keywords(target, 1)
    size = str(len(utils.split_keywords(target)))
    with_memory = run("run_generation.py", "--model_name_or_path", recall_checkpoint, "--prompt", keyword,
                      "--num_keywords", size)
    off = run("run_generation.py", "--model_name_or_path", recall_checkpoint, "--prompt", keyword, "--num_keywords",
              size, "--memory_weight", "0")
    bare = tmp_path / "bare"
    shutil.copytree(recall_checkpoint, bare, ignore=shutil.ignore_patterns("memory"))
    without = run("run_generation.py", "--model_name_or_path", bare, "--prompt", keyword, "--num_keywords", size)
    assert with_memory.returncode == off.returncode == without.returncode == 0, with_memory.stderr + off.stderr
    assert with_memory.stdout.strip() == target and off.stdout == without.stdout != with_memory.stdout
    copied = run("run_generation.py", "--model_name_or_path", bare, "--prompt", keyword, "--max_copied_keywords", "2")
    assert copied.returncode != 0 and "python memory.py" in copied.stderr and "Traceback" not in copied.stderr


@pytest.mark.parametrize("damage, message", [
    ("tokenizer", "built with another tokenizer"),
    ("missing", "suffix_array.npy is missing"),
    ("truncated", "truncated"),
    ("no_json", "has no memory"),
])
def test_damaged_memory_is_a_one_line_error(recall_checkpoint, tmp_path, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(recall_checkpoint, folder)
    files = folder / "memory"
    if damage == "tokenizer":  # a memory built with another tokenizer: its fingerprint differs
        info = json.loads((files / "memory.json").read_text())
        info["tokenizer"] = "0" * 16
        (files / "memory.json").write_text(json.dumps(info))
    elif damage == "missing":
        (files / "suffix_array.npy").unlink()
    elif damage == "truncated":
        data = (files / "tokens.npy").read_bytes()
        (files / "tokens.npy").write_bytes(data[:len(data) // 2])
    else:
        (files / "memory.json").unlink()
    flags = ["--memory_weight", "0.5"] if damage == "no_json" else []
    result = run("run_generation.py", "--model_name_or_path", folder, "--prompt", "castle,", *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and "python memory.py" in lines[-1]


def test_memory_script_builds_one_for_a_model_trained_elsewhere(recall_checkpoint, tmp_path, demo_corpus):
    folder = tmp_path / "elsewhere"
    shutil.copytree(recall_checkpoint, folder, ignore=shutil.ignore_patterns("memory", "*.jsonl"))
    result = run("memory.py", "--model_name_or_path", folder, "--dataset_name", demo_corpus,
                 "--memory_tuning_samples", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((folder / "memory" / "memory.json").read_text())
    assert info["num_prompts"] == 5500 - 10 and len(info["tuning"]["points"]) == 7
    assert "Memory: tokens" in result.stderr  # a progress bar
    score = {json.dumps(p["weights"], sort_keys=True): p["1kw"] + p["2kw"] for p in info["tuning"]["points"]}
    assert score[json.dumps(info["weights"], sort_keys=True)] == max(score.values())  # the best point is kept
    hub = run("memory.py", "--model_name_or_path", "gpt2", "--dataset_name", demo_corpus)
    assert hub.returncode != 0 and "--output_dir" in hub.stderr and "Traceback" not in hub.stderr
