package main

import "testing"

func TestDeviceStatusCodesMatchTheCUDABackend(t *testing.T) {
	for name, p := range deviceEnumPairs() {
		if p[0] != p[1] {
			t.Errorf("%s: header %d, package cuda %d", name, p[0], p[1])
		}
	}
}
