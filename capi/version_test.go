package main

import (
	"regexp"
	"testing"
)

// The version is read by setup.py and Python too: it must be one plain
// release number (PEP 440 public version), nothing around it.
func TestVersionIsARelease(t *testing.T) {
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$`).MatchString(version) {
		t.Fatalf("capi/VERSION holds %q, want a release number such as 1.2.3", version)
	}
}
