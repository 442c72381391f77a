"""Packaging: one version everywhere, the sdist carries every file the Go
build reads (checked against `go list -deps`), the licence is in the
metadata, and a failed Go build reports Go's own error first.

The wheel itself (manylinux tag, installed without Go, training) is checked
by `make wheel-test` (scripts/wheel_test.sh), which CI runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

import gradnormlorp
from gradnormlorp import _version

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GO = shutil.which(os.environ.get("GO", "go"))
needs_go = pytest.mark.skipif(GO is None, reason="the Go toolchain is not on PATH")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_one_version_everywhere():
    version = read("capi/VERSION").strip()
    assert gradnormlorp.__version__ == version
    assert gradnormlorp.library_version() == version  # gnlp_version(), embedded from the same file


def test_a_library_of_another_version_is_refused_at_import():
    with pytest.raises(ImportError, match=r"is version .* but the Python package is version 0\.0\.0\.dev9.*make lib"):
        _version.check_library_version("0.0.0.dev9")


def clean_copy(dest):
    """The files a fresh clone of this working tree has: setuptools also puts
    into an sdist whatever a stale egg-info/SOURCES.txt lists, which would
    hide a gap in MANIFEST.in."""
    res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True)
    for rel in filter(None, res.stdout.decode().split("\0")):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
    return dest


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist of a clean copy of the tree, built by setuptools' PEP 517 hook (no Go needed)."""
    out = tmp_path_factory.mktemp("sdist")
    tree = clean_copy(out / "tree")
    code = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    res = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    path = out / res.stdout.strip().splitlines()[-1]
    with tarfile.open(path) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n[len(top) + 1 :] for n in tar.getnames() if n.startswith(top + "/")}
        tar.extractall(out / "src", filter="data")
    return names, out / "src" / top


def go_packages(goarch):
    """Our module's packages that `go build ./capi` compiles for goarch."""
    env = dict(os.environ, GOARCH=goarch, CGO_ENABLED="1")
    res = subprocess.run([GO, "list", "-deps", "-json", "./capi"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    dec, text, i, out = json.JSONDecoder(), res.stdout, 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        pkg, i = dec.raw_decode(text, i)
        if pkg.get("Module", {}).get("Main"):
            out.append(pkg)


def files_go_build_reads(goarch):
    """Source, assembly, cgo, header and embedded files of every package, the
    headers in their cgo -I folders inside the checkout, go.mod and go.sum."""
    files = {"go.mod", "go.sum"}
    kinds = ("GoFiles", "CgoFiles", "SFiles", "CFiles", "CXXFiles", "HFiles", "EmbedFiles", "SysoFiles")
    for pkg in go_packages(goarch):
        rel = os.path.relpath(pkg["Dir"], ROOT)
        files |= {os.path.join(rel, f) for kind in kinds for f in pkg.get(kind, [])}
        for flag in pkg.get("CgoCFLAGS") or []:
            inc = os.path.realpath(flag[2:]) if flag.startswith("-I") else None
            if inc and inc.startswith(ROOT + os.sep):
                files |= {os.path.relpath(os.path.join(inc, h), ROOT) for h in os.listdir(inc) if h.endswith(".h")}
    return files


@needs_go
@pytest.mark.parametrize("goarch", ["amd64", "arm64"])
def test_sdist_carries_every_file_go_build_reads(sdist, goarch):
    names, _ = sdist
    needed = files_go_build_reads(goarch)
    assert any(f.endswith(".s") for f in needed) or goarch != "amd64", "go list found no assembly: the test is blind"
    assert not sorted(needed - names), f"missing from the sdist (MANIFEST.in): {sorted(needed - names)}"


def test_sdist_carries_the_licence_and_its_metadata(sdist):
    names, src = sdist
    assert {"LICENSE", "capi/VERSION", "cuda/build.sh"} <= names
    pkg_info = (src / "PKG-INFO").read_text()
    assert "License-Expression: Apache-2.0" in pkg_info
    assert "License-File: LICENSE" in pkg_info
    assert "Apache License" in read("LICENSE") and "Version 2.0, January 2004" in read("LICENSE")


@needs_go
def test_a_failed_go_build_reports_gos_error_first(sdist, tmp_path):
    """Issue 18's sdist lacked core/cpu/*_amd64.s ("missing function body"):
    the build must fail with Go's own report in front, not with a guess
    about compilers or proxies."""
    _, src = sdist
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    os.remove(broken / "core" / "cpu" / "elem_amd64.s")
    code = "import sys, setuptools.build_meta as b; b.build_wheel(sys.argv[1])"
    env = dict(os.environ, GNLP_CUDA="0", GOARCH="amd64")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=broken, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    err = res.stderr
    ours = err.index("error: `")  # setup.py's line, naming the command
    go_says = err.find("# github.com/gradnormlorp/")  # Go's report of the failing package
    assert 0 <= go_says < ours, err[-3000:]
    assert "hint:" not in err and "C compiler" not in err and "proxy" not in err, err[-3000:]


def cli(*args):
    """`python -m gradnormlorp ARGS` on the in-tree package."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gradnormlorp", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_info_reports_versions_backends_and_gpus():
    res = cli("info", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["version"] == info["library"]["version"] == gradnormlorp.__version__
    assert info["library"]["path"] == gradnormlorp.library_path()
    assert info["library"]["abi"] == gradnormlorp.ABI_VERSION
    cuda = info["backends"]["cuda"]
    assert cuda["built"] == os.path.isfile(cuda["path"])
    gpus = info["gpus"]
    if gpus["driver"] is False:  # this machine has no NVIDIA driver: said so, not raised
        assert "no NVIDIA driver" in gpus["error"] and gpus["devices"] == []
        assert "GPU          no driver (" in cli("info").stdout
    else:
        assert gpus["driver"] and gpus["devices"][0]["memory_total"] > 0, gpus


def test_memory_and_unknown_commands():
    res = cli("memory", "--model", "llama-60m", "--rank", "128", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rank"] == 128
    res = cli("tarin")
    assert res.returncode == 2 and "unknown command 'tarin'" in res.stderr and "demo" in res.stderr
    assert cli().returncode == 2
    assert cli("--version").stdout.strip() == gradnormlorp.__version__
