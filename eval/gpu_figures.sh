#!/usr/bin/env bash
# Every GPU figure of the README's Benchmarks section in one run, on random weights of the published sizes:
#   bash eval/gpu_figures.sh            # SD1.5-sized weights, bf16 (a GPU with >= 16 GB)
#   SIZE=tiny DTYPE=fp32 bash eval/gpu_figures.sh   # the same steps at tiny size (a check of the script, any machine)
# 0. the weights, written once (random, published sizes, with the face models) into WORK, then the environment
#    lines of `retarget doctor` (the GPU, onnxruntime's providers, whether --compile can build its kernels);
# 1. the pipeline paths at batch BATCH (PATHS; default batched, channels-last, cudnn-benchmark, unoptimised,
#    compiled, LCM at 6 steps; compiled:MODE adds a torch.compile mode, e.g. compiled:reduce-overhead for CUDA graphs,
#    compiled-vae the VAE decode compiled too, and compiled-tuned the inductor options of fast-diffusion guides, see
#    eval/bench_throughput.py), with FLOPs, the share of the measured matmul peak, how far each path's first batch
#    is from the batched path's and from an fp32 render, and torch.profiler tables of one batch of the batched and
#    each compiled path (PROFILE_DIR), headed by the device's busy share and its time by operator;
# 2. the same compiled path again in a new process (the persistent compile cache: the second run's first batch
#    shows the compile cost left);
# 3. `retarget run` end to end on a synthetic clip (FRAMES frames at 30 fps, default 300 = 10 s): overlapped stages,
#    --no-overlap, and overlapped with --compile (ORDERS; compiled-sequential adds --compile --no-overlap, where the
#    compile is not warmed up during the scan; auto runs with neither --compile nor --no-compile: the default's
#    choice, e.g. ORDERS=compiled,auto to see a later job compile from the cache the first one filled).
# 4. `retarget batch` of run end to end on a folder of BATCH_CLIPS copies of a synthetic clip (BATCH_FRAMES frames
#    each, default 4 x 96): overlapped stages (on CUDA each clip is scanned while the previous one renders) and
#    --no-overlap (BATCH_ORDERS).
# 5. face detection on the machine's CPU cores: one frame at a time against several at once (DETECT_THREADS,
#    default 1,4,8), on a synthetic 512x512 clip with the bundled MTCNN, with its onnxruntime sessions as the jobs
#    open them and with onnxruntime's default threads.
# 6. the UNet's attention calls under each SDPA kernel (flash, memory-efficient, cuDNN) at the shapes of one
#    denoising step at batch BATCH (eval.bench_attention; no weights needed).
# Each step prints its own table; the JSON lines can be collected with `grep '^{'`. TIMEOUT1..6 (seconds) bound
# steps 1-6, so one slow step still leaves the others' figures; STEPS picks steps (default "1 2 3 4 5 6"). A run
# with the same WORK reuses the weights (and the compile cache stays on the machine), so the steps can be split over
# two runs on one machine, e.g. STEPS="1 2" then STEPS=3; the environment lines are printed by the run that writes
# the weights.
# FP32_REFERENCE=0 leaves out step 1's fp32 render (the --compare figures between the paths remain).
set -uo pipefail
cd "$(dirname "$0")/.."
size=${SIZE:-full}
dtype=${DTYPE:-bf16}
frames=${FRAMES:-300}
batch=${BATCH:-16}
paths=${PATHS:-batched,channels-last,cudnn-benchmark,unoptimised,compiled,lcm}
orders=${ORDERS:-staged,sequential,compiled}
work=${WORK:-$(mktemp -d)}
profile_dir=${PROFILE_DIR:-$work}
steps=${STEPS:-1 2 3 4 5 6}
python=${PYTHON:-$(command -v python || command -v python3)}  # images with only python3 have no `python`
step() {  # step SECONDS COMMAND...
    local seconds=$1; shift
    timeout --signal=INT --kill-after=20 "$seconds" "$@" || echo "== step failed or timed out (exit $?)"
}

