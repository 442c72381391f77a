#!/usr/bin/env bash
# Prepares a CPU libtorch 2.1.2 from PyPI wheels (libtorch's own download
# site is not reachable everywhere; the torch wheel holds the same lib/ and
# include/). usage: libtorch.sh CACHE_DIR
#   CACHE_DIR/wheels/          the downloaded wheels (~685 MB, kept)
#   CACHE_DIR/libtorch-2.1.2/  lib/ and include/ (~500 MB)
# Only the CPU libraries are unpacked (not libtorch_cuda.so, 740 MB); but
# libtorch_cpu.so needs libcudart.so.12 and libcupti.so.12 even on the CPU:
# they come from two small NVIDIA wheels of torch 2.1.2's CUDA 12.1.
# The libtorch folder is versioned: gotch's compiled wrapper sits in Go's
# build cache keyed by this path, so another version must get another path.
set -euo pipefail

cache=${1:?usage: libtorch.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
python=${PYTHON:-python3}
torch_version=2.1.2
cuda_libs_version=12.1.105
dest=$cache/libtorch-$torch_version
wheels=$cache/wheels

if [ -f "$dest/.complete" ]; then
    echo ">> libtorch $torch_version ready in $dest"
    exit 0
fi

mkdir -p "$wheels"
echo ">> pip download torch==$torch_version (cp311 manylinux, ~670 MB once) into $wheels"
"$python" -m pip download -q --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.11 --platform manylinux1_x86_64 \
    -d "$wheels" "torch==$torch_version" \
    "nvidia-cuda-runtime-cu12==$cuda_libs_version" "nvidia-cuda-cupti-cu12==$cuda_libs_version"

tmp=$dest.tmp
rm -rf "$tmp"
mkdir -p "$tmp/lib"
echo ">> unpacking lib/ and include/ into $dest"
unzip_members() { # wheel, member patterns...: extract into $tmp/unzipped
    "$python" - "$@" <<'PY'
import fnmatch, sys, zipfile
wheel, patterns = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        sys.exit(f"error: {wheel} holds nothing matching {patterns}")
    z.extractall("unzipped", names)
PY
}
(
    cd "$tmp"
    unzip_members "$wheels/torch-$torch_version-cp311-cp311-manylinux1_x86_64.whl" \
        'torch/lib/libtorch_cpu.so' 'torch/lib/libc10.so' 'torch/lib/libgomp-*.so.1' 'torch/include/*'
    unzip_members "$wheels/nvidia_cuda_runtime_cu12-$cuda_libs_version-py3-none-manylinux1_x86_64.whl" 'nvidia/cuda_runtime/lib/libcudart.so.12'
    unzip_members "$wheels/nvidia_cuda_cupti_cu12-$cuda_libs_version-py3-none-manylinux1_x86_64.whl" 'nvidia/cuda_cupti/lib/libcupti.so.12'
    mv unzipped/torch/include include
    mv unzipped/torch/lib/* unzipped/nvidia/cuda_runtime/lib/* unzipped/nvidia/cuda_cupti/lib/* lib/
    rm -rf unzipped
)
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
echo ">> libtorch $torch_version ready in $dest ($(du -sh "$dest" | cut -f1))"
