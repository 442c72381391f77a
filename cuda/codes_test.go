package cuda

import (
	"os"
	"testing"
)

// TestQuantCodesHeaderIsGenerated keeps the committed quant_codes.h equal
// to core/quant's tables (run `go generate ./cuda` after changing them).
func TestQuantCodesHeaderIsGenerated(t *testing.T) {
	got, err := os.ReadFile("quant_codes.h")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != QuantCodesHeader() {
		t.Fatal("cuda/quant_codes.h is stale: run `go generate ./cuda`")
	}
}
