import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
STAND_IN = SHARED / "data" / "sd-discord-prompts"
TINY = ["--scratch_config", "n_layer=1,n_embd=64,n_head=2,n_positions=64", "--disable_tqdm", "true"]
# No test reaches the Hub: names that are not local paths fail fast instead of waiting on the network.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(script: str, *args: str, stdin: str | None = None, timeout: int = 600, cwd: Path = ROOT,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the product's scripts as a user would (env: extra variables)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**OFFLINE, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny GPT-2 trained for a few steps on the demo prompts: real Trainer, real folder."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    result = run("run_clm.py", "--output_dir", folder, "--max_steps", "60", "--max_eval_samples", "40",
                 "--learning_rate", "1e-2", "--per_device_train_batch_size", "16", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder
