#!/usr/bin/env bash
# The GPU checks, in one command of a few minutes on a machine with a CUDA GPU (run from the repo root):
#   bash bench/gpu_check.sh [OUT_DIR]
# 1. the CUDA-path tests (tests/test_cuda.py: placement, auto dtype, GPU == CPU logits, extraction,
#    token-budgeted evaluation batches);
# 2. the scale table with --device cuda for the default model and the 1B and 7B shapes (built here
#    with random weights: peak host memory and wall time of every command, as on the CPU);
# 3. ARC-Easy validation on the default model in float32 and bfloat16 on the GPU (accuracy parity);
# 4. compress on the GPU (demo budget).
# 5. (optional, about an hour on one GPU: RUN_INSTATUNE=1) the InstaTune yardstick at the scale of the
#    sandwich recipe (140 steps, all 570 ARC-Easy validation questions) with the routed-adapter variants:
#    one shared LoRA, few-shot split, mixture of super-networks, per-precision adapters, and tickets;
#    docs/benchmarks.md has the CPU run at 20 steps.
# Results land in OUT_DIR (default runs/gpu): pytest.log, scale.json, scale.log, eval_*.json.
set -uo pipefail
out=${1:-runs/gpu}
mkdir -p "$out"
py=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -m pytest tests/test_cuda.py tests/test_device.py tests/test_extract.py -q -p no:cacheprovider 2>&1 | tee "$out/pytest.log"
for shape in 1b 7b; do
  dir=runs/scale/$shape-shape
  [ -d "$dir" ] || $py bench/make_scale_model.py --shape "$shape" --out "$dir"
done
$py bench/bench_scale.py --device cuda --models default,runs/scale/1b-shape,runs/scale/7b-shape \
  --out "$out/scale.json" 2>&1 | tee "$out/scale.log"
for dtype in float32 bfloat16; do
  $py -m llamanas.cli eval --model default --tasks arc_easy --split validation --device cuda \
    --dtype "$dtype" --json "$out/eval_$dtype.json" 2>&1 | tail -5
done
# 4. `llamanas compress` end to end with the search and evaluation on the GPU (demo budget; llama.cpp timing
#    stays on the CPU): the model card lands in OUT_DIR/compress/README.md.
$py -m llamanas.cli compress --model default --tasks arc_easy --target 0.8 --evaluations 12 --population 6 \
  --select-limit 50 --confirm 2 --confirm-limit 100 --report-limit 200 --warm-start-windows 4 \
  --device cuda --out "$out/compress" 2>&1 | tail -30
if [ "${RUN_INSTATUNE:-0}" = 1 ]; then
  $py bench/bench_instatune.py --steps 140 --batch-size 8 --max-length 256 --limit 570 --lr 3e-4 \
    --strategy sandwich --variants lora,split,mixture,tickets,precision --experts 4 --lora-r 16 --skip-full-ft \
    --out "$out/instatune_routing" 2>&1 | tail -30
fi
