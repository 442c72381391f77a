// Command gen writes cuda/devinfo/nvml_forwarders.c (run by
// `go generate ./cuda/devinfo`).
//
// Why: go-nvml calls NVML's C functions directly and links with
// --unresolved-symbols=ignore-in-object-files, leaving every nvml* symbol
// undefined in libgradnormlorp.so, to be bound from libnvidia-ml.so.1 once
// go-nvml has dlopen'ed it with RTLD_GLOBAL. Loading the library with
// RTLD_NOW or LD_BIND_NOW=1 then fails on any machine without the NVIDIA
// driver. The generated file defines each of those functions (hidden, so
// they resolve go-nvml's references inside the library and are not
// exported) as a forwarder to the same function in a lazily dlopen'ed
// libnvidia-ml.so.1, returning NVML_ERROR_LIBRARY_NOT_FOUND (or
// NVML_ERROR_FUNCTION_NOT_FOUND) when it is absent.
//
// The functions are those go-nvml's Go code calls (C.nvmlXxx(...)); their
// signatures come from go-nvml's nvml.h, with every parameter mapped to an
// ABI-identical C type (pointers and handles to void *, enums to int,
// integer typedefs to their integer type), so the generated file needs no
// NVML header. A by-value struct parameter would stop the generator.
package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

const module = "github.com/NVIDIA/go-nvml"

func main() {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", module).Output()
	if err != nil {
		log.Fatalf("go list -m %s: %v (is it in go.mod?)", module, err)
	}
	fields := strings.Fields(string(out))
	dir, version := fields[0], fields[1]
	pkg := filepath.Join(dir, "pkg", "nvml")

	used, err := calledFunctions(pkg)
	if err != nil {
		log.Fatal(err)
	}
	header, err := os.ReadFile(filepath.Join(pkg, "nvml.h"))
	if err != nil {
		log.Fatal(err)
	}
	src, err := generate(string(header), used, version)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("nvml_forwarders.c", src, 0o644); err != nil {
		log.Fatal(err)
	}
}

var callRE = regexp.MustCompile(`\bC\.(nvml\w+)\(`)

// calledFunctions lists the nvml functions go-nvml's non-test Go files call.
func calledFunctions(pkg string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(pkg, "*.go"))
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, m := range callRE.FindAllSubmatch(b, -1) {
			set[string(m[1])] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("no C.nvml* calls found in %s", pkg)
	}
	return names, nil
}

var (
	blockComment = regexp.MustCompile(`(?s)/\*.*?\*/`)
	lineComment  = regexp.MustCompile(`//[^\n]*`)
	preproc      = regexp.MustCompile(`(?m)^[ \t]*#.*(\\\n.*)*$`)
	enumTypedef  = regexp.MustCompile(`(?s)typedef\s+enum\s*\w*\s*\{[^}]*\}\s*(\w+)\s*;`)
	structBody   = regexp.MustCompile(`(?s)typedef\s+(struct|union)\s*\w*\s*\{`)
	ptrTypedef   = regexp.MustCompile(`typedef\s+struct\s+\w+\s*\*\s*(\w+)\s*;`)
	plainTypedef = regexp.MustCompile(`typedef\s+([\w\s]+?)\s+(\w+)\s*;`)
	onePointer   = regexp.MustCompile(`^\s*struct\s+\w+\s*\*\s*\w+\s*;\s*$`)
	protoRE      = regexp.MustCompile(`(?s)([\w\s\*]*?)\bDECLDIR\b([\w\s\*]*?)\b(nvml\w+)\s*\(([^;{}]*?)\)\s*;`)
)

// kind of a C type as far as the calling convention is concerned.
type ctype struct {
	c       string // the C type to declare
	struct_ bool   // passed by value as a struct: unsupported
}

// typeTable resolves NVML's typedef names.
func typeTable(h string) map[string]ctype {
	t := map[string]ctype{}
	for _, m := range enumTypedef.FindAllStringSubmatch(h, -1) {
		t[m[1]] = ctype{c: "int"}
	}
	for _, m := range ptrTypedef.FindAllStringSubmatch(h, -1) {
		t[m[1]] = ctype{c: "void *"}
	}
	// struct/union typedefs: find the name after the matching brace
	for _, loc := range structBody.FindAllStringIndex(h, -1) {
		depth, i := 0, loc[1]-1
		for ; i < len(h); i++ {
			if h[i] == '{' {
				depth++
			} else if h[i] == '}' {
				depth--
				if depth == 0 {
					break
				}
			}
		}
		body := h[loc[1]:i]
		rest := h[i+1:]
		if end := strings.IndexByte(rest, ';'); end >= 0 {
			name := strings.TrimSpace(rest[:end])
			if name != "" && !strings.ContainsAny(name, "*,") {
				t[name] = ctype{c: name, struct_: true}
				// go-nvml wraps handles as struct { struct X *handle; }: a
				// struct of one pointer is passed exactly like the pointer
				// (x86-64 SysV and AAPCS64 alike), so forward it as void *.
				if onePointer.MatchString(body) {
					t[name] = ctype{c: "void *"}
				}
			}
		}
	}
	// aliases, resolved until stable
	var aliases [][2]string
	for _, m := range plainTypedef.FindAllStringSubmatch(h, -1) {
		base := strings.Join(strings.Fields(m[1]), " ")
		if strings.HasPrefix(base, "struct") || strings.HasPrefix(base, "enum") || strings.HasPrefix(base, "union") {
			continue
		}
		aliases = append(aliases, [2]string{m[2], base})
	}
	for changed := true; changed; {
		changed = false
		for _, a := range aliases {
			if _, done := t[a[0]]; done {
				continue
			}
			if r, ok := resolve(t, a[1]); ok {
				t[a[0]] = r
				changed = true
			}
		}
	}
	return t
}

