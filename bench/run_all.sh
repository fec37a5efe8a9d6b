#!/usr/bin/env bash
# Every speed benchmark, on a fresh clone, in about 15 minutes on 2 CPU cores. Trains the default model first
# (`python run_clm.py`: one epoch of the demo prompts, with its memory), since the evaluation and latency benchmarks
# need a checkpoint that writes real keywords. Prompt quality is bench/quality.py: hours, not part of this; the
# memory at 10^8 tokens is `python bench/memory_index.py` (minutes; here a 10^7-token corpus stands in).
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint=bench/runs/default
python bench/train_throughput.py --num_prompts 32
python bench/profile_train.py --num_batches 6
[ -f "$checkpoint/model.safetensors" ] || python run_clm.py --output_dir "$checkpoint" --disable_tqdm true
python bench/eval_speed.py --model_name_or_path "$checkpoint" --num_prompts 32 --context 1024
python bench/eval_speed.py --model_name_or_path "$checkpoint" --num_prompts 64 --strategy beam --no_full_length \
  --rounds 2 --output bench/results/eval_speed_memory_default.json
python bench/latency.py --model_name_or_path "$checkpoint"
python bench/batch_generation.py --model_name_or_path "$checkpoint" --num_inputs 64
python bench/eos_stop.py --model_name_or_path "$checkpoint" --output bench/results/eos_stop_default.json
python bench/memory_index.py --synthetic_tokens 10000000 --output bench/results/memory_index_1e7.json
