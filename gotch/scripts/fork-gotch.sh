#!/usr/bin/env bash
# Makes the CPU-only fork of gotch that gotch/go.mod's replace directive
# points at. Upstream libtch/lib.go links CUDA libraries (-lcuda -lcudart
# -lcublas -lcudnn ... -ltorch_cuda) that a CPU libtorch lacks, and
# `go build -overlay` refuses files in the module cache, so the module is
# copied (hard links where possible: no extra disk) and lib.go replaced.
# The include and library paths of libtorch come from CGO_CXXFLAGS and
# CGO_LDFLAGS (see the Makefile), not from ${SRCDIR}: an absolute source
# path in the cgo flags would key Go's build cache to one checkout.
# usage: fork-gotch.sh DEST
set -euo pipefail

dest=${1:?usage: fork-gotch.sh DEST}
module=github.com/sugarme/gotch@v0.9.1
marker=$dest/.gradnormlorp-fork

if [ -f "$marker" ] && cmp -s "$marker" "$0"; then
    exit 0
fi

src=$(cd / && go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "error: go mod download $module gave no directory" >&2; exit 1; }

echo ">> forking $module into $dest (CPU-only libtch link flags)"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -al "$src" "$dest" 2>/dev/null || cp -r "$src" "$dest"
# Only the copied directories are made writable: the files may be links
# into the module cache, whose read-only mode they share.
find "$dest" -type d -exec chmod u+w {} +
rm -f "$dest/libtch/lib.go" # a hard link into the read-only module cache
cat > "$dest/libtch/lib.go" <<'GO'
// CPU-only fork made by gradnormlorp's gotch/scripts/fork-gotch.sh. The
// torch wheel's libtorch uses the pre-C++11 ABI; -O1 -g0 compiles the
// generated wrapper in less than half the time of upstream's -O3 -g.

package libtch

// #cgo LDFLAGS: -lstdc++ -ltorch_cpu -lc10
// #cgo CFLAGS: -O1 -g0 -Wall -Wno-unused-variable -Wno-deprecated-declarations -Wno-sign-compare -Wno-unused-function
// #cgo CFLAGS: -D_GLIBCXX_USE_CXX11_ABI=0
// #cgo CXXFLAGS: -std=c++17 -O1 -g0 -D_GLIBCXX_USE_CXX11_ABI=0
import "C"
GO
cp "$0" "$marker"