if [ -f "$work/weights.json" ]; then  # written by an earlier run with the same WORK
    echo "== 0. weights: reusing $work/weights"
    reused=1
else
    echo "== 0. weights ($size) in $work"
    mkdir -p "$work"
    rm -rf "$work/weights"  # a run stopped before weights.json was written; the writer wants a new folder
    start=$(date +%s)
    "$python" -m eval.bench_throughput --write-models "$work/weights" --size "$size" > "$work/weights.json.tmp" \
        && mv "$work/weights.json.tmp" "$work/weights.json" || exit 1
    echo "weights written in $(( $(date +%s) - start )) s"
fi
folders=$(cat "$work/weights.json")
models=$("$python" -c 'import json, sys; print(json.loads(sys.argv[1])["models"])' "$folders")
base=$("$python" -c 'import json, sys; print(json.loads(sys.argv[1])["base_model"])' "$folders")
common=(--size "$size" --dtype "$dtype" --batch-size "$batch" --models "$models" --base-model "$base")
if [ -z "${reused:-}" ]; then
    echo "== environment (retarget doctor)"  # the GPU, onnxruntime's providers, whether --compile can build kernels
    "$python" -m retarget doctor --models "$models" --base-model "$base" \
        | grep -E "^\[.*\] (python|torch|diffusers|onnxruntime|cuda|face models on the GPU|--compile):"
fi

if [[ " $steps " == *" 1 "* ]]; then
    echo "== 1. pipeline paths, batch $batch, $size, $dtype: $paths"
    step "${TIMEOUT1:-1800}" "$python" -m eval.bench_throughput "${common[@]}" --frames "$batch" --repeats 1 \
        --warmup "$batch" --paths "$paths" --compare $([ "${FP32_REFERENCE:-1}" = 0 ] || echo --fp32-reference) \
        --profile-dir "$profile_dir"
fi
if [[ " $steps " == *" 2 "* && ",$paths," == *",compiled,"* ]]; then
    echo "== 2. compiled path again (persistent compile cache)"
    step "${TIMEOUT2:-900}" "$python" -m eval.bench_throughput "${common[@]}" --frames "$batch" --repeats 1 \
        --warmup "$batch" --paths compiled
fi
if [[ " $steps " == *" 3 "* ]]; then
    echo "== 3. retarget run end to end, $frames frames at 30 fps: $orders"
    step "${TIMEOUT3:-1800}" "$python" -m eval.bench_throughput --e2e "${common[@]}" --chunk-size 64 \
        --synthetic-frames "$frames" --synthetic-fps 30 --commands run --order "$orders"
fi
if [[ " $steps " == *" 4 "* ]]; then
    echo "== 4. retarget batch (run) end to end, ${BATCH_CLIPS:-4} clips of ${BATCH_FRAMES:-96} frames at 30 fps"
    step "${TIMEOUT4:-1800}" "$python" -m eval.bench_throughput --e2e "${common[@]}" --chunk-size 64 \
        --synthetic-frames "${BATCH_FRAMES:-96}" --synthetic-fps 30 --commands batch \
        --batch-clips "${BATCH_CLIPS:-4}" --order "${BATCH_ORDERS:-staged,sequential}"
fi
if [[ " $steps " == *" 5 "* ]]; then
    echo "== 5. face detection, threads ${DETECT_THREADS:-1,4,8}"
    step "${TIMEOUT5:-300}" "$python" -m eval.bench_detection --frames 96 --threads "${DETECT_THREADS:-1,4,8}" \
        --sessions ours,onnxruntime
fi
if [[ " $steps " == *" 6 "* ]]; then
    echo "== 6. attention kernels at the UNet's shapes, batch $batch, $size, $dtype"
    step "${TIMEOUT6:-300}" "$python" -m eval.bench_attention --batch "$batch" --dtype "$dtype" --size "$size"
fi
