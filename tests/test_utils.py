"""Clean-up rules, keyword helpers, tokenization, accuracy, ROUGE alignment, presets, stopping."""

import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq

import decoding
import utils


@pytest.mark.parametrize("raw, clean", [
    ("a_b_c", "a b c"),                                   # underscores become spaces
    ("a   lot    of  space", "a lot of space"),           # runs of spaces become one
    ("8 k, 1 6 k", "8k, 16k"),                            # digit joins and "N k"
    ("canon 5 0 mm, 3 5 mm film", "canon 50 mm, 35 mm film"),
    ("4 k", "4k"),
    ("sci - fi, post - apocalyptic", "sci-fi, post-apocalyptic"),  # no spaces around hyphens
    ("a,b ,  c  ,d", "a, b, c, d"),                       # exactly ", " between keywords
    (" , ,a, b,, ", "a, b"),                              # leading and trailing commas and spaces go
    ("line\nbreak,\ttab", "line break, tab"),
    ("keeps 2d art and k-pop", "keeps 2d art and k-pop"),  # letters after digits untouched
])
def test_clean_prompt(raw, clean):
    assert utils.clean_prompt(raw) == clean


def test_keyword_helpers():
    prompt = "young, curly haired, redhead, intricate"
    assert utils.split_keywords(prompt) == ["young", "curly haired", "redhead", "intricate"]
    assert utils.first_keywords(prompt, 1) == "young,"
    assert utils.first_keywords(prompt, 2) == "young, curly haired,"
    assert utils.cut_to_keywords(prompt, 3) == "young, curly haired, redhead"
    assert utils.cut_to_keywords(prompt, 10) == prompt
    assert utils.rouge_references(["a, b, c", "a, b, c, d", "a"]) == ["a, b, c, d"]


@pytest.fixture(scope="module")
def tokenizer(gpt2_tokenizer):
    return gpt2_tokenizer


def test_bundled_tokenizer_is_gpt2(tokenizer):
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257


def test_eos_is_appended_and_kept_in_labels(tokenizer):
    batch = utils.tokenize_prompts({"Prompt": ["a cat, 8k", "a much longer prompt, with keywords, and more"]},
                                   tokenizer, "Prompt", max_length=8)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in batch["input_ids"])
    assert max(batch["length"]) == 8  # cut to the limit, EOS still last
    features = [{"input_ids": ids, "labels": labels} for ids, labels in zip(batch["input_ids"], batch["labels"])]
    padded = DataCollatorForSeq2Seq(tokenizer)(features)
    short = len(batch["input_ids"][0])
    # The pad id equals the EOS id, yet the EOS stays a label and only padding positions are -100.
    assert padded["labels"][0, short - 1] == tokenizer.eos_token_id
    assert (padded["labels"][0, short:] == -100).all()
    assert (padded["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (padded["labels"][1] != -100).all()


def test_accuracy_ignores_padding_counts_eos():
    eos = 9
    labels = np.array([[1, 2, 3, eos, -100, -100], [4, 5, 6, 7, 8, eos]])
    # Position t predicts label t+1; the prediction at padded positions is garbage and must not count.
    predictions = np.array([[2, 3, eos, 0, 0, 0], [5, 0, 7, 8, 0, 0]])
    assert utils.next_token_accuracy(predictions, labels) == pytest.approx(6 / 8)
    wrong_eos = predictions.copy()
    wrong_eos[0, 2] = 0
    assert utils.next_token_accuracy(wrong_eos, labels) == pytest.approx(5 / 8)


@pytest.mark.parametrize("prediction, expected_rouge_l", [
    ("a, b, c, d", 100.0),           # exactly the reference
    ("a, b, c, d, e, f", 100.0),     # more keywords than needed: cut away
    ("a, b, c", 66.67),              # fewer: "c" against "c d": P=1, R=1/2
    ("a, b", 0.0),                   # nothing beyond the input
    ("a, b, x y z, d", 33.33),       # "x y z d" against "c d": P=1/4, R=1/2
])
def test_keyword_aligned_rouge(prediction, expected_rouge_l):
    scores = utils.keyword_aligned_rouge(["a, b, c, d"], [prediction], num_input_keywords=2)
    assert scores["rougeL"] == pytest.approx(expected_rouge_l, abs=0.01)


def test_rouge_is_a_mean_over_pairs():
    scores = utils.keyword_aligned_rouge(["a, b, c, d", "a, b, c, d"], ["a, b, c, d", "a, b"], 2)
    assert scores == {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0}


def test_presets_match_the_seed_columns():
    p = decoding.PRESETS
    assert set(p) == {"greedy", "no_repeat_ngram", "beam", "temperature", "top_k", "top_p"}
    assert p["greedy"]["do_sample"] is False and p["greedy"]["num_beams"] == 1
    assert p["no_repeat_ngram"]["no_repeat_ngram_size"] == 3 and not p["no_repeat_ngram"]["do_sample"]
    assert p["beam"] == {"do_sample": False, "num_beams": 3, "no_repeat_ngram_size": 3}
    assert p["temperature"]["do_sample"] and p["temperature"]["temperature"] == 0.7
    assert p["top_k"]["do_sample"] and p["top_k"]["top_k"] == 50
    assert p["top_p"]["do_sample"] and p["top_p"]["top_p"] == 0.9


def test_stopping_criterion_per_row(tokenizer):
    prompts = ["a,", "a, b,"]
    continuations = [" x, y, z", " p q r s"]
    prompt_ids = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"]
    ids = [tokenizer.encode(c) for c in continuations]
    width = max(map(len, ids))
    new = torch.tensor([x + [tokenizer.eos_token_id] * (width - len(x)) for x in ids])
    full = torch.cat([prompt_ids, new], dim=1)
    # Row 0 needs 2 more commas (it has them), row 1 needs 1 (it has none).
    criterion = decoding.KeywordStoppingCriteria(tokenizer, len(tokenizer), prompt_ids.shape[1], [2, 1])
    assert criterion(full, None).tolist() == [True, False]
    # Rows repeated per beam follow their input.
    assert criterion(full.repeat_interleave(3, dim=0), None).tolist() == [True] * 3 + [False] * 3
    # Before any new token nothing is done.
    assert criterion(prompt_ids, None).tolist() == [False, False]
