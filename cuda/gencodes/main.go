// Command gencodes writes cuda/quant_codes.h from core/quant (run by
// `go generate ./cuda` in the repository root, or `go run ./gencodes` in
// cuda/).
package main

import (
	"log"
	"os"

	"github.com/gradnormlorp/gradnormlorp/cuda"
)

func main() {
	if err := os.WriteFile("quant_codes.h", []byte(cuda.QuantCodesHeader()), 0o644); err != nil {
		log.Fatal(err)
	}
}
