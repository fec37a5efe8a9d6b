"""Training throughput: the product's batching (one prompt per example, EOS appended, batches of similar
length padded per batch) against the original recipe's (every prompt padded to 1,024 tokens, labels masked
by pad id), same model, same prompts. Also the padding efficiency of run_clm.py's real train dataloader
over the whole stand-in corpus, and one row for a GPT-2-small shape.

    python bench/train_throughput.py             # about 4 minutes on 2 CPU cores
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, Trainer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_clm  # noqa: E402
import utils  # noqa: E402


def product_batches(tokenizer, prompts: list[str], batch_size: int) -> list[dict]:
    """What run_clm.py feeds the model: its tokenization, its sampler (group_by_length), its collator."""
    dataset = __import__("datasets").Dataset.from_dict({"Prompt": prompts}).map(
        utils.tokenize_prompts, batched=True, remove_columns=["Prompt"],
        fn_kwargs=dict(tokenizer=tokenizer, text_column="Prompt", max_length=1024))
    args = run_clm.TrainingArguments(output_dir="/tmp/bench-unused", per_device_train_batch_size=batch_size,
                                     report_to="none", bf16=False, use_cpu=True)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=len(tokenizer)))
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer), processing_class=tokenizer)
    return list(trainer.get_train_dataloader())


def original_batches(tokenizer, prompts: list[str], batch_size: int) -> list[dict]:
    """The 2023 recipe: pad to 1,024, labels = ids with every pad (= EOS) position set to -100."""
    batches = []
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], padding="max_length", truncation=True,
                            max_length=1024, return_tensors="pt")
        labels = encoded["input_ids"].masked_fill(encoded["input_ids"] == tokenizer.pad_token_id, -100)
        batches.append({**encoded, "labels": labels})
    return batches


def efficiency(batches: list[dict]) -> tuple[int, int]:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    computed = sum(b["input_ids"].numel() for b in batches)
    return real, computed


def train_rate(config: GPT2Config, batches: list[dict]) -> dict:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = lambda b: (model(**b).loss.backward(), optimizer.step(), optimizer.zero_grad())
    step(batches[0])  # warm-up, not timed
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    seconds = time.perf_counter() - started
    real, computed = efficiency(batches)
    prompts = sum(len(b["input_ids"]) for b in batches)
    return {"prompts": prompts, "seconds": round(seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
            "prompts_per_s": round(prompts / seconds, 2), "padding_efficiency": round(real / computed, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/sd-discord-prompts"), help="prompt folder")
    parser.add_argument("--num_prompts", type=int, default=64, help="prompts each timed row trains on")
    parser.add_argument("--output", default="bench/results/train_throughput.json", help="JSON to write")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(utils.DEMO_TOKENIZER)
    utils.ensure_pad_token(tokenizer)
    prompts = utils.load_prompts(args.data)["train"]["Prompt"]

    real, computed = efficiency(product_batches(tokenizer, prompts, 32))
    corpus = {"prompts": len(prompts), "product_padding_efficiency": round(real / computed, 4)}
    real, computed = efficiency(original_batches(tokenizer, prompts[:4096], 16))
    corpus["original_padding_efficiency"] = round(real / computed, 4)
    print(json.dumps(corpus))

    sample = prompts[: args.num_prompts]
    small = GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=1024, vocab_size=len(tokenizer))
    rows = {"product, default model (2x128)": train_rate(small, product_batches(tokenizer, sample, 32)),
            "original, default model (2x128)": train_rate(small, original_batches(tokenizer, sample, 16))}
    gpt2_small = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=len(tokenizer))
    rows["product, GPT-2-small shape (12x768)"] = train_rate(gpt2_small, product_batches(tokenizer, sample[:32], 16))
    speedup = rows["product, default model (2x128)"]["real_tokens_per_s"] / \
        rows["original, default model (2x128)"]["real_tokens_per_s"]

    print(f"\nPadding efficiency over {corpus['prompts']} stand-in train prompts: product "
          f"{corpus['product_padding_efficiency']}, original {corpus['original_padding_efficiency']}\n")
    print("| batching | prompts | seconds | real tokens/s | prompts/s | padding efficiency | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['prompts']} | {r['seconds']} | {r['real_tokens_per_s']} | {r['prompts_per_s']} | "
              f"{r['padding_efficiency']} | {r['peak_rss_gib']} |")
    print(f"\nreal tokens/s, product vs original: {speedup:.1f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"corpus": corpus, "rows": rows, "speedup": round(speedup, 1)}, indent=2))


if __name__ == "__main__":
    main()
