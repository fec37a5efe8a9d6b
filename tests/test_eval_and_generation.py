"""eval.py and run_generation.py on a real tiny checkpoint."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import decoding
import utils
from conftest import HAS_CUDA, ROOT, STAND_IN, run


def test_eval_table_files_and_reproducible(tiny_checkpoint, tmp_path):
    args = ["--model_name_or_path", tiny_checkpoint, "--strategy", "all", "--input_type", "both",
            "--max_samples", "6", "--batch_size", "6"]
    first = run("eval.py", *args, "--output_dir", tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| ROUGE-L | greedy | no_repeat_ngram | beam | temperature | top_k | top_p |"
    assert lines[2].startswith("| One Keyword |") and lines[3].startswith("| Two Keywords |")
    assert len(lines[3].split("|")) == 9  # label + 6 strategies
    for name in ("rouge.json", "rouge.md", "rouge.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert (tmp_path / "a" / "rouge.png").read_bytes()[:4] == b"\x89PNG"
    second = run("eval.py", *args, "--output_dir", tmp_path / "b")
    assert second.returncode == 0, second.stderr[-3000:]
    scores = [json.loads((tmp_path / d / "rouge.json").read_text())["scores"] for d in "ab"]
    assert scores[0] == scores[1]
    assert set(scores[0]) == {"one_keyword", "two_keyword"} and len(scores[0]["one_keyword"]) == 6
    # predictions.jsonl holds what was scored: every prompt of every column, and the same scores recomputed from it
    rows = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    num_prompts = json.loads((tmp_path / "a" / "rouge.json").read_text())["num_prompts"]
    assert len(rows) == num_prompts * 2 * 6
    for r in rows:  # each row continues its own input, the first keywords of its reference
        k = 1 if r["input_type"] == "one_keyword" else 2
        assert r["input"] == utils.first_keywords(r["reference"], k)
        assert utils.split_keywords(r["prediction"])[:k] == utils.split_keywords(r["input"])[:k]
    for input_type, k in (("one_keyword", 1), ("two_keyword", 2)):
        beam = [r for r in rows if r["input_type"] == input_type and r["strategy"] == "beam"]
        recomputed = utils.keyword_aligned_rouge([r["reference"] for r in beam], [r["prediction"] for r in beam], k)
        assert recomputed == {m: scores[0][input_type]["beam"][m] for m in recomputed}  # copy shares beside them
    card = (tiny_checkpoint / "README.md").read_text()  # the model card holds the table once, not once per run
    assert card.count("## Keyword-aligned ROUGE-L: held-out split") == 1 and lines[0] in card
    assert "eval_accuracy" in card


@pytest.mark.corpus
def test_early_stop_gives_the_scores_of_generating_to_the_end(tiny_checkpoint, tmp_path):
    args = ["--model_name_or_path", tiny_checkpoint, "--dataset_name", STAND_IN / "test.parquet",
            "--strategy", "greedy,no_repeat_ngram,top_k", "--max_samples", "12", "--batch_size", "12"]
    early = run("eval.py", *args, "--output_dir", tmp_path / "early")
    full = run("eval.py", *args, "--no_early_stop", "--output_dir", tmp_path / "full")
    assert early.returncode == 0 and full.returncode == 0, early.stderr[-2000:] + full.stderr[-2000:]
    read = lambda d: json.loads((tmp_path / d / "rouge.json").read_text())["scores"]
    assert read("early") == read("full")
    for strategy in ("greedy", "no_repeat_ngram", "top_k"):
        assert read("early")["two_keyword"][strategy]["rougeL"] > 0


def test_early_stop_keeps_the_full_length_text_of_a_model_that_never_writes_commas(tmp_path, demo_corpus):
    """An untrained model rambles for the whole context without a comma: eval.py must not cut it any sooner."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=160)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(utils.DEMO_TOKENIZER).save_pretrained(tmp_path)
    model, tokenizer = decoding.load_checkpoint(str(tmp_path), "cpu")
    references = utils.rouge_references(utils.load_prompts(str(demo_corpus / "test.parquet"))["train"]["Prompt"])[:6]
    predictions = {}
    for early_stop in (True, False):
        predictions[not early_stop] = decoding.predict_keywords(model, tokenizer, references, 1,
                                                                decoding.PRESETS["greedy"], 3, early_stop=early_stop)
    assert predictions[False] == predictions[True]
    # The case that matters: continuations far longer than their references, run to the context's end.
    longest = max(len(tokenizer(p)["input_ids"]) for p in predictions[False])
    assert longest > 2 * max(len(tokenizer(r)["input_ids"]) for r in references) + 16


