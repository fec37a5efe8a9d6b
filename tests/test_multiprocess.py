"""Two CPU processes (gloo) under torchrun and accelerate launch: training steps add up, eval scores equal one
process."""

import json
import socket
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from conftest import OFFLINE, ROOT, TINY, run

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                 "--master_port={port}"],
    # Without GPUs, accelerate's torchrun-based launcher is the one named --multi_gpu.
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port={port}"],
}


def launch(launcher: str, script: str, *args) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [part.format(port=port) for part in LAUNCHERS[launcher]] + [str(ROOT / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env={**OFFLINE, "OMP_NUM_THREADS": "1"},
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_training(launcher, tmp_path):
    out = tmp_path / "ddp"
    result = launch(launcher, "run_clm.py", "--output_dir", out, "--max_steps", "4",
                    "--per_device_train_batch_size", "4", "--max_train_samples", "64", "--max_eval_samples", "8", *TINY)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 1
    # 4 steps x 2 processes x 4 prompts: 32 prompts seen.
    assert json.loads((out / "train_results.json").read_text())["epoch"] == 0.5


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_eval_equals_one(launcher, tiny_checkpoint, tmp_path):
    args = ["--model_name_or_path", tiny_checkpoint, "--strategy", "greedy,top_k", "--max_samples", "12",
            "--batch_size", "4"]
    single = run("eval.py", *args, "--output_dir", tmp_path / "one")
    double = launch(launcher, "eval.py", *args, "--output_dir", tmp_path / "two")
    assert single.returncode == 0 and double.returncode == 0, double.stderr[-4000:]
    read = lambda d: json.loads((tmp_path / d / "rouge.json").read_text())
    assert read("one")["scores"] == read("two")["scores"] and read("two")["num_prompts"] == 12
