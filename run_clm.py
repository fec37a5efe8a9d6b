"""Fine-tune a causal LM to continue Stable Diffusion prompts, one prompt per training example.

    python run_clm.py                      # offline default: small GPT-2 from scratch on the demo prompts
    python run_clm.py --model_name_or_path=gpt2 --dataset_name=Gustavosta/Stable-Diffusion-Prompts ...

Writes a save_pretrained folder (model, tokenizer, generation config, the cleaned eval split, metrics,
model card) that eval.py, run_generation.py and run_gradio.py read. Run with --help for every flag.
"""

import importlib.util
import math
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

# oneDNN keeps up to 1,024 compiled kernels per process, one per matrix shape; prompts of every length make new
# shapes each step, and under bf16 a long CPU run grew by gigabytes. 64 keeps memory flat at the same speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers
from datasets import DatasetDict
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    GgufConfig,
    GPT2Config,
    Trainer,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import decoding
import utils
from memory import PromptMemory, tune_weights


def native_bf16() -> bool:
    """bf16 pays only where the hardware computes it natively: bf16 GPUs, and CPUs with AMX tiles. With AVX512-BF16
    alone (AMD EPYC) CPU training in bf16 was measured many times slower than fp32 (bench/README.md)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            amx = any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:  # not Linux: no way to tell, and fp32 is never the slow choice
        amx = False
    return amx and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# Defaults that depend on the hardware are plain values computed once here: HfArgumentParser ignores a
# default_factory for booleans, so the command line would otherwise not get them.
ON_GPU = torch.cuda.is_available()
NATIVE_BF16 = native_bf16()


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T + bias) against targets, chunk_tokens rows at a time. Each chunk's
    gradients are made in the forward pass, next to its logits, which are then dropped: no logits are kept for the
    backward pass nor made again there."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        grad_bias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        device = hidden.device.type  # the products' precision: autocast's where it is on (as the model's own layer)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        weight_in_dtype = weight.to(dtype)  # cast once, not once per chunk
        for i in range(0, len(targets), chunk_tokens):
            h, t = hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens]
            log_probs = torch.log_softmax(F.linear(h, weight, bias).float(), dim=-1)
            total += -log_probs.gather(1, t[:, None]).sum()
            grad = log_probs.exp_()  # d(loss)/d(logits): softmax minus one-hot, then in the products' precision
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad = grad.to(dtype)
            grad_hidden[i:i + chunk_tokens] = grad @ weight_in_dtype
            grad_weight += (grad.t() @ h.to(dtype)).float()
            if bias is not None:
                grad_bias += grad.float().sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_total, grad_weight * grad_total,
                None if grad_bias is None else grad_bias * grad_total, None, None)


def chunked_causal_lm_loss(hidden: torch.Tensor, output_layer: torch.nn.Linear, labels: torch.Tensor,
                           chunk_tokens: int, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """The causal LM loss the model computes itself (position t predicts label t+1, -100 ignored; a sum over
    num_items when given, as the Trainer asks, else a mean), made chunk_tokens labelled positions at a time with
    their gradients: the float32 logits of the whole batch never exist, padded positions cost nothing, and no
    logits are made twice."""
    targets = labels[:, 1:].reshape(-1)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])[targets != -100]
    targets = targets[targets != -100]
    total = _LinearCrossEntropy.apply(hidden, output_layer.weight, output_layer.bias, targets, chunk_tokens)
    return total / (num_items if num_items is not None else max(len(targets), 1))


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Keep only the argmax: the full logits of an eval set would not fit in memory.
    return logits.argmax(dim=-1)


def compute_metrics(eval_pred) -> dict:
    return {"accuracy": utils.next_token_accuracy(eval_pred.predictions, eval_pred.label_ids)}


def peak_memory_gib() -> float:
    """Peak memory of this process so far: the GPU's allocations on CUDA, else the resident set (Linux's VmHWM,
    which, unlike getrusage, does not inherit the peak of the process that started this one)."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 2**20, 2)
    except (OSError, AttributeError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub name or local folder of the model to fine-tune. Default: a small GPT-2 trained from scratch."})
    gguf_file: str | None = field(default=None, metadata={
        "help": "GGUF checkpoint to start from (llama.cpp format; needs the gguf package): a path to the .gguf "
                "file, or its name inside --model_name_or_path. Saved as plain safetensors."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "Tokenizer name or folder. Default: the model's, or the bundled GPT-2 tokenizer from scratch."})
    scratch_config: str = field(default="n_layer=2,n_embd=128,n_head=4,n_positions=256", metadata={
        "help": "GPT-2 shape when training from scratch (no --model_name_or_path), as key=value pairs."})
    attn_implementation: str | None = field(default=None if ON_GPU else "eager", metadata={
        "help": "Attention kernel: eager, sdpa, flash_attention_2... Default: eager on CPUs (for prompt-length "
                "sequences it trains faster than SDPA's CPU kernel, see bench/README.md), the model's own on GPUs."})
    dtype: str = field(default="auto", metadata={
        "aliases": ["--torch_dtype"], "choices": ["auto", "float32", "bfloat16", "float16"],
        "help": "Dtype the weights are loaded in (--torch_dtype is the old name). For mixed precision use "
                "--bf16/--fp16."})


@dataclass
class DataArguments:
    bounds: ClassVar[dict] = {"validation_split_percentage": (0.01, 99), "memory_tuning_samples": (0, None),
                              "max_train_samples": (1, None), "max_eval_samples": (1, None),
                              "max_seq_length": (2, None),
                              "pad_to_multiple_of": (1, None)}
    dataset_name: str | None = field(default=None, metadata={
        "help": "Hub dataset name, local dataset folder, or a parquet/csv/json/jsonl/txt file. Default: the demo "
                "prompts."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    text_column: str = field(default="Prompt", metadata={"help": "Column holding the prompts."})
    validation_split_percentage: float = field(default=5, metadata={
        "help": "Percent of train held out for evaluation when the dataset has no validation or test split."})
    build_memory: bool = field(default=True, metadata={
        "help": "At the end of training, build the memory of the train split (memory/ in the output folder) that "
                "decoding mixes in, and choose its weights on the set-aside prompts. --build_memory false skips it."})
    memory_tuning_samples: int = field(default=300, metadata={
        "help": "Prompts set aside from the train split before training, to choose the memory's mixing weights on "
                "prompts that neither the model nor the memory holds (saved as memory_tuning_prompts.jsonl). "
                "At most a tenth of the train split (of --max_train_samples when given). "
                "0: train on every prompt and keep the memory's default weights."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training prompts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many eval prompts."})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "Longest prompt in tokens (EOS included); longer ones are cut. Default: the model's context."})
    pad_to_multiple_of: int | None = field(default=8, metadata={
        "help": "Pad each batch to a multiple of this many tokens (1: no padding beyond the longest prompt). "
                "Default 8, the shapes GPU kernels want; on CPUs it trains as fast as 1 (bench/README.md)."})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """Transformers' TrainingArguments with this product's defaults (the small offline model)."""
    bounds: ClassVar[dict] = {"learning_rate": (0, None), "num_train_epochs": (0.001, None),
                              "per_device_train_batch_size": (1, None), "per_device_eval_batch_size": (1, None),
                              "loss_chunk_tokens": (0, None), "logging_steps": (0.001, None),
                              "save_steps": (0.001, None),
                              "warmup_steps": (0, None), "save_total_limit": (1, None)}
    output_dir: str = field(default=utils.DEFAULT_CHECKPOINT, metadata={"help": "Checkpoint folder to write."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Delete the output folder and start over instead of resuming from its last checkpoint."})
    do_train: bool = field(default=True, metadata={"help": "Train (on by default; --no_do_train to skip)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate at the end (on by default)."})
    eval_strategy: str = field(default="no", metadata={
        "aliases": ["--evaluation_strategy"], "choices": ["no", "steps", "epoch"],
        "help": "When to evaluate during training (--evaluation_strategy is the old name)."})
    bf16: bool = field(default=NATIVE_BF16, metadata={
        "help": f"bf16 mixed precision. Default: on where the GPU or CPU computes bf16 natively (here: {NATIVE_BF16}; "
                f"--bf16 false turns it off)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(default=1, metadata={"help": "Epochs to train."})
    per_device_train_batch_size: int = field(default=32, metadata={
        "help": "Prompts per batch per device. Default 32, what the default model learns most from in its budget; "
                "larger models on more data train faster with 64 (bench/README.md)."})
    optim: str = field(default="adamw_torch_fused", metadata={
        "help": "Optimizer (a Trainer name). Default: PyTorch's fused AdamW, one kernel per step on CPUs and GPUs."})
    loss_chunk_tokens: int = field(default=0 if ON_GPU else 1024, metadata={
        "help": "Compute the training loss this many tokens at a time, so the float32 logits of a whole batch never "
                "exist and padded positions cost nothing. 0: the model's own loss. Default: 1024 "
                "on CPUs, 0 on GPUs. Applies to one-process training; evaluation uses the model's own loss."})
    include_num_input_tokens_seen: str = field(default="non_padding", metadata={
        "help": "Count real (non-padding) tokens, so the logs show train_tokens_per_second."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Prompts per eval batch per device."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps, or a fraction of all steps if < 1."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        "help": "group_by_length batches prompts of similar length, so little compute goes to padding."})
    logging_steps: float = field(default=50, metadata={"help": "Log the loss every this many steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a resumable checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "Every weight of a causal LM is used each step; searching for unused ones costs a graph walk."})

    def __post_init__(self):
        if self.fp16:  # an explicit --fp16 wins over the bf16 default
            self.bf16 = False
        if not torch.cuda.is_available() and (self.bf16 or int(os.environ.get("WORLD_SIZE", 1)) > 1):
            self.use_cpu = True  # how Trainer knows to run bf16, or gloo DDP under torchrun, on CPUs
        super().__post_init__()


def load_splits(args: DataArguments, prompts_to_train: int | None = None) -> DatasetDict:
    """Train and validation splits: the dataset's validation split, else its test split, else a carve; and the
    prompts set aside to tune the memory. `prompts_to_train`: how many prompts a --max_steps run will see."""
    dataset = utils.load_prompts(args.dataset_name, args.dataset_config_name, args.text_column)
    name = args.dataset_name or "the demo prompts"
    train = dataset.get("train")
    if train is None or len(train) == 0:
        raise utils.InputError(f"dataset {name} has no non-empty prompts in a train split (splits: {list(dataset)}).")
    eval_split = dataset.get("validation") or dataset.get("test")
    if eval_split is None:
        held_out = train.train_test_split(test_size=args.validation_split_percentage / 100, seed=42)
        train, eval_split = held_out["train"], held_out["test"]
    if len(eval_split) == 0:
        raise utils.InputError(f"the eval split of {name} is empty; raise --validation_split_percentage.")
    # At most a tenth of what trains: a --max_train_samples or --max_steps smoke run does not spend longer tuning
    # than training.
    trained = min(args.max_train_samples or len(train), len(train), prompts_to_train or len(train))
    train, tuning = utils.set_aside(train, min(args.memory_tuning_samples, trained // 10))
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        eval_split = eval_split.select(range(min(args.max_eval_samples, len(eval_split))))
    return DatasetDict(train=train, validation=eval_split, tuning=tuning)


def load_model_and_tokenizer(args: ModelArguments):
    if args.gguf_file and os.path.isfile(args.gguf_file) and not args.model_name_or_path:
        args.model_name_or_path, args.gguf_file = os.path.split(os.path.abspath(args.gguf_file))
    if args.gguf_file and not args.model_name_or_path:
        raise utils.InputError(f"GGUF file {args.gguf_file} not found. Pass its path, or its name with "
                               f"--model_name_or_path.")
    if args.gguf_file and importlib.util.find_spec("gguf") is None:
        raise utils.InputError("--gguf_file needs the gguf package: pip install gguf")
    path = args.model_name_or_path
    if path and utils.looks_like_path(path) and not os.path.exists(path):
        raise utils.InputError(f"model folder {path} does not exist.")
    tokenizer_source = args.tokenizer_name or path or str(utils.DEMO_TOKENIZER)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source,
                                                  gguf_file=None if args.tokenizer_name else args.gguf_file)
        if path is None:
            # No dropout: it costs about 10% of a CPU step, and recalling prompts seen in training is the point.
            # gelu_pytorch_tanh is GPT-2's own tanh GELU as one kernel instead of seven elementwise ops.
            config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                                eos_token_id=tokenizer.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                activation_function="gelu_pytorch_tanh")
            config.update_from_string(args.scratch_config)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=args.attn_implementation)
        else:
            # A GGUF is unpacked into dense weights: trainable, and saved as plain safetensors.
            gguf = dict(gguf_file=args.gguf_file, quantization_config=GgufConfig(dequantize=True)) \
                if args.gguf_file else {}
            model = AutoModelForCausalLM.from_pretrained(path, dtype=args.dtype,
                                                         attn_implementation=args.attn_implementation, **gguf)
            if getattr(model, "hf_quantizer", None) is not None:
                model.hf_quantizer.remove_quantization_config(model)
    except OSError as e:
        reason = " ".join(str(e).split())[:300]
        raise utils.InputError(f"could not load {path or tokenizer_source}: {reason} Without Hub access pass a local "
                               f"folder.") from None
    if path is None and args.dtype not in ("auto", "float32"):
        model = model.to(getattr(torch, args.dtype))
    utils.ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


class PromptTrainer(Trainer):
    """The Trainer, with the training loss computed in chunks of tokens (--loss_chunk_tokens)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chunk = self.args.loss_chunk_tokens
        if return_outputs or not chunk or not model.training or self.args.world_size > 1:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        with self.accelerator.autocast():  # accelerate puts autocast on model.forward only, which this skips
            hidden = model.base_model(**inputs).last_hidden_state
            return chunked_causal_lm_loss(hidden, model.get_output_embeddings(), labels, chunk, num_items_in_batch)


def prepare_output_dir(args: TrainingArguments) -> str | None:
    """The checkpoint to resume from, if any. Refuses to mix a new run into a folder of other files."""
    folder = args.output_dir
    if not os.path.isdir(folder) or not os.listdir(folder) or not args.do_train:
        return None
    if args.overwrite_output_dir:
        shutil.rmtree(folder)
        return None
    last = get_last_checkpoint(folder)
    if last is None:
        raise utils.InputError(f"output folder {folder} is not empty and holds no checkpoint to resume from. "
                 f"Pass --overwrite_output_dir to replace it, or choose another --output_dir.")
    print(f"Resuming from {last} (pass --overwrite_output_dir to start over).")
    return last


def write_model_card(folder: str, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments,
                     metrics: dict) -> None:
    base = model_args.model_name_or_path or f"GPT-2 from scratch ({model_args.scratch_config})"
    if model_args.gguf_file:
        base = os.path.join(base, model_args.gguf_file)
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    length = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs} epochs"
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    text = f"""# Prompt continuation model

Continues Stable Diffusion prompts keyword by keyword; written by `run_clm.py`.

- Base model: {base}
- Data: {data_args.dataset_name or "bundled demo prompts (synthetic)"}, column `{data_args.text_column}`
- Recipe: {length}, learning rate {args.learning_rate}, {schedule} schedule,
  batch {args.per_device_train_batch_size} per device, bf16={args.bf16}, fp16={args.fp16}

| metric | value |
| --- | --- |
{rows}

Score it: `python eval.py --model_name_or_path {folder}`
"""
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(text)


def build_memory(folder: str, token_ids: list[list[int]], prompts: DatasetDict, tokenizer, args: DataArguments) -> None:
    """The memory of the prompts the model trained on, its weights chosen on the prompts set aside before training."""
    memory = PromptMemory.build(token_ids, prompts["train"]["Prompt"], tokenizer, folder,
                                source=args.dataset_name or "demo prompts")
    print(f"Memory: {memory.info['num_prompts']:,} prompts, {memory.info['num_tokens']:,} tokens, built in "
          f"{memory.info['build_seconds']} s")
    if len(prompts["tuning"]):
        model, inference_tokenizer = decoding.load_checkpoint(folder)
        weights, _ = tune_weights(model, inference_tokenizer, memory, prompts["tuning"]["Prompt"])
        print(f"Memory weights chosen on {len(prompts['tuning'])} set-aside prompts: {weights}")


def main() -> None:
    model_args, data_args, training_args = utils.parse_arguments((ModelArguments, DataArguments, TrainingArguments))
    training_args.dataloader_pin_memory &= torch.cuda.is_available()  # pinning only helps host-to-GPU copies
    set_seed(training_args.seed)
    started = time.time()

    prompts_to_train = None
    if training_args.do_train and training_args.max_steps > 0:
        prompts_to_train = (training_args.max_steps * training_args.per_device_train_batch_size
                            * training_args.gradient_accumulation_steps * training_args.world_size)
    prompts = load_splits(data_args, prompts_to_train)
    model, tokenizer = load_model_and_tokenizer(model_args)
    # Only now, with data and model known good, may an explicit --overwrite_output_dir delete anything.
    with training_args.main_process_first(local=False):  # one process clears or checks the folder first
        resume_from = prepare_output_dir(training_args)
    context = decoding.model_context(model)
    max_length = min(data_args.max_seq_length or context, context)
    tokenized = prompts.map(utils.tokenize_prompts, batched=True, remove_columns=["Prompt"],
                            fn_kwargs=dict(tokenizer=tokenizer, text_column="Prompt", max_length=max_length),
                            desc="Tokenizing")

    trainer = PromptTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        # Pads ids with the pad token and labels with -100 by position: EOS stays a label even when pad == EOS.
        data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=data_args.pad_to_multiple_of),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    metrics = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_from)
        result.metrics["train_peak_memory_gib"] = peak_memory_gib()
        trainer.save_model()
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(train_loss=result.metrics["train_loss"])
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50))
        trainer.save_metrics("eval", eval_metrics)
        metrics.update({k: eval_metrics[k] for k in ("eval_loss", "eval_perplexity", "eval_accuracy")})
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        model.generation_config.save_pretrained(training_args.output_dir)
        utils.save_prompts(prompts["validation"]["Prompt"], training_args.output_dir)
        utils.save_prompts(prompts["tuning"]["Prompt"], training_args.output_dir, utils.TUNING_PROMPTS_FILE)
        if data_args.build_memory:
            build_memory(training_args.output_dir, tokenized["train"]["input_ids"], prompts, tokenizer, data_args)
        metrics["wall_time_s"] = round(time.time() - started, 1)
        write_model_card(training_args.output_dir, model_args, data_args, training_args, metrics)
        print(f"\nCheckpoint: {os.path.abspath(training_args.output_dir)}")
        print(f"Next: python eval.py --model_name_or_path {training_args.output_dir}")
    if torch.distributed.is_initialized():  # leave together and cleanly: an exit with gloo threads alive aborts
        utils.leave_process_group()


if __name__ == "__main__":
    utils.run_main(main)
