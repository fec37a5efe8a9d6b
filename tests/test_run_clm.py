"""run_clm.py end to end on a real Trainer: checkpoint contents, resume, legacy flags, errors."""

import json
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import utils
from conftest import OFFLINE, ROOT, STAND_IN, TINY, run


def test_checkpoint_holds_what_the_next_stage_needs(tiny_checkpoint):
    files = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            utils.EVAL_PROMPTS_FILE, "eval_results.json", "train_results.json", "README.md"} <= files
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert model.config.n_layer == 1
    metrics = json.loads((tiny_checkpoint / "eval_results.json").read_text())
    assert {"eval_loss", "eval_perplexity", "eval_accuracy"} <= set(metrics)
    assert 0 < metrics["eval_accuracy"] < 1 and metrics["eval_perplexity"] > 1
    held_out = utils.load_eval_prompts(tiny_checkpoint)
    assert len(held_out) == 40 and all(p == utils.clean_prompt(p) for p in held_out)
    assert "eval_accuracy" in (tiny_checkpoint / "README.md").read_text()


def test_original_recipe_flags_run_as_written(tiny_checkpoint, tmp_path):
    # The seed's GPU command, pointed at a local GPT-2-shaped folder and the local stand-in corpus.
    result = run("run_clm.py", f"--model_name_or_path={tiny_checkpoint}", f"--dataset_name={STAND_IN}",
                 "--per_device_train_batch_size=16", "--torch_dtype=bfloat16", "--num_train_epochs=10",
                 "--learning_rate=4e-4", "--do_train", "--do_eval", f"--output_dir={tmp_path / 'results'}",
                 "--save_steps=4000", "--evaluation_strategy=steps", "--eval_steps=4000",
                 "--max_train_samples=16", "--max_eval_samples=8", "--disable_tqdm=true")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "results" / "trainer_state.json").read_text())
    assert state["global_step"] == 10  # 10 epochs of one batch
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "results")
    assert str(model.dtype) == "torch.bfloat16"


def test_bf16_mixed_precision_on_cpu(tmp_path):
    result = run("run_clm.py", "--output_dir", tmp_path / "out", "--max_steps", "3", "--bf16",
                 "--max_eval_samples", "8", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_loss"] > 0


def test_resume_after_interruption(tmp_path):
    out = tmp_path / "out"
    args = ["--output_dir", out, "--max_steps", "40", "--save_steps", "5", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "4", *TINY]
    process = subprocess.Popen([sys.executable, str(ROOT / "run_clm.py"), *map(str, args)], env=OFFLINE, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.2)
    process.kill()  # interrupted mid-run
    process.wait()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert saved and saved[-1] < 40
    result = run("run_clm.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {out}/checkpoint-{saved[-1]}" in result.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    # An explicit restart starts from zero.
    result = run("run_clm.py", *args[:-len(TINY) - 2], "--max_steps", "3", "--overwrite_output_dir", *TINY)
    assert result.returncode == 0 and "Resuming" not in result.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


@pytest.fixture
def two_column_csv(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("title,caption\nx,a cat\ny,a dog\n")
    return path


@pytest.mark.parametrize("case", ["hub_unreachable", "missing_column", "empty_dataset", "missing_model",
                                  "missing_dataset_path"])
def test_clear_errors_and_nothing_written(case, tmp_path, two_column_csv):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args, message = {
        "hub_unreachable": (["--dataset_name", "nobody/no-such-prompts"], "--dataset_name path/to/folder"),
        "missing_column": (["--dataset_name", two_column_csv], "its columns are ['title', 'caption']"),
        "empty_dataset": (["--dataset_name", empty], "no non-empty prompts"),
        "missing_model": (["--model_name_or_path", tmp_path / "nope"], "does not exist"),
        "missing_dataset_path": (["--dataset_name", tmp_path / "nope.parquet"], "does not exist"),
    }[case]
    out = tmp_path / "out"
    result = run("run_clm.py", "--output_dir", out, *args, *TINY)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_refuses_a_folder_of_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("run_clm.py", "--output_dir", out, "--max_steps", "1", *TINY)
    assert result.returncode != 0 and "--overwrite_output_dir" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
