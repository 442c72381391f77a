#!/usr/bin/env bash
# cuda/build.sh — build libgnlp_cuda.so, the CUDA backend of gradnormlorp.
#
# Usage:  cuda/build.sh [OUT_DIR]        (default OUT_DIR: build/ in the repo)
#
#   Writes OUT_DIR/libgnlp_cuda.so. libgradnormlorp.so finds it next to
#   itself, or through $GNLP_CUDA_LIBRARY, or on the loader path.
#
# Finds nvcc in this order: $NVCC; $CUDA_HOME/bin/nvcc; /usr/local/cuda/bin/nvcc;
# nvcc on PATH; then the PyPI wheels (nvidia-cuda-nvcc, nvidia-cuda-crt,
# nvidia-nvvm, with nvidia-cuda-runtime, nvidia-cublas, nvidia-cusolver for
# headers and libraries) in the repo's .venv or in $PYTHON's site-packages.
# Links cudart, cublas and cusolver from the same toolkit, with an rpath of
# $ORIGIN plus the library directories used, so the result loads where it
# was built and next to a copy of those libraries.
#
# Environment:
#   NVCC, CUDA_HOME       pick the compiler / toolkit explicitly
#   GNLP_CUDA_ARCHS       SM versions, default "80 90" (+ PTX of the last)
#   PYTHON                interpreter whose site-packages hold the wheels
#                         (default: .venv/bin/python, then python3)
#   NVCC_EXTRA            extra nvcc flags (e.g. -G for device debugging)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="${1:-$root/build}"
archs="${GNLP_CUDA_ARCHS:-80 90}"

die() { echo "cuda/build.sh: error: $*" >&2; exit 1; }

# ------------------------------------------------------------ find nvcc
nvcc="" toolkit="" wheel_root=""
if [[ -n "${NVCC:-}" ]]; then
    nvcc="$NVCC"
elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    nvcc="$CUDA_HOME/bin/nvcc"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    nvcc=/usr/local/cuda/bin/nvcc
elif command -v nvcc >/dev/null 2>&1; then
    nvcc="$(command -v nvcc)"
fi

site_dirs() {
    local py
    for py in "${PYTHON:-}" "$root/.venv/bin/python" python3; do
        if [[ -z "$py" ]] || ! command -v "$py" >/dev/null 2>&1; then continue; fi
        "$py" - <<'EOF' 2>/dev/null || true
import site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]:
    print(d)
EOF
    done
}

if [[ -z "$nvcc" ]]; then
    while IFS= read -r sp; do
        for cand in "$sp/nvidia/cu13/bin/nvcc" "$sp/nvidia/cuda_nvcc/bin/nvcc"; do
            if [[ -x "$cand" ]]; then
                nvcc="$cand"
                wheel_root="$sp/nvidia"
                break 2
            fi
        done
    done < <(site_dirs)
fi
[[ -n "$nvcc" ]] || die "no nvcc found. Install the CUDA toolkit (and set CUDA_HOME), or the PyPI
  compiler wheels into the repo's .venv:
    .venv/bin/pip install nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm \\
        nvidia-cuda-runtime nvidia-cublas nvidia-cusolver
  (the versions matching your PyTorch's CUDA, e.g. ==13.2.* for torch+cu132)"
toolkit="$(cd "$(dirname "$nvcc")/.." && pwd)"

# ------------------------------------------------------------ find headers and libraries
inc=() libdirs=()
add_dir() { # add_dir ARRAY DIR: append if it exists and is new
    local -n arr="$1"
    [[ -d "$2" ]] || return 0
    local d
    for d in "${arr[@]+"${arr[@]}"}"; do [[ "$d" == "$2" ]] && return 0; done
    arr+=("$2")
}
add_dir inc "$toolkit/include"
for d in "$toolkit/lib64" "$toolkit/lib" "$toolkit/targets/$(uname -m)-linux/lib"; do add_dir libdirs "$d"; done
if [[ -n "$wheel_root" ]]; then
    # cu13 wheels share one tree (nvidia/cu13); cu12 ones have a tree each
    for w in cu13 cuda_runtime cublas cusolver cuda_nvcc cuda_crt cuda_cccl; do
        add_dir inc "$wheel_root/$w/include"
        add_dir libdirs "$wheel_root/$w/lib"
    done
fi

# A library as a path: libNAME.so if present, else its versioned file
# (the PyPI wheels ship only libNAME.so.MAJOR).
find_lib() {
    local name="$1" d f
    for d in "${libdirs[@]}"; do
        [[ -e "$d/lib$name.so" ]] && { echo "$d/lib$name.so"; return 0; }
    done
    for d in "${libdirs[@]}"; do
        for f in "$d/lib$name.so".[0-9]*; do
            [[ -e "$f" ]] && { echo "$f"; return 0; }
        done
    done
    return 1
}
libs=()
for name in cudart cublas cusolver; do
    f="$(find_lib "$name")" || die "lib$name.so not found in: ${libdirs[*]} (install nvidia-${name/cudart/cuda-runtime} or the CUDA toolkit)"
    libs+=("$f")
done

# Linked as -L DIR -l:FILE (nvcc takes no versioned .so as an input file).
# shellcheck disable=SC2016 # $ORIGIN is for the dynamic loader, not the shell
rpath='$ORIGIN' linkflags=()
for f in "${libs[@]}"; do
    d="$(dirname "$f")"
    linkflags+=("-L$d" "-l:$(basename "$f")")
    [[ ":$rpath:" == *":$d:"* ]] || rpath="$rpath:$d"
done

gencode=()
last=""
for a in $archs; do
    gencode+=("-gencode" "arch=compute_$a,code=sm_$a")
    last="$a"
done
[[ -n "$last" ]] || die "GNLP_CUDA_ARCHS is empty"
gencode+=("-gencode" "arch=compute_$last,code=compute_$last")

mkdir -p "$out_dir"
tmp="$(mktemp "$out_dir/.libgnlp_cuda.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

incflags=()
for d in "${inc[@]}"; do incflags+=("-I$d"); done

echo "cuda/build.sh: $("$nvcc" --version | tail -n 2 | head -n 1)"
echo "cuda/build.sh: nvcc $nvcc (archs: $archs)"
set -x
# shellcheck disable=SC2086 # NVCC_EXTRA is a list of flags
"$nvcc" -std=c++17 -O3 --fmad=false -lineinfo -Xcompiler -fPIC,-Wall \
    -shared -cudart none "${gencode[@]}" "${incflags[@]}" ${NVCC_EXTRA:-} \
    -o "$tmp" "$here/gnlp_cuda.cu" "${linkflags[@]}" -Xlinker "-rpath,$rpath"
{ set +x; } 2>/dev/null
mv -f "$tmp" "$out_dir/libgnlp_cuda.so"
trap - EXIT
echo "cuda/build.sh: built $out_dir/libgnlp_cuda.so"
