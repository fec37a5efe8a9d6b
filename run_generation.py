"""Continue prompts from the command line: one cleaned prompt per line on standard output.

    python run_generation.py --prompt "young, curly haired,"
    echo "a castle," | python run_generation.py --strategy top_p --num_return_sequences 3 --num_keywords 12
    python run_generation.py --prompt "a portrait," --blocklist "nsfw, greg rutkowski" --max_clip_tokens 75
    python run_generation.py --input_file keywords.txt --output_file prompts.jsonl    # batch mode, resumable
    python run_generation.py --prompt "a castle," --max_copied_keywords 3            # no more than 3 copied in a row
    python run_generation.py --model_name_or_path=checkpoints/default --fp16 --model_type=gpt2 \\
        --prompt="young, curly haired," --length=80 --no_repeat_ngram_size=3

Batch mode appends one record per prompt to --output_file (.jsonl: input, prompt, strategy, seed, candidate
number and CLIP tokens; .csv the same columns; .txt one prompt per line, for wildcard files). Started again on
the same files it skips what is already written, so a run killed part-way loses nothing. A checkpoint with a
memory of its training prompts (memory/) decodes with it; --memory_weight 0 turns it off.
"""

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from tqdm.auto import tqdm
from transformers import set_seed
from transformers.utils import logging

import decoding
import utils

OUTPUT_FORMATS = ("jsonl", "csv", "txt")
COLUMNS = ["line", "input", "candidate", "prompt", "strategy", "seed", "clip_tokens"]


@dataclass
class GenerationArguments:
    bounds: ClassVar[dict] = {"batch_size": (1, None), "length": (1, None), "num_keywords": (1, None),
                              "num_return_sequences": (1, None), "max_clip_tokens": (1, None),
                              "temperature": (0.01, None), "k": (0, None), "p": (0.01, 1), "num_beams": (1, None),
                              "no_repeat_ngram_size": (0, None)}
    model_type: str | None = field(default=None, metadata={
        "help": "Accepted for compatibility; the architecture is read from the checkpoint."})
    prompt: str | None = field(default=None, metadata={
        "help": "The first keyword(s), e.g. 'young, curly haired,'. Default: one prompt per line of standard input."})
    input_file: str | None = field(default=None, metadata={
        "help": "Batch mode: a UTF-8 text file of keywords, one prompt's input per line (empty lines skipped)."})
    output_file: str | None = field(default=None, metadata={
        "help": "Batch mode: file the prompts are appended to; its extension (.jsonl, .csv, .txt) picks the format. "
                "Run again with the same files to resume."})
    output_format: str | None = field(default=None, metadata={
        "choices": list(OUTPUT_FORMATS), "help": "Format of --output_file when its extension does not say it."})
    batch_size: int = field(default=32, metadata={"help": "Batch mode: inputs generated at once."})
    strategy: str = field(default="beam", metadata={
        "choices": list(decoding.PRESETS), "help": "Decoding preset; the flags below override its settings."})
    length: int = field(default=128, metadata={"help": "Most new tokens to generate."})
    num_keywords: int | None = field(default=None, metadata={
        "help": "Stop once the prompt holds this many keywords (input ones included)."})
    num_return_sequences: int = field(default=1, metadata={"help": "Prompts to write per input."})
    blocklist: str | None = field(default=None, metadata={
        "help": "Comma-separated words or phrases the model may never write, whatever their case or tokenization "
                "(whole words; your own input keywords stay), e.g. 'nsfw, greg rutkowski'."})
    blocklist_file: str | None = field(default=None, metadata={
        "help": "A file of blocked words or phrases, one per line."})
    max_clip_tokens: int | None = field(default=None, metadata={
        "help": "End each prompt at its last whole keyword that fits this many tokens of Stable Diffusion's CLIP "
                "text encoder (75 fit in one chunk)."})
    allow_repeated_keywords: bool = field(default=False, metadata={
        "help": "Let the model write a keyword the prompt already holds (by default it writes another instead)."})
    temperature: float | None = field(default=None, metadata={
        "help": "Sampling temperature (turns sampling on, beam search off)."})
    k: int | None = field(default=None, metadata={"help": "Top-k sampling (turns sampling on, beam search off)."})
    p: float | None = field(default=None, metadata={
        "help": "Top-p (nucleus) sampling (turns sampling on, beam search off)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beam search width."})
    no_repeat_ngram_size: int | None = field(default=None, metadata={"help": "Never repeat an n-gram of this size."})
    seed: int = field(default=42, metadata={"help": "Random seed for the sampling presets (batch mode: plus the "
                                                    "batch's first line number, saved with each prompt)."})


