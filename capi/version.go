package main

import (
	_ "embed"
	"strings"
)

// versionFile is capi/VERSION, the project's one version number (it sits
// here because go:embed reads only files inside the package). setup.py puts
// it in the package metadata and ships it in the wheel; the Python package
// reads it as __version__ and checks at import that it equals gnlp_version().
//
//go:embed VERSION
var versionFile string

// version is the library version reported by gnlp_version.
var version = strings.TrimSpace(versionFile)
