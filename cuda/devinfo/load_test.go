package devinfo

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLibraryLoadsWithBindNow builds libgradnormlorp.so, checks that it has
// no undefined nvml* symbols, and loads it from a C program with RTLD_NOW
// and with LD_BIND_NOW=1: on a machine without the NVIDIA driver
// gnlp_device_info must answer GNLP_ERR_NO_DRIVER, "no NVIDIA driver".
func TestLibraryLoadsWithBindNow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole library (-short)")
	}
	cc, err := exec.LookPath(envOr("CC", "cc"))
	if err != nil {
		t.Skip("no C compiler")
	}
	tmp := t.TempDir()
	lib := filepath.Join(tmp, "libgradnormlorp.so")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	build := exec.Command(gobin, "build", "-buildmode=c-shared", "-o", lib, "../../capi")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildmode=c-shared: %v\n%s", err, out)
	}

	f, err := elf.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.DynamicSymbols()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var undefined []string
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF && strings.HasPrefix(s.Name, "nvml") {
			undefined = append(undefined, s.Name)
		}
	}
	if len(undefined) > 0 {
		t.Fatalf("%d undefined nvml symbols (run go generate ./cuda/devinfo): %v", len(undefined), undefined[:min(5, len(undefined))])
	}

	prog := filepath.Join(tmp, "load_now")
	if out, err := exec.Command(cc, "-std=c99", "-Wall", "-I../../include", "-o", prog, "testdata/load_now.c", "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	for _, mode := range []struct {
		name string
		args []string
		env  []string
	}{
		{"RTLD_NOW", []string{lib}, nil},
		{"LD_BIND_NOW=1", []string{lib, "lazy"}, []string{"LD_BIND_NOW=1"}},
	} {
		cmd := exec.Command(prog, mode.args...)
		cmd.Env = append(os.Environ(), mode.env...)
		out, err := cmd.CombinedOutput()
		got := strings.TrimSpace(string(out))
		if err != nil {
			t.Fatalf("%s: %v: %s", mode.name, err, got)
		}
		t.Logf("%s: %s", mode.name, got)
		if strings.HasPrefix(got, "status 0:") {
			continue // a machine with a driver
		}
		if !strings.HasPrefix(got, "status 14: no NVIDIA driver") {
			t.Errorf("%s: want GNLP_ERR_NO_DRIVER (14) \"no NVIDIA driver\", got %q", mode.name, got)
		}
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
