#!/usr/bin/env bash
# One prepared device check: the memory plan for this machine, then the image tasks and the
# video tasks with and without offload, each row in its own process under `timeout` (so a
# row that hangs or runs out of memory costs only its own slot and frees everything), each
# row's table printed as soon as it is done. Budget on one H200: under 8 minutes in all
# (per-row limits below sum to 480 s). Without CUDA it runs the same rows with the tiny
# models on the CPU, single-threaded.
#
# Usage: bash benchmarks/gpu_check.sh        (from the repository root; PYTHON overrides
#                                             the interpreter, default `python`)
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    mode=gpu
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
else
    mode=cpu
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    echo "No CUDA device: tiny models on the CPU, 1 thread (not a GPU measurement)."
fi
free -g | sed -n 2p

row() {  # row SECONDS LABEL COMMAND...
    local limit=$1 label=$2 start=$SECONDS
    shift 2
    echo "== $label (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -e "should be kept in float32" -e "^USDT"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo "   $label: timed out after ${limit}s"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 137 ] && echo "   $label: exit status $status"
    echo "   ($((SECONDS - start)) s wall, process start and model build included)"
}

tiny=(); [ "$mode" = cpu ] && tiny=(--tiny)
row 60 "memory plan for this machine" "$PYTHON" -c '
import torch
from poe_backend.experts import memory_plan as mp
budget = mp.Budget.detect("cuda" if torch.cuda.is_available() else "cpu")
if budget.vram_free_bytes == 0:
    budget = mp.Budget.nominal(141, 128)
    print("no CUDA: planning for a nominal 141 GiB card with 128 GiB RAM")
for name, job in (("insertion 1024² P=2", mp.insertion_job()), ("sim2video 832x480x81 P=2", mp.sim2video_job())):
    models, activation, decode, tiled = job
    print(name, "->", mp.plan(models, activation, decode, budget, alternating=len(models) > 1, tiled_decode_bytes=tiled).describe())
'
row 75 "insertion, resident" "$PYTHON" benchmarks/gpu_tasks.py "${tiny[@]}" --task insertion --offload none --particles 2
row 90 "insertion, group offload" "$PYTHON" benchmarks/gpu_tasks.py "${tiny[@]}" --task insertion --offload group --particles 2
row 75 "regional_t2i, resident" "$PYTHON" benchmarks/gpu_tasks.py "${tiny[@]}" --task regional_t2i --offload none --particles 2
row 90 "sim2video, resident" "$PYTHON" -m benchmarks.gpu_video --task sim2video --offload none --particles 2
row 90 "sim2video, group offload" "$PYTHON" -m benchmarks.gpu_video --task sim2video --offload group --particles 2
echo "== done in ${SECONDS}s"
