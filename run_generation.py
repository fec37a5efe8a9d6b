"""Continue prompts from the command line: one cleaned prompt per line on standard output.

    python run_generation.py --prompt "young, curly haired,"
    echo "a castle," | python run_generation.py --strategy top_p --num_return_sequences 3 --num_keywords 12
    python run_generation.py --model_name_or_path=checkpoints/default --fp16 --model_type=gpt2 \\
        --prompt="young, curly haired," --length=80 --no_repeat_ngram_size=3
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

import utils


@dataclass
class GenerationArguments:
    model_name_or_path: str = field(default=utils.DEFAULT_CHECKPOINT, metadata={
        "help": "Checkpoint folder written by run_clm.py, or any causal LM."})
    model_type: str | None = field(default=None, metadata={
        "help": "Accepted for compatibility; the architecture is read from the checkpoint."})
    prompt: str | None = field(default=None, metadata={
        "help": "The first keyword(s), e.g. 'young, curly haired,'. Default: one prompt per line of standard input."})
    strategy: str = field(default="beam", metadata={
        "choices": list(utils.PRESETS), "help": "Decoding preset; the flags below override its settings."})
    length: int = field(default=128, metadata={"help": "Most new tokens to generate."})
    num_keywords: int | None = field(default=None, metadata={
        "help": "Stop once the prompt holds this many keywords (input ones included)."})
    num_return_sequences: int = field(default=1, metadata={"help": "Prompts to write per input."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (turns sampling on, beam search off)."})
    k: int | None = field(default=None, metadata={"help": "Top-k sampling (turns sampling on, beam search off)."})
    p: float | None = field(default=None, metadata={"help": "Top-p (nucleus) sampling (turns sampling on, beam search off)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beam search width."})
    no_repeat_ngram_size: int | None = field(default=None, metadata={"help": "Never repeat an n-gram of this size."})
    seed: int = field(default=42, metadata={"help": "Random seed for the sampling presets."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    fp16: bool = field(default=False, metadata={"help": "Run the model in float16 (GPU)."})
    bf16: bool = field(default=False, metadata={"help": "Run the model in bfloat16."})


def decoding_settings(args: GenerationArguments) -> dict:
    """The preset, overridden by any flag given; sampling knobs switch sampling on."""
    settings = dict(utils.PRESETS[args.strategy])
    overrides = {"temperature": args.temperature, "top_k": args.k, "top_p": args.p}
    if any(v is not None for v in overrides.values()):  # sampling, as the original script did: no beams
        settings.update(do_sample=True, num_beams=1)
    overrides.update(num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
    settings.update({name: value for name, value in overrides.items() if value is not None})
    return settings


def main() -> None:
    (args,) = HfArgumentParser(GenerationArguments).parse_args_into_dataclasses()
    texts = [args.prompt] if args.prompt is not None else [line for line in sys.stdin.read().splitlines()]
    # Cleaned and ending in a comma, as the training prompts are cut when the model is scored.
    inputs = [utils.clean_prompt(t) + "," for t in texts]
    if not inputs or "," in inputs:
        sys.exit("error: empty prompt. Give the first keyword(s), e.g. --prompt 'young, curly haired,'.")
    model, tokenizer = utils.load_checkpoint(args.model_name_or_path, args.device, args.fp16, args.bf16)

    context = utils.model_context(model)
    if args.length >= context:
        print(f"note: --length {args.length} does not fit the model's {context}-token context with a prompt; "
              f"using {context // 2}.", file=sys.stderr)
        args.length = context // 2
    room = context - args.length
    for n, text in enumerate(inputs):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > room:
            inputs[n] = tokenizer.decode(ids[-room:])
            print(f"note: prompt {n + 1} is {len(ids)} tokens; kept its last {room} so {args.length} new tokens "
                  f"fit the model's context.", file=sys.stderr)

    set_seed(args.seed)
    num_keywords = [args.num_keywords] * len(inputs) if args.num_keywords else None
    for prompt in utils.generate_prompts(model, tokenizer, inputs, decoding_settings(args), args.length,
                                         num_keywords, args.num_return_sequences):
        print(prompt)


if __name__ == "__main__":
    main()
