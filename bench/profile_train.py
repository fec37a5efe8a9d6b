"""Where a training step of the default model spends its time, and whether torch.compile pays.

Profiles run_clm.py's own batches (its tokenization, sampler and collator, via train_throughput.py) through
forward, backward and AdamW: the top operators by CPU time, the attention implementation in use, the share
of a step spent building batches, and ms/step eager vs torch.compile (compile time reported apart).

    python bench/profile_train.py             # about 3 minutes on 2 CPU cores
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import product_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402


def time_steps(model, batches: list[dict]) -> float:
    """Mean seconds per optimizer step over the batches, after one untimed warm-up step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = lambda b: (model(**b).loss.backward(), optimizer.step(), optimizer.zero_grad())
    step(batches[0])
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_batches", type=int, default=12, help="batches of 32 demo prompts timed per row")
    parser.add_argument("--scratch_config", default="n_layer=2,n_embd=128,n_head=4,n_positions=256",
                        help="GPT-2 shape (run_clm.py's default)")
    parser.add_argument("--output", default="bench/results/profile_train.json", help="JSON to write")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(utils.DEMO_TOKENIZER)
    utils.ensure_pad_token(tokenizer)
    prompts = utils.DEMO_DATA.read_text().splitlines()[: 32 * args.num_batches]

    started = time.perf_counter()
    batches = product_batches(tokenizer, prompts, 32)
    batch_seconds = (time.perf_counter() - started) / len(batches)

    config = GPT2Config(vocab_size=len(tokenizer))
    config.update_from_string(args.scratch_config)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    eager = time_steps(model, batches)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        time_steps(model, batches[:4])
    top = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)

    torch.manual_seed(0)
    compiled_model = torch.compile(GPT2LMHeadModel(config))
    started = time.perf_counter()
    time_steps(compiled_model, batches)  # first pass compiles, once per new batch shape until shapes go dynamic
    compile_seconds = time.perf_counter() - started
    compiled = time_steps(compiled_model, batches)

    result = {"model": args.scratch_config, "attention": model.config._attn_implementation,
              "batch_build_ms": round(1000 * batch_seconds, 1), "eager_ms_per_step": round(1000 * eager, 1),
              "compiled_ms_per_step": round(1000 * compiled, 1), "compile_warmup_s": round(compile_seconds, 1)}
    print(top)
    print("| attention | batch build ms | eager ms/step | torch.compile ms/step | compile warm-up s |")
    print("|---|---|---|---|---|")
    print(f"| {result['attention']} | {result['batch_build_ms']} | {result['eager_ms_per_step']} | "
          f"{result['compiled_ms_per_step']} | {result['compile_warmup_s']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({**result, "top_ops": top}, indent=2))


if __name__ == "__main__":
    main()
