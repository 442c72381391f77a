package optim

import (
	"bufio"
	"encoding/gob"
	"errors"
	"io"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// checkpoint is the saved form of an optimizer: every group's Config (so
// a schedule's learning rate resumes too, as with PyTorch's
// load_state_dict) and every parameter's step and state bytes.
type checkpoint struct {
	Configs []Config
	Params  []savedParam
}

type savedParam struct {
	Name    string
	Group   int
	DType   core.DType
	Shape   []int
	Step    int64
	Buffers [][]byte // in layout order; empty before the first step
}

// checkpointMagic starts every checkpoint; its version changes whenever
// the encoded form does.
const checkpointMagic = "gradnormlorp/gotch optimizer state v1\n"

// Save writes the optimizer's state to path (atomically: a crash leaves
// the old file).
func (o *Optimizer) Save(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	if err := o.Encode(w); err != nil {
		tmp.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Load restores the state written by Save for an optimizer over the same
// parameters (names, shapes, dtypes and state layouts must match). On
// error nothing changes.
func (o *Optimizer) Load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := o.Decode(bufio.NewReader(f)); err != nil {
		return core.Errorf(core.CodeOf(err), "%s: %w", path, err)
	}
	return nil
}

// Encode writes the optimizer's state to w.
func (o *Optimizer) Encode(w io.Writer) error {
	if _, err := io.WriteString(w, checkpointMagic); err != nil {
		return err
	}
	c := checkpoint{Configs: o.configs}
	for _, p := range o.params {
		sp := savedParam{Name: p.name, Group: p.group, DType: p.dtype, Shape: p.shape, Step: p.step}
		if p.step > 0 {
			for i, s := range p.specs {
				sp.Buffers = append(sp.Buffers, unsafe.Slice((*byte)(p.state[i].Data), s.Bytes()))
			}
		}
		c.Params = append(c.Params, sp)
	}
	return gob.NewEncoder(w).Encode(&c)
}

// Decode reads state written by Encode (see Load).
func (o *Optimizer) Decode(r io.Reader) error {
	magic := make([]byte, len(checkpointMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != checkpointMagic {
		return core.Errorf(core.CodeInvalidArgument, "not an optimizer checkpoint of this version (want a file starting %q)", checkpointMagic)
	}
	var c checkpoint
	if err := gob.NewDecoder(r).Decode(&c); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return core.Errorf(core.CodeInvalidArgument, "optimizer checkpoint is truncated")
		}
		return core.Errorf(core.CodeInvalidArgument, "not an optimizer checkpoint: %v", err)
	}
	if err := o.check(&c); err != nil {
		return err
	}
	copy(o.configs, c.Configs)
	for i := range o.params {
		p, sp := &o.params[i], &c.Params[i]
		p.step = sp.Step
		for k, b := range sp.Buffers {
			copy(unsafe.Slice((*byte)(p.state[k].Data), len(b)), b)
		}
	}
	return nil
}

// check verifies that c fits this optimizer's parameters and layouts.
func (o *Optimizer) check(c *checkpoint) error {
	bad := func(format string, args ...any) error {
		return core.Errorf(core.CodeInvalidArgument, "optimizer checkpoint does not fit this optimizer: "+format, args...)
	}
	if len(c.Configs) != len(o.configs) {
		return bad("%d groups, this optimizer has %d", len(c.Configs), len(o.configs))
	}
	for g, cfg := range c.Configs {
		if err := cfg.Validate(); err != nil {
			return bad("group %d: %v", g, err)
		}
	}
	if len(c.Params) != len(o.params) {
		return bad("%d parameters, this optimizer has %d", len(c.Params), len(o.params))
	}
	for i, p := range o.params {
		sp := c.Params[i]
		if sp.Name != p.name || sp.Group != p.group {
			return bad("parameter %d is %q in group %d, here %q in group %d", i, sp.Name, sp.Group, p.name, p.group)
		}
		if sp.DType != p.dtype || !core.Shape(sp.Shape).Equal(p.shape) {
			return bad("parameter %q is %v %v, here %v %v", p.name, sp.DType, core.Shape(sp.Shape), p.dtype, p.shape)
		}
		specs, err := core.Layout(sp.DType, sp.Shape, c.Configs[sp.Group])
		if err != nil {
			return bad("parameter %q: %v", p.name, err)
		}
		if !sameLayout(specs, p.specs) {
			return bad("parameter %q has another state layout (rank, proj_type, optim_bits or refresh differ)", p.name)
		}
		if sp.Step < 0 || (sp.Step == 0) != (len(sp.Buffers) == 0) {
			return bad("parameter %q has step %d with %d state buffers", p.name, sp.Step, len(sp.Buffers))
		}
		if len(sp.Buffers) == 0 {
			continue
		}
		if len(sp.Buffers) != len(specs) {
			return bad("parameter %q has %d state buffers, want %d", p.name, len(sp.Buffers), len(specs))
		}
		for k, s := range specs {
			if len(sp.Buffers[k]) != s.Bytes() {
				return bad("state %s of parameter %q has %d bytes, want %d", s.Name, p.name, len(sp.Buffers[k]), s.Bytes())
			}
		}
	}
	return nil
}

func sameLayout(a, b []core.BufferSpec) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].DType != b[i].DType || !a[i].Shape.Equal(b[i].Shape) {
			return false
		}
	}
	return true
}
