package main

import (
	"strings"
	"testing"
)

// TestMirrorsAreCurrent fails when a mirror of the header is stale (run
// `make abi`).
func TestMirrorsAreCurrent(t *testing.T) {
	stale, err := run("../..", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) > 0 {
		t.Fatalf("stale mirrors of include/gradnormlorp.h: %s (run `make abi`)", strings.Join(stale, ", "))
	}
}

// TestEveryConfigFieldNeedsADefault: an option added to gnlp_config
// without its GNLP_DEFAULT_ is refused.
func TestEveryConfigFieldNeedsADefault(t *testing.T) {
	_, err := parse(`typedef enum gnlp_status { GNLP_OK = 0 } gnlp_status;
typedef enum gnlp_dtype { GNLP_FLOAT32 = 0 } gnlp_dtype;
typedef enum gnlp_proj_type { GNLP_PROJ_STD = 0 } gnlp_proj_type;
typedef enum gnlp_refresh { GNLP_REFRESH_SVD = 0 } gnlp_refresh;
typedef enum gnlp_compensation { GNLP_COMPENSATION_NONE = 0 } gnlp_compensation;
typedef struct gnlp_config { double lr; int32_t dummy; } gnlp_config;
#define GNLP_DEFAULT_LR 1e-3
`)
	if err == nil || !strings.Contains(err.Error(), "gnlp_config.dummy has no #define GNLP_DEFAULT_DUMMY") {
		t.Fatalf("got %v", err)
	}
}

func TestCamel(t *testing.T) {
	for in, want := range map[string]string{"INVALID_ARGUMENT": "InvalidArgument", "update_proj_gap": "UpdateProjGap", "lr": "LR", "BFLOAT16": "BFloat16", "CUDA": "CUDA"} {
		if got := camel(in); got != want {
			t.Errorf("camel(%q) = %q, want %q", in, got, want)
		}
	}
}
