#!/usr/bin/env bash
# scripts/gpu_check.sh — the GPU check of gradnormlorp's CUDA backend, in one
# call, on a machine with an NVIDIA GPU, the CUDA toolkit (nvcc) and PyTorch,
# but no Go toolchain and no network.
#
# Usage:  scripts/gpu_check.sh            (from any directory)
#
# Needs, prepared on a development machine and carried along:
#   build/libgradnormlorp.so   the Go library (make lib)
#   build/wheels/*.whl         galore-torch 1.0 and pytest with its
#                              dependencies, pure-Python wheels:
#     pip download galore-torch==1.0 pytest iniconfig pluggy packaging \
#         --no-deps -d build/wheels
#
# Steps: builds build/libgnlp_cuda.so with the machine's nvcc (cuda/build.sh),
# runs tests/gpu with pytest (CUDA vs the CPU backend vs a float64 oracle,
# streams, non-finite gradients, memory accounting), then bench/gpu_step.py
# (ours vs galore-torch vs torch AdamW(fused) on LLaMA-1B shapes, bf16, rank
# 1024; refresh vs torch.linalg.svd), float32 projections then TF32.
# Everything it prints also goes to bench/results/gpu-<date>-<gpu>.txt.
# Budget: under 8 minutes (each stage has a timeout).
#
# Environment: PYTHON (interpreter with torch; default python3), NVCC /
# CUDA_HOME (see cuda/build.sh), GPU_CHECK_LAYERS (benchmark layers,
# default 24).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
py="${PYTHON:-python3}"
layers="${GPU_CHECK_LAYERS:-24}"

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '_' | sed 's/_*$//')"
mkdir -p bench/results
out="bench/results/gpu-$(date +%Y%m%d-%H%M%S)-${gpu:-unknown}.txt"
exec > >(tee "$out") 2>&1
echo "== gradnormlorp GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), output in $out"

fail=0
stage() { echo; echo "== $*"; }
check() { # check NAME STATUS
    if [[ "$2" -ne 0 ]]; then
        echo "!! $1 FAILED (exit $2)"
        fail=1
    else
        echo "-- $1 ok"
    fi
}

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "(nvidia-smi unavailable)"
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2
"$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
    || { echo "!! $py cannot import torch (set PYTHON)"; exit 1; }

[[ -f build/libgradnormlorp.so ]] || { echo "!! build/libgradnormlorp.so missing: build it with 'make lib' where Go is installed and carry it along"; exit 1; }

stage "build libgnlp_cuda.so"
timeout 240 bash cuda/build.sh build
check "cuda/build.sh" $?
[[ -f build/libgnlp_cuda.so ]] || { echo "!! no build/libgnlp_cuda.so: cannot go on"; exit 1; }

stage "python dependencies (from build/wheels, no network)"
site="$root/build/gpu-site"
need=()
"$py" -c 'import pytest' 2>/dev/null || need+=(pytest iniconfig pluggy packaging)
"$py" -c 'import galore_torch' 2>/dev/null || need+=(galore-torch)
if ((${#need[@]})); then
    "$py" -m pip install --quiet --no-index --no-deps --find-links build/wheels --target "$site" "${need[@]}"
    check "pip install ${need[*]}" $?
fi
export PYTHONPATH="$root/python:$site${PYTHONPATH:+:$PYTHONPATH}"
export GNLP_LIBRARY="$root/build/libgradnormlorp.so"
export GNLP_CUDA_LIBRARY="$root/build/libgnlp_cuda.so"

stage "tests/gpu (pytest)"
timeout 200 "$py" -m pytest tests/gpu -q -rs -p no:cacheprovider
check "pytest tests/gpu" $?

stage "bench/gpu_step.py (float32 projections)"
timeout 150 "$py" bench/gpu_step.py --layers "$layers"
check "benchmark (float32)" $?

stage "bench/gpu_step.py (TF32 projections: GNLP_CUDA_TF32=1)"
GNLP_CUDA_TF32=1 timeout 60 "$py" bench/gpu_step.py --layers "$layers" --skip galore,adamw,refresh
check "benchmark (TF32)" $?

stage "summary"
if ((fail)); then
    echo "GPU check: FAILED (see above); full output in $out"
    exit 1
fi
echo "GPU check: all stages passed; full output in $out"
