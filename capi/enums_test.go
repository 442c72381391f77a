package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHeaderEnumsMatchCore(t *testing.T) {
	for name, pair := range enumPairs() {
		assert.Equal(t, pair[0], pair[1], name)
	}
}

func TestDefaultConfigRoundTrips(t *testing.T) {
	c := gnlp_config_default()
	cfg, err := configFromC(&c)
	assert.NoError(t, err)
	assert.Equal(t, 1e-3, cfg.LR)
	assert.Equal(t, 200, cfg.UpdateProjGap)
	assert.True(t, cfg.CorrectBias)
}
