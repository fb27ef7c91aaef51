#!/usr/bin/env bash
# One prepared device check, each row in its own process under `timeout` (so a row that hangs
# or runs out of memory costs only its own slot and frees everything), each row's lines
# printed as soon as they are done. First what only a card can answer about memory: two
# consecutive jobs of each task through the real task code (model cache, planner, placement,
# encoders, decode) with full-size random weights, on a 24 GiB and a 48 GiB card emulated
# with torch.cuda.set_per_process_memory_fraction (benchmarks/gpu_memory.py: one row per job
# with the plan, measured peak VRAM, pinned host bytes, RSS, seconds per forward); then two
# planned evaluations of many particles on a 48 GiB card (gpu_memory.py --check, issue 21:
# regional FLUX at 1024² with P = 32 in the planner's micro-batches, beside VQAScore; one
# evaluation of Depth × Fill with Fill conditioned on Depth, its aligned pass's backward
# peak against planner.flux_conditioned_bytes); then the memory plan for this machine.
# Budget on one H100 or H200: under 8 minutes in all (per-row limits below sum to 477 s).
# Without CUDA it runs the same rows with the tiny models on the CPU, single-threaded (not a
# measurement: it shows that every row works).
#
# Dropped for the memory rows' time (run them alone with `python benchmarks/gpu_tasks.py`):
# the per-offload speed rows of the earlier check -- insertion resident (75 s) and group
# offload (90 s), regional_t2i resident (75 s), sim2video resident (90 s) and group offload
# (90 s); the memory rows time resident and streamed forwards of the same models. The plan
# row went from 60 s to 12 s (it takes ~5 s on a GPU machine, ~9 s on a 2-core CPU). For the
# two checks (issue 21), the 48 GiB task rows of insertion (45 s), regional_t2i (40 s) and
# sim2video_ar (50 s) were dropped: the checks run the same FLUX models on a 48 GiB card.
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
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -e "should be kept in float32" -e "^USDT" -e "requires torchvision (not installed)" -e "was truncated because"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo "   $label: timed out after ${limit}s"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 137 ] && echo "   $label: exit status $status"
    echo "   ($((SECONDS - start)) s wall, process start and model build included)"
}

tiny=(); [ "$mode" = cpu ] && tiny=(--tiny)
# The tiny preset's tokenizers and files (the memory rows resolve them) are built once, here.
POE_DATA_DIR=$(mktemp -d) && export POE_DATA_DIR HF_HUB_OFFLINE=1
trap 'rm -rf "$POE_DATA_DIR"' EXIT

# Memory: task x card (GiB), two jobs each (the second with a new prompt); limits from
# estimates (no GPU run yet): process start ~10 s, random weights of streamed models built in
# host RAM (~22-63 GB, then packed and page-locked), a few forwards of 2 particles.
row 65 "memory: insertion, 24 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --task insertion --card-gb 24
row 55 "memory: regional_t2i, 24 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --task regional_t2i --card-gb 24
row 85 "memory: sim2video, 24 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --task sim2video --card-gb 24
row 60 "memory: sim2video, 48 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --task sim2video --card-gb 48
row 65 "memory: sim2video_ar, 24 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --task sim2video_ar --card-gb 24
# Checks (estimates, no GPU run yet): FLUX.1 [dev] (24 GB) and Qwen2.5-VL-7B built on the
# device, 2 experts x 32 particles at ~0.25 s per 1024² particle forward; Depth and Fill
# resident in fp8 (each built in host RAM, cast, moved: ~10-15 s), one micro-batch (7 on
# 48 GiB) through Depth and through Fill's forward and backward.
row 70 "micro-batches: regional_t2i P=32 1024², 48 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --check regional-p32 --card-gb 48
row 65 "conditioned: insertion, Fill on Depth, 48 GiB card" "$PYTHON" benchmarks/gpu_memory.py "${tiny[@]}" --check conditioned-insertion --card-gb 48
row 12 "memory plan for this machine" "$PYTHON" -c '
import torch
from poe_backend.runtime import planner as mp
budget = mp.Budget.detect("cuda" if torch.cuda.is_available() else "cpu")
if budget.vram_free_bytes == 0:
    budget = mp.Budget.nominal(141, 128)
    print("no CUDA: planning for a nominal 141 GiB card with 128 GiB RAM")
jobs = (("insertion 1024² P=2", mp.insertion_job()), ("sim2video 832x480x81 P=2", mp.sim2video_job()),
        ("regional_t2i 1024² P=32", mp.regional_t2i_job(particles=32)),
        ("insertion 1024² P=32, Fill conditioned", mp.insertion_job(particles=32, conditioned=("flux.transformer.fill",))))
for name, job in jobs:
    try:
        print(name, "->", job.plan(budget).describe())
    except mp.PlanError as error:
        print(name, "-> refused:", error)
'
echo "== done in ${SECONDS}s"
