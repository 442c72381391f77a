// Package cuda is the CUDA backend of gradnormlorp as seen from Go: it
// loads libgnlp_cuda.so (built from this directory by build.sh) with dlopen
// on first use and implements core.Backend by calling its functions through
// dlsym'd pointers. Nothing here links against CUDA, so libgradnormlorp.so
// loads and runs its CPU backend on machines without CUDA.
//
// Library search order: $GNLP_CUDA_LIBRARY (only it, when set);
// libgnlp_cuda.so next to the library this package is linked into
// (libgradnormlorp.so, found with dladdr); the default loader path.
package cuda

/*
#cgo CFLAGS: -I${SRCDIR} -D_GNU_SOURCE
#cgo LDFLAGS: -ldl
#include "goapi.h"
*/
import "C"

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// LibraryEnv names the environment variable that overrides where
// libgnlp_cuda.so is loaded from.
const LibraryEnv = "GNLP_CUDA_LIBRARY"

// LibraryName is the file name of the CUDA backend library.
const LibraryName = "libgnlp_cuda.so"

// TF32Env, when "1", lets the projections use TF32 tensor cores (inputs
// rounded to 10 mantissa bits, float32 accumulation): several times the
// float32 GEMM rate on A100/H100 at about 1e-3 relative error.
const TF32Env = "GNLP_CUDA_TF32"

// deprecatedEnv maps each variable to its former name, still read.
var deprecatedEnv = map[string]string{
	LibraryEnv: "GRADNORMLORP_CUDA_LIBRARY",
	TF32Env:    "GRADNORMLORP_CUDA_TF32",
}

// getenv reads an environment variable, or its former name with a
// deprecation line on stderr.
func getenv(name string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	old := deprecatedEnv[name]
	v := os.Getenv(old)
	if v != "" {
		fmt.Fprintf(os.Stderr, "gradnormlorp: $%s is deprecated, set $%s instead\n", old, name)
	}
	return v
}

// Library is a loaded libgnlp_cuda.so.
type Library struct {
	api  *C.gnlp_cuda_api // C memory, never freed (the library stays loaded)
	Path string
	tf32 bool
}

var (
	loadMu sync.Mutex
	loaded *Library
)

// Load returns the CUDA backend library, loading it on first use. A failed
// load is not remembered: a later call tries again (after `make cuda`).
func Load() (*Library, error) {
	loadMu.Lock()
	defer loadMu.Unlock()
	if loaded != nil {
		return loaded, nil
	}
	var tried []string
	for _, path := range candidates() {
		lib, err := open(path)
		if err == nil {
			loaded = lib
			return lib, nil
		}
		tried = append(tried, err.Error())
	}
	return nil, core.Errorf(core.CodeBackendUnavailable,
		"CUDA tensor, but the CUDA backend library %s could not be loaded (%s). Build it with `make cuda` "+
			"(or cuda/build.sh) in the gradnormlorp source tree, which puts it next to libgradnormlorp.so, "+
			"or set %s to its path", LibraryName, strings.Join(tried, "; "), LibraryEnv)
}

// candidates lists the paths to try, in order.
func candidates() []string {
	if env := getenv(LibraryEnv); env != "" {
		return []string{env}
	}
	var out []string
	if self := C.gnlp_cuda_self_path(); self != nil {
		out = append(out, filepath.Join(filepath.Dir(C.GoString(self)), LibraryName))
	}
	return append(out, LibraryName)
}

func open(path string) (*Library, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	api := (*C.gnlp_cuda_api)(C.calloc(1, C.size_t(unsafe.Sizeof(C.gnlp_cuda_api{}))))
	var e errText
	if C.gnlp_cuda_open(cpath, api, e.ptr(), e.len()) != 0 {
		C.free(unsafe.Pointer(api))
		return nil, fmt.Errorf("%s", e.String())
	}
	return &Library{api: api, Path: path, tf32: getenv(TF32Env) == "1"}, nil
}

// errText receives a message from the library.
type errText [512]C.char

func (e *errText) ptr() *C.char  { return &e[0] }
func (e *errText) len() C.size_t { return C.size_t(len(e)) }
func (e *errText) String() string {
	return C.GoString(e.ptr())
}

// check turns a status of the library into an error with its message.
func (e *errText) check(rc C.int) error {
	if rc == 0 {
		return nil
	}
	return core.Errorf(core.Code(rc), "%s", e.String())
}

// DeviceCount is the number of CUDA devices the process sees.
func (l *Library) DeviceCount() (int, error) {
	var e errText
	var n C.int32_t
	if err := e.check(C.gc_device_count(l.api, &n, e.ptr(), e.len())); err != nil {
		return 0, err
	}
	return int(n), nil
}
