"""Training throughput in real (non-padding) tokens per second. Three suites:

- batching: the product's batching (one prompt per example, EOS appended, batches of similar length padded per
  batch) against the original recipe's (every prompt padded to 1,024 tokens, labels masked by pad id), same
  model, same prompts, a bare training loop; plus the padding efficiency of run_clm.py's train dataloader over
  the whole corpus, and one row for a GPT-2-small shape.
- levers: `run_clm.py` itself on the best CPU recipe's shape (4x256 on an 8k BPE; `--shapes` adds more: before and
  after on those), one lever added per row, from the settings it trained with before (fp32, batch 32, dropout 0.1,
  GPT-2's seven-op GELU, AdamW, SDPA, the model's own loss) to today's defaults. The rows run in turn, `--rounds`
  times over, and each row's fastest round is reported with the spread: a shared CPU drifts by tens of percent
  from one minute to the next, interleaving puts the drift on every row alike, and interference only slows a run.
- gpu: GPT-2-small (12x768, random weights) on a GPU: the original recipe (batch 16 padded to 1,024, weights in
  bf16, bare loop) against run_clm.py's defaults and larger batches, torch.compile and data-loader workers,
  with model FLOPs utilisation against the GPU's bf16 peak. `bench/gpu_check.sh` runs it.

Rows that run run_clm.py read its logs (`num_input_tokens_seen`, `train_runtime`) and time only the steps after
the first log, so start-up, data loading and compilation are left out. Every row of a suite trains on the same
prompts.

    python bench/train_throughput.py --suite batching --num_prompts 32     # about 2 minutes on 2 CPU cores
    python bench/train_throughput.py --suite levers                          # about 25 minutes on 2 CPU cores
    python bench/train_throughput.py --suite gpu                             # on a CUDA machine
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, Trainer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_clm  # noqa: E402
import utils  # noqa: E402

BPE = ROOT / "bench" / "runs" / "bpe-8k"
# The settings run_clm.py trained with before, as flags; each lever row drops one of them (cumulative).
BEFORE = {"--bf16": "false", "--attn_implementation": "sdpa", "--loss_chunk_tokens": "0", "--optim": "adamw_torch",
          "--per_device_train_batch_size": "32", "--pad_to_multiple_of": "1"}
# Model settings of before, as --scratch_config pairs; a lever row drops one.
CONFIG = {"dropout": ",resid_pdrop=0.1,embd_pdrop=0.1,attn_pdrop=0.1",  # GPT-2's default, which run_clm.py kept
          "gelu": ",activation_function=gelu_new"}  # GPT-2's GELU as seven elementwise ops
LEVERS = [
    ("before: fp32, batch 32, dropout 0.1, GPT-2's GELU, AdamW, SDPA, model's loss, no padding multiple", None),
    ("+ bf16 autocast", "--bf16"),
    ("+ no dropout", "dropout"),
    ("+ one-kernel GELU (gelu_pytorch_tanh)", "gelu"),
    ("+ eager attention", "--attn_implementation"),
    ("+ chunked loss (1,024 tokens)", "--loss_chunk_tokens"),
    ("+ fused AdamW", "--optim"),
    ("+ padding to a multiple of 8 = today's defaults", "--pad_to_multiple_of"),
]
VARIANTS = {"defaults, batch 64 (the best recipe's)": ["--per_device_train_batch_size", "64"],
            "defaults, batch 128": ["--per_device_train_batch_size", "128"]}
GPU_ROWS = {
    "product defaults (bf16 autocast, batch 32, SDPA, fused AdamW)": [],
    "batch 256, 4 loader workers": ["--per_device_train_batch_size", "256", "--dataloader_num_workers", "4"],
    "batch 256, 4 workers, torch.compile": ["--per_device_train_batch_size", "256", "--dataloader_num_workers", "4",
                                            "--torch_compile", "true"],
}
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, from the vendors' data sheets


def product_batches(tokenizer, prompts: list[str], batch_size: int, pad_to_multiple_of: int | None = None,
                    max_length: int = 1024) -> list[dict]:
    """What run_clm.py feeds the model: its tokenization, its sampler (group_by_length), its collator."""
    dataset = __import__("datasets").Dataset.from_dict({"Prompt": prompts}).map(
        utils.tokenize_prompts, batched=True, remove_columns=["Prompt"],
        fn_kwargs=dict(tokenizer=tokenizer, text_column="Prompt", max_length=max_length))
    args = run_clm.TrainingArguments(output_dir="/tmp/bench-unused", per_device_train_batch_size=batch_size,
                                     report_to="none", bf16=False, use_cpu=True)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=len(tokenizer)))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=pad_to_multiple_of))
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


def train_rate(config: GPT2Config, batches: list[dict], device: str = "cpu", dtype=torch.float32) -> dict:
    """A bare loop: forward, backward, AdamW step, on the device, with the weights in dtype."""
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = GPT2LMHeadModel(config).to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    step = lambda b: (model(**b).loss.backward(), optimizer.step(), optimizer.zero_grad())
    step(batches[0])  # warm-up, not timed
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    sync()
    seconds = time.perf_counter() - started
    real, computed = efficiency(batches)
    prompts = sum(len(b["input_ids"]) for b in batches)
    return {"prompts": prompts, "seconds": round(seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
            "prompts_per_s": round(prompts / seconds, 2), "padding_efficiency": round(real / computed, 3),
            "peak_memory_gib": run_clm.peak_memory_gib()}


def run_clm_rate(flags: list[str], data: str, args) -> dict:
    """run_clm.py as a user runs it, for args.steps steps; the rate of the steps after the first log."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(ROOT / "run_clm.py"), "--dataset_name", data, "--output_dir", folder,
                   "--max_steps", str(args.steps), "--logging_steps", str(args.log_every), "--max_seq_length", "128",
                   "--max_train_samples", str(args.max_train_samples), "--do_eval", "false", "--save_strategy", "no",
                   "--report_to", "none", "--disable_tqdm", "true", "--build_memory", "false", *flags]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            print(f"run_clm.py failed: {' '.join(command)}\n{result.stderr[-3000:]}", file=sys.stderr)
            return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
        state = json.loads((Path(folder) / "trainer_state.json").read_text())
        metrics = json.loads((Path(folder) / "train_results.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    first, last = logs[0], logs[-1]
    seconds = last["train_runtime"] - first["train_runtime"]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    return {"steps_timed": last["step"] - first["step"], "seconds": round(seconds, 2),
            "real_tokens_per_s": round(tokens / seconds, 1),
            "ms_per_step": round(1000 * seconds / (last["step"] - first["step"]), 1),
            "peak_memory_gib": metrics.get("train_peak_memory_gib"), "startup_s": round(first["train_runtime"], 1)}


def flops_per_token(config: GPT2Config, mean_tokens: float) -> float:
    """Training FLOPs per real token: 6 per weight (forward and backward), plus attention over the prompt."""
    with torch.device("meta"):
        weights = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    return 6 * weights + 12 * config.n_layer * config.n_embd * mean_tokens


def bf16_peak_tflops(device: str) -> tuple[float, str]:
    """The data-sheet bf16 peak of a known GPU, else a measured large bf16 matrix product."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, value in BF16_PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name}, data sheet"
    size = 8192 if device.startswith("cuda") else 256  # a CPU without AMX takes a minute for one bf16 2048^2 product
    a, b = (torch.randn(size, size, dtype=torch.bfloat16, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * size**3 * 10 / (time.perf_counter() - started) / 1e12, "measured bf16 matrix product"


def markdown(rows: dict, columns: list[str]) -> str:
    lines = ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(str(r.get(c, "-")) for c in columns) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def batching_suite(args, tokenizer, prompts: list[str]) -> dict:
    real, computed = efficiency(product_batches(tokenizer, prompts, 32))
    corpus = {"prompts": len(prompts), "product_padding_efficiency": round(real / computed, 4)}
    real, computed = efficiency(original_batches(tokenizer, prompts[:4096], 16))
    corpus["original_padding_efficiency"] = round(real / computed, 4)
    sample = prompts[: args.num_prompts]
    small = GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=1024, vocab_size=len(tokenizer))
    rows = {"product, default model (2x128)": train_rate(small, product_batches(tokenizer, sample, 32)),
            "original, default model (2x128)": train_rate(small, original_batches(tokenizer, sample, 16))}
    gpt2_small = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=len(tokenizer))
    rows["product, GPT-2-small shape (12x768)"] = train_rate(gpt2_small, product_batches(tokenizer, sample[:32], 16))
    speedup = rows["product, default model (2x128)"]["real_tokens_per_s"] / \
        rows["original, default model (2x128)"]["real_tokens_per_s"]
    print(f"\nPadding efficiency over {corpus['prompts']} train prompts: product "
          f"{corpus['product_padding_efficiency']}, original {corpus['original_padding_efficiency']}\n")
    print(markdown(rows, ["prompts", "seconds", "real_tokens_per_s", "prompts_per_s", "padding_efficiency",
                          "peak_memory_gib"]))
    print(f"\nreal tokens/s, product vs original: {speedup:.1f}x")
    return {"corpus": corpus, "rows": rows, "speedup": round(speedup, 1)}


def lever_rows(first_shape: bool) -> dict:
    """{row name: (run_clm.py flags, --scratch_config suffix)}: every lever on the first shape, before and after on
    the others."""
    rows, before, config = {}, dict(BEFORE), dict(CONFIG)
    for name, lever in LEVERS:
        (config if lever in config else before).pop(lever, None)
        rows[name] = ([x for flag, value in before.items() for x in (flag, value)], "".join(config.values()))
    if not first_shape:
        return {name: rows[name] for name in (LEVERS[0][0], LEVERS[-1][0])}
    return rows | {name: (flags, "") for name, flags in VARIANTS.items()}


def padding_efficiency(flags: list[str], prompts: list[str], tokenizer, cache: dict) -> float:
    """Real tokens over computed tokens of the batches run_clm.py builds with these flags (batch size, padding
    multiple) from these prompts."""
    settings = dict(zip(flags[::2], flags[1::2]))
    default_batch = run_clm.TrainingArguments.per_device_train_batch_size
    batch_size = int(settings.get("--per_device_train_batch_size", default_batch))
    multiple = int(settings.get("--pad_to_multiple_of", run_clm.DataArguments.pad_to_multiple_of))
    if (batch_size, multiple) not in cache:
        batches = product_batches(tokenizer, prompts, batch_size, multiple, max_length=128)
        real, computed = efficiency(batches)
        cache[batch_size, multiple] = round(real / computed, 3)
    return cache[batch_size, multiple]


def levers_suite(args) -> dict:
    if not Path(args.tokenizer).exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "train_tokenizer.py"), "--data", args.data,
                        "--vocab_size", "8192", "--output", args.tokenizer], check=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    utils.ensure_pad_token(tokenizer)
    prompts = utils.load_prompts(args.data)["train"]["Prompt"][: args.max_train_samples]
    efficiencies, result = {}, {}
    for number, shape in enumerate(args.shapes.split(";")):
        rows = lever_rows(number == 0)
        runs = {name: [] for name in rows}
        for round_number in range(args.rounds):  # every row once per round, so drift falls on all of them alike
            for name, (flags, config) in rows.items():
                run = run_clm_rate(["--tokenizer_name", args.tokenizer, "--scratch_config", shape + config, *flags],
                                   args.data, args)
                runs[name].append(run)
                print(f"round {round_number + 1} | {shape} | {name} | {run}", file=sys.stderr, flush=True)
        table = {}
        for name, (flags, _) in rows.items():
            rates = sorted(r["real_tokens_per_s"] for r in runs[name] if "real_tokens_per_s" in r)
            if not rates:
                table[name] = runs[name][-1]
                continue
            fastest = next(r for r in runs[name] if r.get("real_tokens_per_s") == rates[-1])
            table[name] = {**fastest, "spread": f"{rates[0]:.0f}-{rates[-1]:.0f}", "rounds": rates,
                           "padding_efficiency": padding_efficiency(flags, prompts, tokenizer, efficiencies)}
        before = table[next(iter(table))].get("real_tokens_per_s")
        for r in table.values():
            r["vs_before"] = f"{r['real_tokens_per_s'] / before:.2f}x" if before and "real_tokens_per_s" in r else "-"
        print(f"\n{shape}, {args.tokenizer}, fastest of {args.rounds} rounds\n")
        print(markdown(table, ["real_tokens_per_s", "vs_before", "spread", "ms_per_step", "padding_efficiency",
                               "peak_memory_gib"]))
        result[shape] = table
    return result


def gpu_suite(args, tokenizer, prompts: list[str]) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak, peak_source = bf16_peak_tflops(device)
    config = GPT2Config(vocab_size=len(tokenizer))
    config.update_from_string(args.shapes.split(";")[0])
    # The original's bf16 weights on a GPU; on a CPU (the dry run checks the script) float32, as bf16 is slow there.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = {"original (batch 16 padded to 1,024, bf16 weights, bare loop)": train_rate(
        config, original_batches(tokenizer, prompts[: args.num_prompts], 16), device, dtype)}
    mean_tokens = sum(len(ids) + 1 for ids in tokenizer(prompts[:2000])["input_ids"]) / min(len(prompts), 2000)
    for name, flags in GPU_ROWS.items():
        if device == "cpu" and "--torch_compile" in flags:
            continue  # minutes of compiling on a CPU: the dry run leaves it out
        rows[name] = run_clm_rate(["--scratch_config", args.shapes.split(";")[0], *flags], args.data, args)
        batch_size = int(flags[flags.index("--per_device_train_batch_size") + 1]) if flags else \
            run_clm.TrainingArguments.per_device_train_batch_size
        real, computed = efficiency(product_batches(tokenizer, prompts[: args.max_train_samples], batch_size))
        rows[name]["padding_efficiency"] = round(real / computed, 3)
        print(f"{name} | {rows[name]}", file=sys.stderr, flush=True)
    per_token = flops_per_token(config, mean_tokens)
    original = rows[next(iter(rows))]["real_tokens_per_s"]
    for r in rows.values():
        if "real_tokens_per_s" in r:
            r["mfu"] = f"{100 * r['real_tokens_per_s'] * per_token / (peak * 1e12):.1f}%"
            r["vs_original"] = f"{r['real_tokens_per_s'] / original:.1f}x"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{name}; GPT-2 shape {args.shapes.split(';')[0]}; bf16 peak {peak:.0f} TFLOP/s ({peak_source}); "
          f"{per_token / 1e6:.0f} MFLOP per real token\n")
    print(markdown(rows, ["real_tokens_per_s", "vs_original", "mfu", "peak_memory_gib", "padding_efficiency"]))
    return {"device": name, "peak_tflops": peak, "peak_source": peak_source, "flops_per_token": per_token, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="batching", choices=["batching", "levers", "gpu"], help="which rows (above)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/sd-discord-prompts"),
                        help="prompts: a dataset folder or file, as run_clm.py --dataset_name takes")
    parser.add_argument("--num_prompts", type=int, default=64, help="prompts each bare-loop row trains on")
    parser.add_argument("--tokenizer", default=str(BPE), help="levers: tokenizer folder (trained on --data if missing)")
    parser.add_argument("--shapes", default=None, help="GPT-2 shapes as run_clm.py --scratch_config, ';' between "
                        "them. Default: the best CPU recipes' (levers), GPT-2-small (gpu)")
    parser.add_argument("--steps", type=int, default=80, help="run_clm.py rows: steps to train")
    parser.add_argument("--log_every", type=int, default=20,
                        help="run_clm.py rows: steps between logs (the first is untimed)")
    parser.add_argument("--max_train_samples", type=int, default=8192, help="run_clm.py rows: prompts to train on")
    parser.add_argument("--rounds", type=int, default=3, help="levers: times each row runs; the fastest is reported")
    parser.add_argument("--output", default=None,
                        help="JSON to write. Default: bench/results/train_throughput[_SUITE].json")
    args = parser.parse_args()
    args.shapes = args.shapes or {"levers": "n_layer=4,n_embd=256,n_head=4,n_positions=256",
                                  "gpu": "n_layer=12,n_embd=768,n_head=12,n_positions=1024"}.get(args.suite, "")
    suffix = "" if args.suite == "batching" else "_" + args.suite
    output = Path(args.output or f"bench/results/train_throughput{suffix}.json")

    tokenizer = AutoTokenizer.from_pretrained(utils.DEMO_TOKENIZER)
    utils.ensure_pad_token(tokenizer)
    if args.suite == "levers":
        result = levers_suite(args)
    else:
        prompts = utils.load_prompts(args.data)["train"]["Prompt"]
        suite = batching_suite if args.suite == "batching" else gpu_suite
        result = suite(args, tokenizer, prompts)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
