package core

import (
	"fmt"
	"math"
)

// ProjType chooses which side(s) of a gradient matrix are projected.
// Values equal gnlp_proj_type.
type ProjType int32

const (
	ProjStd        ProjType = 0 // the smaller side: right if m >= n, else left
	ProjReverseStd ProjType = 1 // the larger side
	ProjRight      ProjType = 2
	ProjLeft       ProjType = 3
	ProjFull       ProjType = 4
)

var projTypeNames = [...]string{"std", "reverse_std", "right", "left", "full"}

func (p ProjType) String() string {
	if p >= 0 && int(p) < len(projTypeNames) {
		return projTypeNames[p]
	}
	return fmt.Sprintf("proj_type(%d)", int32(p))
}

// ParseProjType maps a GaLore proj_type name to its value.
func ParseProjType(name string) (ProjType, error) {
	for i, n := range projTypeNames {
		if n == name {
			return ProjType(i), nil
		}
	}
	return 0, Errorf(CodeUnknownOption, "unknown proj_type %q (want one of std, reverse_std, right, left, full)", name)
}

// RefreshMode chooses how a projector refresh finds the top-r singular
// subspace of the weight-norm gradient. Values equal gnlp_config.refresh.
type RefreshMode int32

const (
	// RefreshSVD is the exact SVD (the default).
	RefreshSVD RefreshMode = 0
	// RefreshSubspace is subspace iteration warm-started from the previous
	// projector (see refresh.go). The first refresh of a parameter (step 1)
	// is exact, and backends without the Refresher primitives use the exact
	// SVD throughout.
	RefreshSubspace RefreshMode = 1
)

var refreshNames = [...]string{"svd", "subspace"}

func (r RefreshMode) String() string {
	if r >= 0 && int(r) < len(refreshNames) {
		return refreshNames[r]
	}
	return fmt.Sprintf("refresh(%d)", int32(r))
}

// ParseRefresh maps a refresh name ("svd", "subspace") to its value.
func ParseRefresh(name string) (RefreshMode, error) {
	for i, n := range refreshNames {
		if n == name {
			return RefreshMode(i), nil
		}
	}
	return 0, Errorf(CodeUnknownOption, "unknown refresh %q (want svd or subspace)", name)
}

// Config holds the hyperparameters of one step. Rank 0 means plain AdamW.
type Config struct {
	LR            float64
	Beta1, Beta2  float64
	Eps           float64
	WeightDecay   float64
	Scale         float64
	Rank          int
	UpdateProjGap int
	ProjType      ProjType
	CorrectBias   bool
	OptimBits     int
	Refresh       RefreshMode
}

// DefaultConfig follows torch.optim.AdamW for the Adam hyperparameters and
// galore_torch.GaLoreAdamW for the projection ones.
func DefaultConfig() Config {
	return Config{
		LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 1e-2,
		Scale: 1, Rank: 0, UpdateProjGap: 200, ProjType: ProjStd,
		CorrectBias: true, OptimBits: 32,
	}
}

// Validate checks every hyperparameter and names the first bad one.
func (c Config) Validate() error {
	finiteNonNeg := []struct {
		name string
		v    float64
	}{{"lr", c.LR}, {"eps", c.Eps}, {"weight_decay", c.WeightDecay}}
	for _, f := range finiteNonNeg {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return Errorf(CodeInvalidArgument, "invalid %s: %v (must be finite and >= 0)", f.name, f.v)
		}
	}
	for _, b := range []struct {
		name string
		v    float64
	}{{"beta1", c.Beta1}, {"beta2", c.Beta2}} {
		if !(b.v >= 0 && b.v < 1) {
			return Errorf(CodeInvalidArgument, "invalid %s: %v (must be in [0, 1))", b.name, b.v)
		}
	}
	if math.IsNaN(c.Scale) || math.IsInf(c.Scale, 0) {
		return Errorf(CodeInvalidArgument, "invalid scale: %v (must be finite)", c.Scale)
	}
	if c.Rank < 0 {
		return Errorf(CodeInvalidArgument, "invalid rank: %d (must be >= 0; 0 means no projection)", c.Rank)
	}
	if c.Rank > 0 && c.UpdateProjGap < 1 {
		return Errorf(CodeInvalidArgument, "invalid update_proj_gap: %d (must be >= 1)", c.UpdateProjGap)
	}
	if c.ProjType < ProjStd || c.ProjType > ProjFull {
		return Errorf(CodeUnknownOption, "unknown proj_type %d (want 0..4: std, reverse_std, right, left, full)", int32(c.ProjType))
	}
	if c.Refresh != RefreshSVD && c.Refresh != RefreshSubspace {
		return Errorf(CodeUnknownOption, "unknown refresh %d (want 0: svd, 1: subspace)", int32(c.Refresh))
	}
	if c.OptimBits != 32 && c.OptimBits != 8 && c.OptimBits != 4 {
		return Errorf(CodeUnknownOption, "unsupported optim_bits %d (supported: 32, 8, 4)", c.OptimBits)
	}
	return nil
}

// adamParams are the scalars of step `step` (1-based).
func (c Config) adamParams(step int64) AdamParams {
	stepSize := c.LR
	if c.CorrectBias {
		bc1 := 1 - math.Pow(c.Beta1, float64(step))
		bc2 := 1 - math.Pow(c.Beta2, float64(step))
		stepSize = c.LR * math.Sqrt(bc2) / bc1
	}
	return NewAdamParams(c.Beta1, c.Beta2, c.Eps, stepSize, 1-c.LR*c.WeightDecay)
}
