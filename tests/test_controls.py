"""The generation controls: blocklist, no repeated keyword, CLIP token budget, and the quiet command line."""

import importlib.util
import random
import re

import pytest
import torch

import decoding
import utils
from conftest import TINY, run

STYLES = ["digital painting", "concept art", "highly detailed", "sharp focus", "octane render", "unreal engine",
          "matte painting", "illustration", "cinematic lighting", "vibrant colors", "artstation", "smooth"]
SUBJECTS = ["castle", "dragon", "knight", "forest", "city", "robot", "ship", "mountain lake", "owl", "witch"]
GREG = re.compile(r"\bgreg rutkowski\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def habit_checkpoint(tmp_path_factory):
    """A tiny GPT-2 trained on prompts that nearly always name Greg Rutkowski and write 'trending' twice."""
    folder = tmp_path_factory.mktemp("habits")
    rng = random.Random(0)
    prompts = [", ".join([rng.choice(SUBJECTS), "by greg rutkowski", "trending", "trending", *rng.sample(STYLES, 4)])
               for _ in range(2000)]
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
    result = run("run_clm.py", "--dataset_name", folder / "prompts.txt", "--output_dir", folder / "model",
                 "--max_steps", "300", "--learning_rate", "1e-2", "--per_device_train_batch_size", "16",
                 "--max_eval_samples", "16", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "model"


def masked_steps(processor, tokenizer, pieces: list[str]) -> list[bool]:
    """For text written piece by piece (each piece encoded alone: a forced tokenization), whether the
    processor masks each token after the first piece."""
    ids = [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
    start = len(tokenizer(pieces[0], add_special_tokens=False)["input_ids"])
    masked = []
    for position in range(start, len(ids)):
        scores = processor(torch.tensor([ids[:position]]), torch.zeros(1, len(tokenizer)))
        masked.append(bool(torch.isinf(scores[0, ids[position]])))
    return masked


@pytest.mark.parametrize("pieces", [
    ["a portrait, by", " Greg", " Rutkowski", ","],
    ["a portrait, by", " GREG", " RUTKOWSKI", ","],
    ["a portrait, by", " g", "reg", " rut", "kowski", ","],
    ["a portrait, by", " gr", "eg", " R", "utk", "owski", " and others"],
    ["a portrait, by greg", " rutkowski,"],
    ["a portrait,", "greg rutkowski", ","],
    ["a portrait, by", " greg rutkowski"],
])
def test_every_tokenization_of_a_blocked_phrase_is_masked(gpt2_tokenizer, pieces):
    """The first token masked is the one that would complete the phrase as a whole word (the one that ends the word
    after it, when the phrase ends with a token), and none before it."""
    processor = decoding.BlocklistProcessor(gpt2_tokenizer, ["Greg Rutkowski"])
    pieces = pieces + [gpt2_tokenizer.eos_token]
    masked = masked_steps(processor, gpt2_tokenizer, pieces)
    ids = [i for piece in pieces for i in gpt2_tokenizer(piece, add_special_tokens=False)["input_ids"]]
    start = len(gpt2_tokenizer(pieces[0], add_special_tokens=False)["input_ids"])
    completes = re.compile(r"(?<![^\W_])greg rutkowski(?=[\W_])")
    written = [gpt2_tokenizer.decode(ids[:p + 1], skip_special_tokens=True).lower() + " " * (ids[p] == ids[-1])
               for p in range(start, len(ids))]
    first = next(n for n, text in enumerate(written) if completes.search(text))
    assert masked[first] and not any(masked[:first]), (pieces, masked)


@pytest.mark.parametrize("phrase, pieces", [
    ("greg rutkowski", ["a portrait, by", " greg", "ory", ","]),
    ("art", ["a portrait,", " art", "station", ","]),
    ("art", ["a portrait,", " he", "art", ","]),
    ("art", ["a portrait,", " smart", " lighting", ","]),
])
def test_blocklist_matches_whole_words_only(gpt2_tokenizer, phrase, pieces):
    processor = decoding.BlocklistProcessor(gpt2_tokenizer, [phrase])
    assert not any(masked_steps(processor, gpt2_tokenizer, pieces))


def test_blocked_word_never_written_by_a_model_that_loves_it(habit_checkpoint):
    model, tokenizer = decoding.load_checkpoint(str(habit_checkpoint))
    inputs = [f"{subject}," for subject in SUBJECTS] * 20  # 200 generations
    preset = decoding.PRESETS["top_k"]
    torch.manual_seed(0)
    free = decoding.generate_prompts(model, tokenizer, inputs[:100], preset, 24, num_keywords=[4] * 100)
    torch.manual_seed(0)
    blocked = decoding.generate_prompts(model, tokenizer, inputs, preset, 24, num_keywords=[4] * len(inputs),
                                     blocklist=["Greg Rutkowski"])
    assert sum(bool(GREG.search(p)) for p in free) >= 50  # the habit is real
    assert not any(GREG.search(p) for p in blocked), [p for p in blocked if GREG.search(p)][:3]
    assert all(p.startswith(i.rstrip(",")) for p, i in zip(blocked, inputs))
    kept = decoding.generate_prompts(model, tokenizer, ["greg rutkowski,"], decoding.PRESETS["greedy"], 20,
                                  blocklist=["greg rutkowski"])
    assert kept[0].startswith("greg rutkowski")  # the user's own keywords stay


def test_blocklist_that_blocks_everything_is_refused(gpt2_tokenizer):
    with pytest.raises(ValueError, match="would block every keyword"):
        decoding.BlocklistProcessor(gpt2_tokenizer, ["nsfw", " , "])


def test_repeated_keyword_is_replaced_and_the_count_holds(habit_checkpoint):
    model, tokenizer = decoding.load_checkpoint(str(habit_checkpoint))
    inputs = [f"{subject}," for subject in SUBJECTS]
    for preset in ("greedy", "top_k"):
        torch.manual_seed(0)
        repeated = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS[preset], 60,
                                             num_keywords=[4] * 10)
        assert sum("trending, trending" in p for p in repeated) >= 5  # the habit is real
        torch.manual_seed(0)
        prompts = decoding.generate_prompts(model, tokenizer, inputs, decoding.PRESETS[preset], 60,
                                            num_keywords=[4] * 10, no_repeat_keywords=True)
        for prompt in prompts:
            keywords = [utils.normalize_keyword(k) for k in utils.split_keywords(prompt)]
            assert len(keywords) == 4 and len(set(keywords)) == 4 and all(keywords), prompt


def open_clip_reference():
    """open_clip's own tokenizer module, loaded from its wheel (pip install --no-deps open_clip_torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("needs open_clip's tokenizer as the reference: pip install --no-deps open_clip_torch ftfy")
    path = spec.submodule_search_locations[0] + "/tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the module alone: the package would import torchvision
    return module.SimpleTokenizer()


def test_clip_token_counts_equal_open_clip():
    reference = open_clip_reference()
    texts = ["young, curly haired, redhead, by Greg Rutkowski!!", "a CAT's 4k photo, élégant café, 日本, emoji 🙂",
             "  multiple   spaces,,, and_underscores (weights:1.2) [brackets] {x|y}", "&amp; html &lt;b&gt; 1234567",
             "ﬁne ligature, Ｆｕｌｌwidth, e\u0301 accent", "â€œmojibakeâ€\x9d “curly” quotes", "tab\tnew\nline", "",
             "trending on artstation, octane render, 8k, unreal engine 5, " * 6]
    texts += utils.DEMO_DATA.read_text().splitlines()[:200]
    assert decoding.clip_token_counts(texts) == [len(reference.encode(t)) for t in texts]


def test_clip_budget_cuts_at_whole_keywords(habit_checkpoint):
    prompt = "castle, by greg rutkowski, digital painting, highly detailed, octane render, unreal engine"
    counts = decoding.clip_token_counts([utils.cut_to_keywords(prompt, n) for n in range(1, 7)])
    for budget in range(counts[0], counts[-1] + 2):
        cut = decoding.fit_clip_budget(prompt, budget)
        assert decoding.clip_token_counts([cut])[0] <= budget and prompt.startswith(cut)
        assert cut == prompt or prompt[len(cut):].startswith(", ")  # whole keywords only
        one_more = utils.cut_to_keywords(prompt, len(utils.split_keywords(cut)) + 1)
        assert decoding.clip_token_counts([one_more])[0] > budget or cut == prompt  # and no more would fit
    model, tokenizer = decoding.load_checkpoint(str(habit_checkpoint))
    prompts = decoding.generate_prompts(model, tokenizer, [f"{s}," for s in SUBJECTS], decoding.PRESETS["greedy"], 60,
                                     max_clip_tokens=12)
    assert all(n <= 12 for n in decoding.clip_token_counts(prompts)) and all(p.count(",") >= 1 for p in prompts)
    with pytest.raises(ValueError, match="alone takes"):
        decoding.generate_prompts(model, tokenizer, ["castle, " * 20], decoding.PRESETS["greedy"], 10,
                                  max_clip_tokens=12)


def test_command_line_controls_and_quiet_output(habit_checkpoint):
    result = run("run_generation.py", "--model_name_or_path", habit_checkpoint, "--prompt", "castle,", "--strategy",
                 "top_k", "--num_return_sequences", "4", "--num_keywords", "6", "--blocklist", "Greg Rutkowski, owl",
                 "--max_clip_tokens", "30", "--length", "40")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]  # nothing on stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("castle") for line in lines)
    assert not any(GREG.search(line) for line in lines)
    assert all(n <= 30 for n in decoding.clip_token_counts(lines))
    for line in lines:
        keywords = [utils.normalize_keyword(k) for k in utils.split_keywords(line)]
        assert len(keywords) == len(set(keywords))
    repeats = run("run_generation.py", "--model_name_or_path", habit_checkpoint, "--prompt", "castle,", "--strategy",
                  "greedy", "--num_keywords", "6", "--allow_repeated_keywords", "--length", "40")
    assert repeats.returncode == 0 and "trending, trending" in repeats.stdout


@pytest.mark.parametrize("flags, message", [
    (["--blocklist", "nsfw, !!"], "would block every keyword"),
    (["--max_clip_tokens", "2", "--prompt", "a very long first keyword, and a second one,"],
     "CLIP tokens, over the budget"),
])
def test_command_line_refuses_bad_controls(tiny_checkpoint, flags, message):
    args = ["--model_name_or_path", tiny_checkpoint, *flags]
    result = run("run_generation.py", *(args if "--prompt" in flags else args + ["--prompt", "castle,"]))
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
