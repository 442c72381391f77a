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

// header is the gob-encoded head of a checkpoint: every group's Config (so
// a schedule's learning rate resumes too, as with PyTorch's
// load_state_dict) and every parameter's identity and step. The state
// buffers follow it raw, in parameter and layout order, for the parameters
// with a step (streamed: saving copies nothing).
type header struct {
	Configs []Config
	Params  []savedParam
}

type savedParam struct {
	Name  string
	Group int
	DType core.DType
	Shape []int
	Step  int64 // 0: no state saved
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
	h := header{Configs: o.configs}
	for _, p := range o.params {
		h.Params = append(h.Params, savedParam{Name: p.name, Group: p.group, DType: p.dtype, Shape: p.shape, Step: p.step})
	}
	if err := gob.NewEncoder(w).Encode(&h); err != nil {
		return err
	}
	for i := range o.params {
		if p := &o.params[i]; p.step > 0 {
			for k, st := range p.state {
				if _, err := w.Write(unsafe.Slice((*byte)(st.Data), p.specs[k].Bytes())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Decode reads state written by Encode (see Load). Everything is read and
// checked before anything changes.
func (o *Optimizer) Decode(r io.Reader) error {
	truncated := core.Errorf(core.CodeInvalidArgument, "optimizer checkpoint is truncated")
	magic := make([]byte, len(checkpointMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != checkpointMagic {
		return core.Errorf(core.CodeInvalidArgument, "not an optimizer checkpoint of this version (want a file starting %q)", checkpointMagic)
	}
	// A ByteReader keeps gob from reading ahead into the buffers.
	br := bufio.NewReader(r)
	var h header
	if err := gob.NewDecoder(br).Decode(&h); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return truncated
		}
		return core.Errorf(core.CodeInvalidArgument, "not an optimizer checkpoint: %v", err)
	}
	if err := o.check(&h); err != nil {
		return err
	}
	staged := make([][][]byte, len(o.params))
	for i, p := range o.params {
		if h.Params[i].Step == 0 {
			continue
		}
		for _, s := range p.specs {
			b := make([]byte, s.Bytes())
			if _, err := io.ReadFull(br, b); err != nil {
				return truncated
			}
			staged[i] = append(staged[i], b)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return core.Errorf(core.CodeInvalidArgument, "optimizer checkpoint has data past its last state buffer")
	}
	copy(o.configs, h.Configs)
	for i := range o.params {
		p := &o.params[i]
		p.step = h.Params[i].Step
		for k, b := range staged[i] {
			copy(unsafe.Slice((*byte)(p.state[k].Data), len(b)), b)
		}
	}
	return nil
}

// check verifies that h fits this optimizer's parameters and layouts.
func (o *Optimizer) check(h *header) error {
	bad := func(format string, args ...any) error {
		return core.Errorf(core.CodeInvalidArgument, "optimizer checkpoint does not fit this optimizer: "+format, args...)
	}
	if len(h.Configs) != len(o.configs) {
		return bad("%d groups, this optimizer has %d", len(h.Configs), len(o.configs))
	}
	for g, cfg := range h.Configs {
		if err := cfg.Validate(); err != nil {
			return bad("group %d: %v", g, err)
		}
	}
	if len(h.Params) != len(o.params) {
		return bad("%d parameters, this optimizer has %d", len(h.Params), len(o.params))
	}
	for i, p := range o.params {
		sp := h.Params[i]
		if sp.Name != p.name || sp.Group != p.group {
			return bad("parameter %d is %q in group %d, here %q in group %d", i, sp.Name, sp.Group, p.name, p.group)
		}
		if sp.DType != p.dtype || !core.Shape(sp.Shape).Equal(p.shape) {
			return bad("parameter %q is %v %v, here %v %v", p.name, sp.DType, core.Shape(sp.Shape), p.dtype, p.shape)
		}
		specs, err := core.Layout(sp.DType, sp.Shape, h.Configs[sp.Group])
		if err != nil {
			return bad("parameter %q: %v", p.name, err)
		}
		if !sameLayout(specs, p.specs) {
			return bad("parameter %q has another state layout (rank, proj_type, optim_bits or refresh differ)", p.name)
		}
		if sp.Step < 0 {
			return bad("parameter %q has step %d", p.name, sp.Step)
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
