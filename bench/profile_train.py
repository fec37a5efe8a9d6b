"""Where one training step of run_clm.py's defaults spends its time, and whether torch.compile pays.

Builds the model as run_clm.py does from scratch (no dropout, one-kernel GELU, eager attention on CPUs) and trains
it on run_clm.py's own batches (its tokenization, group_by_length sampler and collator padding to a multiple) with
its step: bf16 autocast where native, the chunked loss, fused AdamW. Prints the top operators by CPU time, the
share of a step spent building batches, and ms/step eager vs with the transformer body under torch.compile
(compile time reported apart).

    python bench/profile_train.py                                    # the default model, about 3 minutes
    python bench/profile_train.py --tokenizer bench/runs/bpe-8k \\
        --scratch_config n_layer=4,n_embd=256,n_head=4,n_positions=256 \\
        --data ../shared/data/sd-discord-prompts                    # the best recipe's shape
"""

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import product_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import run_clm  # noqa: E402
import utils  # noqa: E402


def make_step(model, compile_body: bool, bf16: bool, chunk_tokens: int):
    """run_clm.py's training step: forward under autocast, chunked loss, backward, fused AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    body = torch.compile(model.base_model) if compile_body else model.base_model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def step(batch: dict) -> None:
        with autocast():
            hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            loss = run_clm.chunked_causal_lm_loss(hidden, model.get_output_embeddings(), batch["labels"], chunk_tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def time_steps(step, batches: list[dict]) -> float:
    """Mean seconds per step over the batches."""
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_batches", type=int, default=12, help="batches timed per row")
    parser.add_argument("--batch_size", type=int, default=run_clm.TrainingArguments.per_device_train_batch_size,
                        help="prompts per batch (run_clm.py's default)")
    parser.add_argument("--pad_to_multiple_of", type=int, default=run_clm.DataArguments.pad_to_multiple_of,
                        help="padding multiple (run_clm.py's default)")
    parser.add_argument("--scratch_config", default=run_clm.ModelArguments.scratch_config, help="GPT-2 shape")
    parser.add_argument("--tokenizer", default=str(utils.DEMO_TOKENIZER), help="tokenizer folder")
    parser.add_argument("--data", default=None, help="prompts, as run_clm.py --dataset_name. Default: the demo prompts")
    parser.add_argument("--output", default="bench/results/profile_train.json", help="JSON to write")
    args = parser.parse_args()
    model, tokenizer = run_clm.load_model_and_tokenizer(
        run_clm.ModelArguments(tokenizer_name=args.tokenizer, scratch_config=args.scratch_config))
    prompts = utils.load_prompts(args.data)["train"]["Prompt"][: args.batch_size * (args.num_batches + 2)]

    started = time.perf_counter()
    batches = product_batches(tokenizer, prompts, args.batch_size, args.pad_to_multiple_of, max_length=128)
    batch_seconds = (time.perf_counter() - started) / len(batches)
    warmup, timed = batches[:2], batches[2:]
    bf16, chunk = run_clm.NATIVE_BF16, 1024

    step = make_step(model, False, bf16, chunk)
    time_steps(step, warmup)
    eager = time_steps(step, timed)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        time_steps(step, timed[:4])
    top = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)

    model, _ = run_clm.load_model_and_tokenizer(
        run_clm.ModelArguments(tokenizer_name=args.tokenizer, scratch_config=args.scratch_config))
    step = make_step(model, True, bf16, chunk)
    started = time.perf_counter()
    time_steps(step, batches)  # compiles once per new batch shape until shapes go dynamic
    compile_seconds = time.perf_counter() - started
    compiled = time_steps(step, timed)

    result = {"model": args.scratch_config, "attention": model.config._attn_implementation, "bf16": bf16,
              "batch_build_ms": round(1000 * batch_seconds, 1), "eager_ms_per_step": round(1000 * eager, 1),
              "compiled_ms_per_step": round(1000 * compiled, 1), "compile_warmup_s": round(compile_seconds, 1)}
    print(top)
    print("| shape | attention | bf16 | batch build ms | eager ms/step | torch.compile ms/step | compile warm-up s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.scratch_config} | {result['attention']} | {bf16} | {result['batch_build_ms']} | "
          f"{result['eager_ms_per_step']} | {result['compiled_ms_per_step']} | {result['compile_warmup_s']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({**result, "top_ops": top}, indent=2))


if __name__ == "__main__":
    main()