var integerTypes = map[string]bool{
	"int": true, "unsigned int": true, "unsigned": true, "long": true, "unsigned long": true,
	"long long": true, "unsigned long long": true, "short": true, "unsigned short": true,
	"char": true, "unsigned char": true, "signed char": true,
}

func resolve(t map[string]ctype, name string) (ctype, bool) {
	name = strings.Join(strings.Fields(strings.ReplaceAll(name, "const", "")), " ")
	if integerTypes[name] {
		return ctype{c: name}, true
	}
	r, ok := t[name]
	return r, ok
}

// paramType maps one declared parameter ("nvmlDevice_t device",
// "unsigned int *count", "void") to the C type of a forwarder.
func paramType(t map[string]ctype, decl string) (string, error) {
	decl = strings.TrimSpace(decl)
	if strings.Contains(decl, "*") || strings.Contains(decl, "[") {
		return "void *", nil
	}
	words := strings.Fields(strings.ReplaceAll(decl, "const", ""))
	if len(words) > 1 {
		words = words[:len(words)-1] // drop the parameter name
	}
	typ := strings.Join(words, " ")
	r, ok := resolve(t, typ)
	if !ok {
		return "", fmt.Errorf("unknown parameter type %q in %q", typ, decl)
	}
	if r.struct_ {
		return "", fmt.Errorf("struct %q passed by value in %q: not supported by the forwarders", typ, decl)
	}
	return r.c, nil
}

func generate(header string, used []string, version string) ([]byte, error) {
	h := blockComment.ReplaceAllString(header, "")
	h = lineComment.ReplaceAllString(h, "")
	h = preproc.ReplaceAllString(h, "")
	types := typeTable(h)
	type proto struct{ ret, args string }
	protos := map[string]proto{}
	for _, m := range protoRE.FindAllStringSubmatch(h, -1) {
		ret := strings.Join(strings.Fields(m[1]+" "+m[2]), " ")
		if _, seen := protos[m[3]]; !seen {
			protos[m[3]] = proto{ret, strings.Join(strings.Fields(m[4]), " ")}
		}
	}

	var b bytes.Buffer
	fmt.Fprintf(&b, `// Code generated by "go generate ./cuda/devinfo" (cuda/devinfo/gen) from %s %s; DO NOT EDIT.
//
// Hidden definitions of the %d NVML functions go-nvml calls, forwarding to
// libnvidia-ml.so.1 loaded on first use, so that libgradnormlorp.so has no
// undefined nvml* symbols and loads with RTLD_NOW on machines without the
// NVIDIA driver. See gen/main.go.

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#define GNLP_NVML_ERROR_LIBRARY_NOT_FOUND 12
#define GNLP_NVML_ERROR_FUNCTION_NOT_FOUND 13
#define GNLP_NVML_HIDDEN __attribute__((visibility("hidden")))

static void *gnlp_nvml_handle;
static pthread_once_t gnlp_nvml_once = PTHREAD_ONCE_INIT;

static void gnlp_nvml_open(void) { gnlp_nvml_handle = dlopen("libnvidia-ml.so.1", RTLD_LAZY | RTLD_LOCAL); }

// The address of NVML's function name, cached in *slot; NULL if NVML or
// the function is missing (*status says which).
static void *gnlp_nvml_sym(void **slot, const char *name, int *status) {
    void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (f != NULL) {
        return f;
    }
    pthread_once(&gnlp_nvml_once, gnlp_nvml_open);
    if (gnlp_nvml_handle == NULL) {
        *status = GNLP_NVML_ERROR_LIBRARY_NOT_FOUND;
        return NULL;
    }
    f = dlsym(gnlp_nvml_handle, name);
    if (f == NULL) {
        *status = GNLP_NVML_ERROR_FUNCTION_NOT_FOUND;
        return NULL;
    }
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
    return f;
}
`, module, version, len(used))

	for _, name := range used {
		p, ok := protos[name]
		if !ok {
			return nil, fmt.Errorf("go-nvml calls %s, which nvml.h does not declare", name)
		}
		var params, args []string
		if p.args != "" && p.args != "void" {
			for i, a := range strings.Split(p.args, ",") {
				typ, err := paramType(types, a)
				if err != nil {
					return nil, fmt.Errorf("%s: %v", name, err)
				}
				params = append(params, fmt.Sprintf("%s p%d", typ, i))
				args = append(args, fmt.Sprintf("p%d", i))
			}
		}
		var ret, fail string
		switch p.ret {
		case "nvmlReturn_t":
			ret, fail = "int", "status"
		case "const char*", "const char *", "const char * ", "const char":
			ret, fail = "const char *", `"NVML library not found (libnvidia-ml.so.1: no NVIDIA driver)"`
		default:
			return nil, fmt.Errorf("%s returns %q: no forwarder for that", name, p.ret)
		}
		if strings.HasPrefix(p.ret, "const char") {
			ret = "const char *"
		}
		decl := strings.Join(params, ", ")
		if decl == "" {
			decl = "void"
		}
		ptrType := fmt.Sprintf("%s (*)(%s)", ret, decl)
		fmt.Fprintf(&b, "\nGNLP_NVML_HIDDEN %s %s(%s) {\n", ret, name, decl)
		fmt.Fprintf(&b, "    static void *slot;\n    int status = 0;\n")
		fmt.Fprintf(&b, "    void *f = gnlp_nvml_sym(&slot, %q, &status);\n", name)
		fmt.Fprintf(&b, "    if (f == NULL) {\n        (void)status;\n        return %s;\n    }\n", fail)
		fmt.Fprintf(&b, "    return ((%s)f)(%s);\n}\n", ptrType, strings.Join(args, ", "))
	}
	return b.Bytes(), nil
}
