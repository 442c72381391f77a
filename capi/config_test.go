package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestDefaultConfigIsTheHeaders: gnlp_config_default() is the header's
// GNLP_DEFAULT_* values, field by field, and round-trips through core.
func TestDefaultConfigIsTheHeaders(t *testing.T) {
	c := gnlp_config_default()
	assert.Equal(t, headerDefaults(), c)
	cfg, err := configFromC(&c)
	assert.NoError(t, err)
	assert.Equal(t, configToC(cfg), c)
}