def test_eval_errors(tiny_checkpoint, tmp_path):
    missing = run("eval.py", "--model_name_or_path", tmp_path / "nothing")
    assert missing.returncode != 0 and "python run_clm.py" in missing.stderr
    unknown = run("eval.py", "--model_name_or_path", tiny_checkpoint, "--strategy", "greedy,wild")
    assert unknown.returncode != 0 and "unknown strategy wild" in unknown.stderr
    negative = run("eval.py", "--model_name_or_path", tiny_checkpoint, "--max_samples", "-5")
    assert negative.returncode != 0 and "--max_samples must be at least 1; got -5" in negative.stderr
    for result in (missing, unknown, negative):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(HAS_CUDA, reason="asks for CUDA where PyTorch sees none; this machine has a CUDA GPU")
def test_cuda_asked_for_without_a_gpu(tiny_checkpoint):
    for script, extra in (("eval.py", []), ("run_generation.py", ["--prompt", "a,"])):
        cuda = run(script, "--model_name_or_path", tiny_checkpoint, "--device", "cuda", *extra)
        assert cuda.returncode != 0 and "no CUDA GPU" in cuda.stderr and "Traceback" not in cuda.stderr


def test_run_generation_prompt_and_stdin(tiny_checkpoint):
    result = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--prompt", "young, curly  haired",
                 "--num_keywords", "5", "--strategy", "top_p", "--num_return_sequences", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("young, curly haired,") and line == utils.clean_prompt(line)
        assert len(utils.split_keywords(line)) <= 5
    piped = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--strategy", "greedy",
                "--length", "8", stdin="a castle,\nan owl,\n")
    assert piped.returncode == 0, piped.stderr[-3000:]
    outputs = piped.stdout.splitlines()
    assert len(outputs) == 2 and outputs[0].startswith("a castle") and outputs[1].startswith("an owl")
    beams = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--strategy", "beam", "--prompt",
                "a castle,", "--num_keywords", "6", "--num_return_sequences", "5")  # more than the preset's 3 beams
    assert beams.returncode == 0, beams.stderr[-3000:]
    assert len(beams.stdout.splitlines()) == 5


def test_run_generation_original_flags_and_seed(tiny_checkpoint):
    args = ["--model_name_or_path", tiny_checkpoint, "--fp16", "--model_type=gpt2", "--prompt", "a castle,",
            "--length", "12", "--no_repeat_ngram_size", "3", "--temperature", "1.0", "--seed", "7"]
    first, second = run("run_generation.py", *args), run("run_generation.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout == second.stdout and first.stdout.startswith("a castle,")
    if not HAS_CUDA:  # --fp16 on a CPU says what it does instead; on a GPU it runs in float16
        assert "float32" in first.stderr


def test_run_generation_errors(tiny_checkpoint, tmp_path):
    empty = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--prompt", " , ")
    assert empty.returncode != 0 and "empty prompt" in empty.stderr
    missing = run("run_generation.py", "--model_name_or_path", tmp_path / "none", "--prompt", "a,")
    assert missing.returncode != 0 and "python run_clm.py" in missing.stderr
    strategy = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--prompt", "a,", "--strategy", "x")
    assert strategy.returncode != 0 and "invalid choice" in strategy.stderr
    long = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--prompt", "castle, " * 80,
               "--length", "10", "--strategy", "greedy")
    assert long.returncode == 0, long.stderr[-3000:]
    assert "kept its last 54" in long.stderr  # 64-token context minus 10 new tokens