def decoding_settings(args: GenerationArguments) -> dict:
    """The preset, overridden by any flag given; sampling knobs switch sampling on."""
    settings = dict(decoding.PRESETS[args.strategy])
    overrides = {"temperature": args.temperature, "top_k": args.k, "top_p": args.p}
    if any(v is not None for v in overrides.values()):  # sampling, as the original script did: no beams
        settings.update(do_sample=True, num_beams=1)
    overrides.update(num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
    settings.update({name: value for name, value in overrides.items() if value is not None})
    return settings


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file, or an InputError saying why it is not one."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise utils.InputError(f"cannot read {what} {path}: {e.strerror}.") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise utils.InputError(f"{what} {path} is not a UTF-8 text file; give one line of keywords per "
                               f"prompt.") from None


def read_inputs(args: GenerationArguments) -> list[tuple[int, str]]:
    """(line number, input) pairs: the file's non-empty lines in batch mode, else --prompt or standard input."""
    if args.input_file:
        lines = read_text(args.input_file, "--input_file").splitlines()
        where = f"--input_file {args.input_file} has no keywords"
    else:
        lines = [args.prompt] if args.prompt is not None else sys.stdin.read().splitlines()
        where = "empty prompt"
    # Cleaned and ending in a comma, as the training prompts are cut when the model is scored.
    inputs = [(n, utils.clean_prompt(text) + ",") for n, text in enumerate(lines, 1)]
    inputs = [(n, text) for n, text in inputs if text != ","] if args.input_file else inputs
    if not inputs or any(text == "," for _, text in inputs):
        raise utils.InputError(f"{where}. Give the first keyword(s), e.g. 'young, curly haired,'.")
    return inputs


def output_format(args: GenerationArguments) -> str:
    fmt = args.output_format or os.path.splitext(args.output_file)[1].lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise utils.InputError(f"cannot tell the format of --output_file {args.output_file}: name it .jsonl, .csv or "
                               f".txt, or pass --output_format.")
    return fmt


