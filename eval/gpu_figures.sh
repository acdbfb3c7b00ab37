#!/usr/bin/env bash
# Every GPU figure of the README's Benchmarks section in one run, on random weights of the published sizes:
#   bash eval/gpu_figures.sh            # SD1.5-sized weights, bf16 (a GPU with >= 16 GB)
#   SIZE=tiny DTYPE=fp32 bash eval/gpu_figures.sh   # the same steps at tiny size (a check of the script, any machine)
# 1. the pipeline paths at batch 16 (official recipe, unoptimised, batched, compiled, LCM 6 steps), with FLOPs and
#    the share of the measured matmul peak; 2. the same compiled path again in a new process (the persistent compile
#    cache: the second run's first batch shows the compile cost left); 3. `retarget run` end to end on a synthetic
#    clip (FRAMES frames at 30 fps, default 300 = 10 s), overlapped stages against --no-overlap.
# Each step prints its own table; the JSON lines can be collected with `grep '^{'`.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${SIZE:-full}
dtype=${DTYPE:-bf16}
frames=${FRAMES:-300}
batch=${BATCH:-16}
python=${PYTHON:-python}
echo "== 1. pipeline paths, batch $batch, $size, $dtype"
"$python" -m eval.bench_throughput --size "$size" --dtype "$dtype" --batch-size "$batch" --frames "$batch" \
    --repeats 1 --warmup "$batch" --compile --lcm-steps 6
echo "== 2. compiled path again (persistent compile cache)"
"$python" -m eval.bench_throughput --size "$size" --dtype "$dtype" --batch-size "$batch" --frames "$batch" \
    --repeats 1 --warmup "$batch" --paths compiled
echo "== 3. retarget run end to end, $frames frames at 30 fps"
"$python" -m eval.bench_throughput --e2e --size "$size" --dtype "$dtype" --batch-size "$batch" --chunk-size 64 \
    --synthetic-frames "$frames" --synthetic-fps 30 --commands run --order both
