package core

import (
	"math"
	"testing"
)

func TestPyFloatWritesFloatsAsPythonDoes(t *testing.T) {
	for v, want := range map[float64]string{
		0.001: "0.001", -0.001: "-0.001", 1: "1.0", -1: "-1.0", 0: "0.0", 1e-8: "1e-08", 1e16: "1e+16",
		123456.5: "123456.5", 1e39: "1e+39", math.NaN(): "nan", math.Inf(1): "inf", math.Inf(-1): "-inf",
	} {
		if got := pyFloat(v); got != want {
			t.Errorf("pyFloat(%v) = %q, want %q", v, got, want)
		}
	}
}