def written_so_far(path: str, fmt: str, inputs: list[tuple[int, str]], per_input: int) -> set[tuple[int, int]]:
    """(line, candidate) pairs the output file already holds. A last line cut short by a killed run is removed;
    a file written for other inputs is refused, so nothing in it is lost."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return set()
    text = read_text(path, "--output_file")
    if not text.endswith("\n"):  # the run before was killed while writing this line
        text = text[: text.rfind("\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(text.encode("utf-8")))
    lines = text.splitlines()
    if len(lines) - (fmt == "csv") > len(inputs) * per_input:
        raise utils.InputError(f"--output_file {path} holds more prompts than these inputs make; it was written for "
                               f"other inputs. Choose another --output_file.")
    if fmt == "txt":  # prompts in input order, per_input lines each
        return {(line, c) for line, _ in inputs[: len(lines) // per_input] for c in range(per_input)} | \
            {(inputs[len(lines) // per_input][0], c) for c in range(len(lines) % per_input)}
    try:
        records = [json.loads(line) for line in lines] if fmt == "jsonl" else list(csv.DictReader(io.StringIO(text)))
        done = {(int(r["line"]), int(r["candidate"])): r["input"] for r in records}
    except (ValueError, KeyError, TypeError) as e:
        raise utils.InputError(f"--output_file {path} exists but is not a {fmt} file this script wrote ({e}); "
                               f"choose another --output_file.") from None
    expected = {line: text.rstrip(",") for line, text in inputs}
    for (line, _), text in done.items():
        if expected.get(line) != text:
            raise utils.InputError(f"--output_file {path} holds prompts for other inputs (line {line}: {text!r}); "
                                   f"choose another --output_file or the input file it was written for.")
    return set(done)


def format_records(records: list[dict], fmt: str, header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "txt":
        return "".join(r["prompt"] + "\n" for r in records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def main() -> None:
    inference, args = utils.parse_arguments((decoding.InferenceArguments, GenerationArguments))
    if bool(args.input_file) != bool(args.output_file):
        raise utils.InputError("batch mode needs both --input_file and --output_file.")
    inputs = read_inputs(args)
    blocklist = args.blocklist.split(",") if args.blocklist else []
    if args.blocklist_file:
        blocklist += read_text(args.blocklist_file, "--blocklist_file").splitlines()
    # Bad controls fail here, before a model is loaded or a file touched.
    blocklist = decoding.check_blocklist(blocklist)
    if args.max_clip_tokens is not None:
        decoding.check_clip_budget([text for _, text in inputs], args.max_clip_tokens)
    fmt = output_format(args) if args.output_file else None
    if args.output_file:
        try:
            open(args.output_file, "a").close()
        except OSError as e:
            raise utils.InputError(f"cannot write --output_file {args.output_file}: {e.strerror}.") from None

    logging.set_verbosity_error()  # the prompts on standard output, nothing on standard error unless wrong
    logging.disable_progress_bar()
    model, tokenizer, memory = inference.load()
    context = decoding.model_context(model)
    if args.length >= context:
        print(f"note: --length {args.length} does not fit the model's {context}-token context with a prompt; "
              f"using {context // 2}.", file=sys.stderr)
        args.length = context // 2
    room = context - args.length
    for n, (line, text) in enumerate(inputs):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > room:
            inputs[n] = (line, tokenizer.decode(ids[-room:]))
            print(f"note: prompt {line} is {len(ids)} tokens; kept its last {room} so {args.length} new tokens "
                  f"fit the model's context.", file=sys.stderr)

    per_input = args.num_return_sequences
    settings = decoding_settings(args)
    controls = dict(blocklist=blocklist, no_repeat_keywords=not args.allow_repeated_keywords,
                    max_clip_tokens=args.max_clip_tokens, **inference.memory_controls(memory))

    def generate(batch: list[tuple[int, str]], seed: int) -> list[str]:
        set_seed(seed)
        num_keywords = [args.num_keywords] * len(batch) if args.num_keywords else None
        return decoding.generate_prompts(model, tokenizer, [text for _, text in batch], settings, args.length,
                                      num_keywords, per_input, **controls)

    if not args.output_file:
        for prompt in generate(inputs, args.seed):
            print(prompt)
        return

    done = written_so_far(args.output_file, fmt, inputs, per_input)
    todo = [(line, text) for line, text in inputs if any((line, c) not in done for c in range(per_input))]
    if len(todo) < len(inputs):
        print(f"Resuming: {len(inputs) - len(todo)} of {len(inputs)} inputs already in {args.output_file}.",
              file=sys.stderr)
    written = 0
    with open(args.output_file, "a", encoding="utf-8") as out, tqdm(total=len(todo), unit="input") as progress:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            seed = args.seed + batch[0][0]
            prompts = generate(batch, seed)
            counts = decoding.clip_token_counts(prompts)
            records = [dict(line=batch[i // per_input][0], input=batch[i // per_input][1].rstrip(","),
                            candidate=i % per_input, prompt=prompt, strategy=args.strategy, seed=seed,
                            clip_tokens=count) for i, (prompt, count) in enumerate(zip(prompts, counts))]
            records = [r for r in records if (r["line"], r["candidate"]) not in done]
            out.write(format_records(records, fmt, header=fmt == "csv" and out.tell() == 0))
            out.flush()  # one write per batch: a kill loses at most the batch being generated
            written += len(records)
            progress.update(len(batch))
    print(f"Wrote {written} prompts to {args.output_file}.", file=sys.stderr)


if __name__ == "__main__":
    utils.run_main(main)
