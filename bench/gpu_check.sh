#!/usr/bin/env bash
# The GPU path, measured in one command: GPT-2-small (12x768, random weights) on the prompt corpus.
#   1. training: real tokens/s, peak GPU memory and model FLOPs utilisation, the original recipe (batch 16 padded
#      to 1,024, weights in bf16) against run_clm.py's defaults and its best GPU settings (bench/train_throughput.py);
#   2. evaluation: eval.py's early stop against generating to 1,024 tokens, same ROUGE, and eval.py with the memory
#      against the model alone (bench/eval_speed.py);
#   3. the demo's latency for one prompt, beam, 12 keywords, without and with the memory (bench/latency.py);
#   4. real CUDA runs of the scripts: run_clm.py --bf16 (300 steps and its memory; the checkpoint feeds 2 and 3),
#      eval.py --fp16 --device cuda, run_generation.py --fp16.
# Writes report.md (every table) and the JSON of each step into OUTPUT_FOLDER. Under 8 minutes on one H100.
#
#   bash bench/gpu_check.sh OUTPUT_FOLDER [DATA]          # DATA: prompts folder (default ../shared/data/sd-discord-prompts)
#   bash bench/gpu_check.sh OUTPUT_FOLDER [DATA] --dry    # any machine, tiny sizes, CPU, seconds: checks the script
set -euo pipefail
out=$(mkdir -p "${1:?usage: bash bench/gpu_check.sh OUTPUT_FOLDER [DATA] [--dry]}" && cd "$1" && pwd)
data=$(realpath -m "${2:-$(dirname "$0")/../../shared/data/sd-discord-prompts}")
cd "$(dirname "$0")/.."
if [ ! -e "$data" ]; then echo "error: prompt data $data not found; pass a dataset folder or file as the second argument" >&2; exit 2; fi
if [ "${3:-}" = --dry ]; then
  shape=n_layer=1,n_embd=64,n_head=2,n_positions=1024 steps=4 log=2 train_steps=10 samples=256 prompts=4 repeats=2 device=cpu eval_samples=32
  tuning=0
else
  shape=n_layer=12,n_embd=768,n_head=12,n_positions=1024 steps=40 log=10 train_steps=300 samples=8192 prompts=64 repeats=10 device=cuda eval_samples=500
  tuning=300
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU here; use --dry to check the script on a CPU')"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
report="$out/report.md"
started=$SECONDS
section() { printf '\n## %s\n\n' "$1" | tee -a "$report"; echo "[gpu_check] $((SECONDS - started)) s: $1" >&2; }

{ echo "# GPU check, $(date -u +%F)"; echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (dry run)"
  lscpu 2>/dev/null | grep -m1 "Model name" || true
  python -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
} | tee "$report"

section "1. Training throughput: python bench/train_throughput.py --suite gpu"
python bench/train_throughput.py --suite gpu --data "$data" --shapes "$shape" --steps $steps --log_every $log \
  --max_train_samples $samples --num_prompts $prompts --output "$out/train_throughput.json" | tee -a "$report"

section "4a. python run_clm.py --bf16 true --max_steps $train_steps (checkpoint for 2 and 3)"
python run_clm.py --dataset_name "$data" --scratch_config "$shape" --bf16 true --max_steps $train_steps \
  --max_train_samples $samples --max_eval_samples $eval_samples --memory_tuning_samples $tuning --output_dir "$work/model" \
  --save_strategy no \
  --report_to none --disable_tqdm true > "$work/run_clm.log" 2>&1 || { tail -30 "$work/run_clm.log" >&2; exit 1; }
python -c "import json, sys; t = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))
print(f\"train_runtime {t['train_runtime']:.1f} s, {t['num_input_tokens_seen'] / t['train_runtime']:.0f} real tokens/s (start-up included), \"
      f\"peak {t['train_peak_memory_gib']} GiB; eval loss {e['eval_loss']:.3f}, accuracy {e['eval_accuracy']:.3f}\")" \
  "$work/model/train_results.json" "$work/model/eval_results.json" | tee -a "$report"
cp "$work/model/train_results.json" "$out/run_clm_train_results.json"

section "2. Evaluation speed: python bench/eval_speed.py --device $device --fp16 --context 1024"
python bench/eval_speed.py --model_name_or_path "$work/model" --device $device --fp16 --num_prompts $prompts \
  --batch_size 64 --context 1024 --output "$out/eval_speed.json" | tee -a "$report"

section "3. Demo latency: python bench/latency.py --device $device --fp16 (beam, 12 keywords)"
python bench/latency.py --model_name_or_path "$work/model" --device $device --fp16 --repeats $repeats \
  --output "$out/latency.json" | tee -a "$report"

section "4b. python eval.py --fp16 --device $device --strategy greedy,beam --max_samples $prompts"
python eval.py --model_name_or_path "$work/model" --fp16 --device $device --strategy greedy,beam \
  --max_samples $prompts --batch_size 128 --output_dir "$work/eval" | tee -a "$report"
cp "$work/eval/rouge.json" "$out/rouge.json"

section "4c. python run_generation.py --fp16 --device $device --prompt 'young, curly haired,' --num_keywords 12"
python run_generation.py --model_name_or_path "$work/model" --fp16 --device $device --prompt "young, curly haired," \
  --num_keywords 12 --num_return_sequences 2 | tee -a "$report"

echo -e "\nDone in $((SECONDS - started)) s: $report" >&2
