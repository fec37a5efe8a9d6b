"""Benchmark scripts that must not rot: the GPU check's dry mode and quality.py's data flags."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import HAS_CUDA, OFFLINE, ROOT, STAND_IN, run

# The shell script calls `python`: the interpreter running these tests, even from an unactivated venv.
SCRIPT_ENV = {**OFFLINE, "PATH": os.path.dirname(sys.executable) + os.pathsep + OFFLINE.get("PATH", "")}


def test_gpu_check_dry_mode_writes_every_table(tmp_path, demo_corpus):
    out = tmp_path / "gpu"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), str(demo_corpus), "--dry"],
                            capture_output=True, text=True, env=SCRIPT_ENV, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in ("1. Training throughput", "4a. python run_clm.py", "2. Evaluation speed", "3. Demo latency",
                    "4b. python eval.py", "4c. python run_generation.py"):
        assert heading in report
    rows = json.loads((out / "train_throughput.json").read_text())["rows"]
    original = next(r for name, r in rows.items() if name.startswith("original"))
    assert original["padding_efficiency"] < 0.2  # padded to 1,024
    assert all(r["real_tokens_per_s"] > 0 for r in rows.values())
    assert json.loads((out / "eval_speed.json").read_text())["identical"] is True
    assert json.loads((out / "latency.json").read_text())["median_ms"] > 0
    assert set(json.loads((out / "rouge.json").read_text())["scores"]) == {"one_keyword", "two_keyword"}
    assert "young, curly haired," in report


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal where there is no GPU; this machine has one (the real run is "
                                      "bench/gpu_check.sh itself)")
def test_gpu_check_refuses_without_a_gpu(tmp_path):
    no_gpu = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "a"), str(ROOT / "data")],
                            capture_output=True, text=True, env=SCRIPT_ENV)
    assert no_gpu.returncode != 0 and "--dry" in no_gpu.stderr


def test_gpu_check_refuses_without_data(tmp_path):
    no_data = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "b"),
                              str(tmp_path / "none")], capture_output=True, text=True, env=SCRIPT_ENV)
    assert no_data.returncode == 2 and "not found" in no_data.stderr


def test_quality_baselines_from_a_corpus_passed_by_path(tmp_path, demo_corpus, tiny_checkpoint):
    """Data as flags: a corpus folder for training, test sets with a split; a model row scored by eval.py; every
    row split by seen and new openings; missing data is a clear message."""
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)  # scores are written into the model folder: not the shared fixture's
    args = ["--rows", "constant,retrieval,default", "--folder", f"default={model}", "--strategies", "beam",
            "--max_samples", "20", "--train_data", demo_corpus,
            "--test_sets", f"demo test={demo_corpus}:test,demo train={demo_corpus}:train"]
    result = run("bench/quality.py", *args, "--output", tmp_path / "q")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "q.json").read_text())["rows"]
    demo_test = table["retrieval"]["scores"]["demo test"]["one_keyword"]["baseline"]
    demo_train = table["retrieval"]["scores"]["demo train"]["one_keyword"]["baseline"]
    assert demo_train > demo_test  # train prompts retrieve themselves
    assert "#### demo test (20 prompts, ROUGE-L)" in result.stdout and "| default |" in result.stdout
    assert table["retrieval"]["scores"]["demo train"]["by_opening"]["one_keyword"]["num_seen"] == 20
    for row in table.values():  # the two parts of the split make up the whole (to rounding)
        scores = row["scores"]["demo test"]
        for input_type in ("one_keyword", "two_keyword"):
            split, whole = scores["by_opening"][input_type], max(scores[input_type].values())
            assert split["num_seen"] + split["num_new"] == 20
            parts = (split["seen"] or 0) * split["num_seen"] + (split["new"] or 0) * split["num_new"]
            assert abs(parts / 20 - whole) < 0.02
    assert (model / "quality-demo-test-20-memory-on" / "predictions.jsonl").exists()
    assert "| default + memory |" in result.stdout
    missing = run("bench/quality.py", "--train_data", tmp_path / "nowhere", "--rows", "constant")
    assert missing.returncode != 0 and "--train_data" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.corpus
def test_quality_table_of_a_copied_corpus_equals_the_default(tmp_path):
    """The stand-in laid out like a Hub dataset (train/test parquet files), passed by path, gives today's table."""
    copy = tmp_path / "stand-in"
    shutil.copytree(STAND_IN, copy)
    common = ["--rows", "constant,retrieval", "--max_samples", "100"]
    moved = STAND_IN.resolve() != (ROOT.parent / "shared" / "data" / "sd-discord-prompts").resolve()  # PROMPT_CORPORA
    default = run("bench/quality.py", *common, *(["--train_data", STAND_IN] if moved else []),
                  "--test_sets", f"stand-in test={STAND_IN}:test", "--output", tmp_path / "a")
    copied = run("bench/quality.py", *common, "--train_data", copy, "--test_sets", f"stand-in test={copy}:test",
                 "--output", tmp_path / "b")
    assert default.returncode == 0 and copied.returncode == 0, default.stderr[-2000:] + copied.stderr[-2000:]
    assert default.stdout == copied.stdout and "| retrieval |" in default.stdout
