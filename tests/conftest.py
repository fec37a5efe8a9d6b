import os
import subprocess
import sys
from pathlib import Path

import pytest

# pytest -n N runs N workers side by side: each (and the scripts it starts) takes its share of the cores. Threads
# beyond the cores spin against each other: two tiny trainings side by side on 2 cores took 76 s with 2 threads each,
# 34 s with 1 (bench/README.md).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import decoding  # noqa: E402
import utils  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Real-prompt corpora, for the tests marked `corpus`: PROMPT_CORPORA names the folder that holds them.
CORPORA = Path(os.environ.get("PROMPT_CORPORA") or ROOT.parent / "shared" / "data")
STAND_IN = CORPORA / "sd-discord-prompts"  # train.parquet and test.parquet, one `Prompt` column
# A tiny model; its memory is built as by default, with the default weights (choosing them is tested where it counts).
TINY = ["--scratch_config", "n_layer=1,n_embd=64,n_head=2,n_positions=64", "--disable_tqdm", "true",
        "--memory_tuning_samples", "0"]
# Tests hold on a CPU machine and on a CUDA one: what depends on the hardware is asked, not assumed.
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"  # where --device auto runs
# No test reaches the Hub: names that are not local paths fail fast instead of waiting on the network.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pytest_configure(config):
    config.addinivalue_line("markers", "corpus: needs the stand-in prompt corpus (PROMPT_CORPORA); skipped without it")


def pytest_collection_modifyitems(config, items):
    if (STAND_IN / "test.parquet").exists():
        return
    reason = (f"needs the stand-in prompt corpus, not found at {STAND_IN}: set PROMPT_CORPORA to a folder holding "
              f"sd-discord-prompts/train.parquet and test.parquet (default: ../shared/data beside the repository)")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def run(script: str, *args: str, stdin: str | None = None, timeout: int = 600, cwd: Path = ROOT,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the product's scripts as a user would (env: extra variables)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**OFFLINE, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The bundled GPT-2 tokenizer, padding with its EOS as the scripts do."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(utils.DEMO_TOKENIZER)
    utils.ensure_pad_token(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A dataset folder laid out like the real ones (train.parquet, test.parquet), made of the bundled demo prompts."""
    import pandas as pd
    folder = tmp_path_factory.mktemp("demo-corpus")
    prompts = utils.DEMO_DATA.read_text().splitlines()
    pd.DataFrame({"Prompt": prompts[:-500]}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"Prompt": prompts[-500:]}).to_parquet(folder / "test.parquet")
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny GPT-2 trained for a few steps on the demo prompts: real Trainer, real folder."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    result = run("run_clm.py", "--output_dir", folder, "--max_steps", "60", "--max_eval_samples", "40",
                 "--learning_rate", "1e-2", "--per_device_train_batch_size", "16", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A Stable Diffusion pipeline of tiny random components and the real CLIP tokenizer (no download), saved as a
    diffusers folder, as AutoPipelineForText2Image loads it."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    tokenizer = decoding.clip_tokenizer()
    blocks = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, cross_attention_dim=32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, **blocks)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=len(tokenizer),
                                                bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("pipeline") / "tiny-sd"
    pipeline.save_pretrained(folder)
    return folder
