//go:build gnlpfuzz

package main

import "testing"

// FuzzABI drives gnlp_step_batch, gnlp_step, gnlp_state_layout and
// gnlp_config_validate with decoded inputs (shapes, dtypes, strides,
// devices, configs, state layouts, weights and gradients with NaN, Inf and
// huge values, aliased items) and checks the header's promises
// (runFuzzCase). `make fuzz` runs it for FUZZTIME; Go's fuzzer runs cases
// in worker processes, so a crash is caught and its input saved under
// testdata/fuzz/FuzzABI, which plain `go test -tags gnlpfuzz` replays.
func FuzzABI(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{0, 1, 0, 1, 10, 10},
		{0, 2, 1, 1, 30, 20, 4, 2, 1, 0},
		{1, 0, 0, 1, 20, 20, 3, 0, 3, 1, 1},
		{2, 0, 1, 1, 5, 5, 2, 0, 0, 0, 0, 0},
		{3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 9},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if problem := runFuzzCase(data); problem != "" {
			t.Fatal(problem)
		}
	})
}
