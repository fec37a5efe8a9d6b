"""run_generation.py's batch mode against one command per input: prompts per second for the same inputs, as a
user runs them (each row is a real run of the script; one command per input also pays the start-up each time).

    python bench/batch_generation.py --model_name_or_path bench/runs/default --num_inputs 256
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import decoding  # noqa: E402
import utils  # noqa: E402


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "run_generation.py"), *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"run_generation.py failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=utils.DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--num_inputs", type=int, default=256, help="inputs of each batch-mode row")
    parser.add_argument("--single_calls", type=int, default=8, help="commands timed for the one-per-input row")
    parser.add_argument("--strategy", default="beam", choices=list(decoding.PRESETS))
    parser.add_argument("--num_keywords", type=int, default=12, help="keywords per prompt (the demo's default)")
    parser.add_argument("--output", default="bench/results/batch_generation.json", help="JSON to write")
    args = parser.parse_args()
    prompts = utils.DEMO_DATA.read_text().splitlines()
    inputs = [utils.first_keywords(p, 1 + i % 2) for i, p in enumerate(prompts[: args.num_inputs])]
    common = ["--model_name_or_path", args.model_name_or_path, "--strategy", args.strategy,
              "--num_keywords", str(args.num_keywords)]
    rows = {}
    seconds = sum(timed([*common, "--prompt", text]) for text in inputs[: args.single_calls])
    rows["one command per input"] = {"inputs": args.single_calls, "seconds": round(seconds, 2)}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "inputs.txt").write_text("\n".join(inputs) + "\n")
        for batch_size in (1, 32):
            output = Path(folder) / f"prompts-{batch_size}.jsonl"
            seconds = timed([*common, "--input_file", f"{folder}/inputs.txt", "--output_file", str(output),
                             "--batch_size", str(batch_size)])
            assert output.read_text().count("\n") == len(inputs)
            rows[f"batch mode, --batch_size {batch_size}"] = {"inputs": len(inputs), "seconds": round(seconds, 2)}
    base = rows["one command per input"]["inputs"] / rows["one command per input"]["seconds"]
    for row in rows.values():
        row["prompts_per_s"] = round(row["inputs"] / row["seconds"], 2)
        row["vs_one_command"] = f"{row['prompts_per_s'] / base:.1f}x"
    print(f"| row ({args.strategy}, {args.num_keywords} keywords) | inputs | seconds | prompts/s | vs one command |\n"
          f"|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['inputs']} | {row['seconds']} | {row['prompts_per_s']} | {row['vs_one_command']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"model": args.model_name_or_path, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
