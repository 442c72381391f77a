package core

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ProjType chooses which side(s) of a gradient matrix are projected. Its
// values (ProjStd: the smaller side, right if m >= n, else left;
// ProjReverseStd: the larger side; ProjRight, ProjLeft, ProjFull) are
// gnlp_proj_type's, generated into abi_gen.go.
type ProjType int32

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
// subspace of the weight-norm gradient: RefreshSVD, the exact SVD (the
// default), or RefreshSubspace, subspace iteration warm-started from the
// previous projector (see refresh.go; the first refresh of a parameter,
// step 1, is exact, and backends without the Refresher primitives use the
// exact SVD throughout). Values are gnlp_refresh's (abi_gen.go).
type RefreshMode int32

var refreshNames = [...]string{"svd", "subspace"}

func (r RefreshMode) String() string {
	if r >= 0 && int(r) < len(refreshNames) {
		return refreshNames[r]
	}
	return fmt.Sprintf("refresh(%d)", int32(r))
}

// CompensationMode chooses what happens to the part of the direction
// gradient outside the projector's subspace: CompensationNone drops it
// (SPEC section 1, as GaLore); CompensationResidual adds it back, scaled
// and growth-limited as Fira does (compensation.go). Values are
// gnlp_compensation's (abi_gen.go).
type CompensationMode int32

var compensationNames = [...]string{"none", "residual"}

func (c CompensationMode) String() string {
	if c >= 0 && int(c) < len(compensationNames) {
		return compensationNames[c]
	}
	return fmt.Sprintf("compensation(%d)", int32(c))
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
	Compensation  CompensationMode
}

// DefaultConfig follows torch.optim.AdamW for the Adam hyperparameters and
// galore_torch.GaLoreAdamW for the projection ones.
// (the header's GNLP_DEFAULT_* values).
func DefaultConfig() Config {
	return Config{
		LR: defaultLR, Beta1: defaultBeta1, Beta2: defaultBeta2, Eps: defaultEps, WeightDecay: defaultWeightDecay,
		Scale: defaultScale, Rank: defaultRank, UpdateProjGap: defaultUpdateProjGap, ProjType: defaultProjType,
		CorrectBias: defaultCorrectBias != 0, OptimBits: defaultOptimBits, Refresh: defaultRefresh,
		Compensation: defaultCompensation,
	}
}

// Validate checks every hyperparameter and names the first bad one with
// its value (floats as Python writes them, since most callers come from
// Python). Values must also fit float32, in which steps compute.
func (c Config) Validate() error {
	for _, f := range [...]struct {
		name string
		v    float64
	}{{"lr", c.LR}, {"eps", c.Eps}, {"weight_decay", c.WeightDecay}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return Errorf(CodeInvalidArgument, "invalid %s: %s (must be a finite number >= 0)", f.name, pyFloat(f.v))
		}
		if f.v > math.MaxFloat32 {
			return Errorf(CodeInvalidArgument, "invalid %s: %s (too large for float32)", f.name, pyFloat(f.v))
		}
	}
	for i, b := range [...]float64{c.Beta1, c.Beta2} {
		if !(b >= 0 && b < 1) {
			return Errorf(CodeInvalidArgument, "invalid beta parameter at index %d: %s (beta%d must be in [0, 1))", i, pyFloat(b), i+1)
		}
	}
	if math.IsNaN(c.Scale) || math.IsInf(c.Scale, 0) {
		return Errorf(CodeInvalidArgument, "invalid scale: %s (must be a finite number)", pyFloat(c.Scale))
	}
	if math.Abs(c.Scale) > math.MaxFloat32 {
		return Errorf(CodeInvalidArgument, "invalid scale: %s (too large for float32)", pyFloat(c.Scale))
	}
	if c.Rank < 0 {
		return Errorf(CodeInvalidArgument, "invalid rank: %d (must be >= 0; 0 means no projection)", c.Rank)
	}
	if c.Rank > 0 && c.UpdateProjGap < 1 {
		return Errorf(CodeInvalidArgument, "invalid update_proj_gap: %d (must be an int >= 1)", c.UpdateProjGap)
	}
	if c.ProjType < ProjStd || c.ProjType > ProjFull {
		return Errorf(CodeUnknownOption, "unknown proj_type %d (want 0..4: std, reverse_std, right, left, full)", int32(c.ProjType))
	}
	if c.Refresh != RefreshSVD && c.Refresh != RefreshSubspace {
		return Errorf(CodeUnknownOption, "unknown refresh %d (want 0: svd, 1: subspace)", int32(c.Refresh))
	}
	if c.Compensation != CompensationNone && c.Compensation != CompensationResidual {
		return Errorf(CodeUnknownOption, "unknown compensation %d (want 0: none, 1: residual)", int32(c.Compensation))
	}
	if c.OptimBits != 32 && c.OptimBits != 8 && c.OptimBits != 4 {
		return Errorf(CodeUnknownOption, "invalid optim_bits: %d (want 32, 8 or 4)", c.OptimBits)
	}
	return nil
}

// pyFloat formats v as Python's repr does: "0.001", "1.0", "1e-08",
// "1e+16", "nan", "inf".
func pyFloat(v float64) string {
	switch {
	case math.IsNaN(v):
		return "nan"
	case math.IsInf(v, 1):
		return "inf"
	case math.IsInf(v, -1):
		return "-inf"
	}
	if a := math.Abs(v); a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.FormatFloat(v, 'e', -1, 64)
	}
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
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
