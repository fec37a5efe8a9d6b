"""run_clm.py end to end on a real Trainer: checkpoint contents, resume, legacy flags, errors."""

import json
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import run_clm
import utils
from conftest import OFFLINE, ROOT, TINY, run


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
    held_out = utils.load_saved_prompts(tiny_checkpoint)
    assert len(held_out) == 40 and all(p == utils.clean_prompt(p) for p in held_out)
    assert "eval_accuracy" in (tiny_checkpoint / "README.md").read_text()


def test_scratch_model_has_no_dropout_and_gpt2s_gelu_in_one_kernel(tiny_checkpoint, tmp_path):
    """The from-scratch model learns what GPT-2's shape learns: the same tanh GELU, computed by one kernel."""
    import torch
    from transformers.activations import ACT2FN

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["activation_function"] == "gelu_pytorch_tanh"
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0
    x = torch.linspace(-10, 10, 20001)
    assert torch.allclose(ACT2FN["gelu_pytorch_tanh"](x), ACT2FN["gelu_new"](x), atol=1e-6)
    # --scratch_config still sets any of them (bench/train_throughput.py measures the settings of before so).
    out = tmp_path / "before"
    flags = ["--scratch_config",
             "n_layer=1,n_embd=64,n_head=2,n_positions=64,activation_function=gelu_new,resid_pdrop=0.1"]
    result = run("run_clm.py", "--output_dir", out, "--max_steps", "1", "--do_eval", "false", *flags, *TINY[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    before = json.loads((out / "config.json").read_text())
    assert before["activation_function"] == "gelu_new" and before["resid_pdrop"] == 0.1


def test_original_recipe_flags_run_as_written(tiny_checkpoint, tmp_path, demo_corpus):
    # The seed's GPU command, pointed at a local GPT-2-shaped folder and a local dataset folder (train/test parquet);
    # the memory's weight search (hundreds of beam decodings) is left to the tests of the memory.
    result = run("run_clm.py", f"--model_name_or_path={tiny_checkpoint}", f"--dataset_name={demo_corpus}",
                 "--per_device_train_batch_size=16", "--torch_dtype=bfloat16", "--num_train_epochs=10",
                 "--learning_rate=4e-4", "--do_train", "--do_eval", f"--output_dir={tmp_path / 'results'}",
                 "--save_steps=4000", "--evaluation_strategy=steps", "--eval_steps=4000",
                 "--max_train_samples=16", "--max_eval_samples=8", "--disable_tqdm=true", "--memory_tuning_samples=0")
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


def test_bf16_default_from_the_command_line_is_what_help_says(tmp_path):
    """HfArgumentParser ignores a boolean field's default_factory: the default must reach the parsed arguments."""
    native = run_clm.native_bf16()  # the GPU's answer where there is one, else the CPU's
    help_text = " ".join(run("run_clm.py", "--help").stdout.split())
    assert f"computes bf16 natively (here: {native};" in help_text
    out = tmp_path / "out"
    result = run("run_clm.py", "--output_dir", out, "--max_steps", "2", "--max_eval_samples", "8", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"bf16={native}" in (out / "README.md").read_text()
    off = run("run_clm.py", "--output_dir", tmp_path / "off", "--max_steps", "2", "--max_eval_samples", "8",
              "--bf16", "false", *TINY)
    assert off.returncode == 0 and "bf16=False" in (tmp_path / "off" / "README.md").read_text()


def test_chunked_loss_is_the_models_own_loss_and_gradient():
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=32)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()  # eval: no dropout
    ids = torch.randint(0, 300, (3, 12))
    labels = ids.clone()
    labels[0, 9:], labels[2, 5:] = -100, -100  # padding, as the collator writes it
    mask = (labels != -100).long()
    for num_items in (None, torch.tensor(40)):
        model.zero_grad()
        own = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items).loss
        own.backward()
        own_grads = [p.grad.clone() for p in model.parameters()]
        for chunk in (1, 7, 1024):
            model.zero_grad()
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            chunked = run_clm.chunked_causal_lm_loss(hidden, model.get_output_embeddings(), labels, chunk, num_items)
            chunked.backward()
            assert torch.allclose(chunked, own, atol=1e-5)
            assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(own_grads, model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as training runs on a CPU with native bf16
        model.zero_grad()
        own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        own.backward()
        own_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        chunked = run_clm.chunked_causal_lm_loss(hidden, model.get_output_embeddings(), labels, 7)
        chunked.backward()
    assert torch.allclose(chunked, own, rtol=1e-3)
    assert all(torch.allclose(a, p.grad, rtol=0.05, atol=1e-3) for a, p in zip(own_grads, model.parameters()))


def test_default_training_logs_real_tokens_per_second_and_peak_memory(tmp_path):
    """One epoch over a small file: the tokens seen are exactly the training prompts' tokens, EOS included, none of
    the padding that batches of 32 padded to a multiple of 8 add."""
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(utils.DEMO_DATA.read_text().splitlines()[:200]) + "\n")
    out = tmp_path / "out"
    result = run("run_clm.py", "--dataset_name", data, "--output_dir", out, "--num_train_epochs", "1",
                 "--logging_steps", "2", "--build_memory", "false", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    train = json.loads((out / "train_results.json").read_text())
    assert train["train_peak_memory_gib"] > 0.1
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logs) >= 2 and all(e["train_tokens_per_second"] > 0 for e in logs)
    splits = run_clm.load_splits(run_clm.DataArguments(dataset_name=str(data), memory_tuning_samples=0))  # as TINY
    tokenizer = AutoTokenizer.from_pretrained(out)
    train_prompts = {"Prompt": list(splits["train"]["Prompt"])}
    lengths = [len(ids) for ids in utils.tokenize_prompts(train_prompts, tokenizer, "Prompt", 64)["input_ids"]]
    seen = json.loads((out / "trainer_state.json").read_text())["log_history"][-1]["num_input_tokens_seen"]
    padded = sum(-(-n // 8) * 8 for n in lengths)
    assert seen == sum(lengths) < padded
