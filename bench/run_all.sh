#!/usr/bin/env bash
# Every speed benchmark, on a fresh clone, in under 10 minutes on 2 CPU cores. Trains the default model first
# (`python run_clm.py`: one epoch of the demo prompts), since the evaluation and latency benchmarks need a
# checkpoint that writes real keywords. Prompt quality is bench/quality.py: hours, not part of this.
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint=bench/runs/default
python bench/train_throughput.py --num_prompts 32
python bench/profile_train.py --num_batches 6
[ -f "$checkpoint/model.safetensors" ] || python run_clm.py --output_dir "$checkpoint" --disable_tqdm true
python bench/eval_speed.py --model_name_or_path "$checkpoint" --num_prompts 32 --context 1024
python bench/latency.py --model_name_or_path "$checkpoint"
python bench/eos_stop.py --model_name_or_path "$checkpoint" --output bench/results/eos_stop_default.json