def test_eval_says_whether_memory_was_on_and_weight_zero_is_the_model_alone(tiny_checkpoint, tmp_path):
    args = ["--strategy", "greedy,beam", "--max_samples", "16", "--batch_size", "8"]
    on = run("eval.py", "--model_name_or_path", tiny_checkpoint, *args, "--output_dir", tmp_path / "on")
    off = run("eval.py", "--model_name_or_path", tiny_checkpoint, *args, "--memory_weight", "0",
              "--output_dir", tmp_path / "off")
    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare, ignore=shutil.ignore_patterns("memory"))
    alone = run("eval.py", "--model_name_or_path", bare, *args, "--output_dir", tmp_path / "alone")
    assert on.returncode == off.returncode == alone.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert "Memory: on, " in on.stdout and "Memory: off (--memory_weight 0)" in off.stdout
    assert "Memory: none" in alone.stdout
    read = lambda d: json.loads((tmp_path / d / "rouge.json").read_text())
    strip = lambda scores: {i: {s: {k: v for k, v in m.items() if k.startswith("rouge")} for s, m in by.items()}
                            for i, by in scores.items()}
    assert strip(read("off")["scores"]) == read("alone")["scores"]  # weight 0: exactly the model alone
    assert read("on")["memory"] is True and read("off")["memory"] is False
    for result in (read("on"), read("off")):  # how much was copied, per column, with and without the memory
        copied = result["scores"]["one_keyword"]["beam"]
        assert 0 <= copied["copied_prompts"] <= 100 and copied["copied_keywords"] >= 0
    assert "% equal to a training prompt" in on.stdout and "longest run copied" in on.stdout


def test_weight_first_output_layer_computes_the_same_logits_and_prompts(tiny_checkpoint):
    """The output layer decoding may switch to (faster on some CPUs) gives the model's own logits, with a bias too,
    and the same beam prompts; it is forced here so every machine runs it."""
    model, tokenizer = decoding.load_checkpoint(str(tiny_checkpoint), "cpu")
    layer = model.get_output_embeddings()
    layer.__class__ = torch.nn.Linear
    inputs = tokenizer(["a castle,", "young, curly haired,"], return_tensors="pt", padding=True)
    prompts = ["a castle,", "young, curly haired,", "portrait of"]
    with torch.inference_mode():
        expected = model(**inputs).logits
        written = decoding.generate_prompts(model, tokenizer, prompts, decoding.PRESETS["beam"], 40,
                                            num_keywords=[8] * 3)
        layer.__class__ = decoding.WeightFirstLinear
        assert layer.weight is model.get_input_embeddings().weight  # still tied
        logits = model(**inputs).logits
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        assert logits.is_contiguous()  # rows one after another: decoding's log-softmax and top-k are slow otherwise
        assert decoding.generate_prompts(model, tokenizer, prompts, decoding.PRESETS["beam"], 40,
                                         num_keywords=[8] * 3) == written
        biased = torch.nn.Linear(16, 50)
        x = torch.randn(2, 3, 16)
        plain = biased(x)
        biased.__class__ = decoding.WeightFirstLinear
        torch.testing.assert_close(biased(x), plain, rtol=1e-5, atol=1e-5)
        assert biased(x).is_contiguous()


def test_freed_memory_is_kept_and_reused():
    """With glibc, a script's main (run_main) keeps what PyTorch frees: once the heap holds the blocks a loop needs,
    making a large tensor again costs no fresh pages, where without it each of its 4 KB pages is a page fault. In a
    fresh process, as a script runs."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    count = """
import resource, sys, torch, utils
if sys.argv[1] == "kept":
    assert utils.keep_freed_memory()
for step in range(40):
    if step == 30:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits = torch.empty(40 * 2**20 // 4).fill_(1.0)  # 40 MB, over glibc's largest mmap threshold
    kept = torch.empty(1000)  # a small block between, as a real loop has
    del logits
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""
    faults = {}
    for how in ("kept", "given back"):
        result = subprocess.run([sys.executable, "-c", count, how], capture_output=True, text=True, cwd=ROOT,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        faults[how] = int(result.stdout)
    assert faults["given back"] > 5000 and faults["kept"] < 1000, faults  # 10,240 pages when each is fresh
