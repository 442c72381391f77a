package optim

import (
	"cmp"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// Config holds the hyperparameters of one group: core's Config, whose
// zero Rank means plain AdamW.
type Config = core.Config

// DefaultConfig follows torch.optim.AdamW and galore_torch.GaLoreAdamW;
// set Rank to project the group's matrices.
func DefaultConfig() Config { return core.DefaultConfig() }

// Group is a set of parameters that share a Config, like a PyTorch param
// group. Names (optional, one per parameter) label errors and checkpoints;
// by default parameter i of group g is "g<g>.<i>".
type Group struct {
	Params []*ts.Tensor
	Names  []string
	Config Config
}

// Optimizer is GradNormLoRP for gotch: 2-D parameters of groups with a
// Rank are trained by weight-normalised low-rank projected Adam, the
// rest by AdamW. It steps the tensors' memory in place on the CPU and is
// not safe for concurrent use.
type Optimizer struct {
	configs []Config
	params  []param

	// Reused by every Step: the steady state allocates nothing.
	items []core.Item
	owner []int         // items[i] steps params[owner[i]]
	grads []lib.Ctensor // grad handles to free after the step
	// Result slot of libtch's generated calls, an allocation of its own:
	// cgo's pointer check scans the whole object an argument points into.
	out *lib.Ctensor
	// Shape scratch of inspect, for the same reason.
	dims *[2]int64
}

// param is one parameter with its state. The state is laid out when the
// optimizer is built and initialised from the parameter's values at its
// first step (step 0 means not yet).
type param struct {
	t     *ts.Tensor
	name  string
	what  string // "parameter <name>", for errors, made once
	group int
	dtype core.DType
	shape core.Shape
	specs []core.BufferSpec
	state []core.Tensor
	bufs  [][]uint64 // the state's memory, 8-byte aligned
	step  int64
}

var backend = cpu.Backend{}

// New builds an optimizer over the given groups. Every parameter must be
// a dense CPU tensor of float32, bfloat16 or float16 with 1 or 2
// dimensions, and appear once.
func New(groups ...Group) (*Optimizer, error) {
	o := &Optimizer{out: new(lib.Ctensor), dims: new([2]int64)}
	seen := make(map[lib.Ctensor]string)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for g, grp := range groups {
		if grp.Names != nil && len(grp.Names) != len(grp.Params) {
			return nil, core.Errorf(core.CodeInvalidArgument, "group %d has %d names for %d parameters", g, len(grp.Names), len(grp.Params))
		}
		if err := grp.Config.Validate(); err != nil {
			return nil, core.Errorf(core.CodeOf(err), "group %d: %w", g, err)
		}
		o.configs = append(o.configs, grp.Config)
		for i, t := range grp.Params {
			name := fmt.Sprintf("g%d.%d", g, i)
			if grp.Names != nil {
				name = grp.Names[i]
			}
			p, err := newParam(t, name, g, grp.Config, o.dims)
			if err != nil {
				return nil, err
			}
			c := lib.Ctensor(t.Ctensor())
			if other, dup := seen[c]; dup {
				return nil, core.Errorf(core.CodeInvalidArgument, "parameter %q is also %q: each parameter may appear once", name, other)
			}
			seen[c] = name
			o.params = append(o.params, p)
		}
	}
	return o, nil
}

// newParam checks t and lays out its state under cfg.
func newParam(t *ts.Tensor, name string, group int, cfg Config, dims *[2]int64) (param, error) {
	what := fmt.Sprintf("parameter %q", name)
	if t == nil || t.Ctensor() == nil {
		return param{}, core.Errorf(core.CodeNullPointer, "%s is nil", what)
	}
	v, err := inspect(lib.Ctensor(t.Ctensor()), what, false, dims)
	if err != nil {
		return param{}, err
	}
	shape := v.shape()
	specs, err := core.Layout(v.dtype, shape, cfg)
	if err != nil {
		return param{}, core.Errorf(core.CodeOf(err), "%s: %w", what, err)
	}
	p := param{t: t, name: name, what: what, group: group, dtype: v.dtype, shape: shape, specs: specs}
	p.state = make([]core.Tensor, len(specs))
	p.bufs = make([][]uint64, len(specs))
	for i, s := range specs {
		p.bufs[i] = make([]uint64, (s.Bytes()+7)/8)
		p.state[i] = core.Tensor{Data: unsafe.Pointer(&p.bufs[i][0]), DType: s.DType, Shape: s.Shape}
	}
	return p, nil
}

// FromVarStore builds an optimizer over the trainable variables of vs,
// ordered by name. Variables for which project(name) is true get cfg (so
// matrices are projected when cfg.Rank > 0); the others get AdamW with
// cfg's Adam settings. A nil project selects every 2-D variable.
// Variables added to vs later are not seen.
func FromVarStore(vs *nn.VarStore, cfg Config, project func(name string) bool) (*Optimizer, error) {
	// Variables() gives names with handle copies; TrainableVariables()
	// the live tensors. They meet on the C tensor pointer.
	names := make(map[lib.Ctensor]string)
	for name, t := range vs.Variables() {
		names[lib.Ctensor(t.Ctensor())] = name
	}
	type named struct {
		name string
		t    *ts.Tensor
	}
	var vars []named
	for _, t := range vs.TrainableVariables() {
		vars = append(vars, named{names[lib.Ctensor(t.Ctensor())], t})
	}
	slices.SortFunc(vars, func(a, b named) int { return cmp.Compare(a.name, b.name) })

	adamw := cfg
	adamw.Rank = 0
	groups := []Group{{Config: cfg}, {Config: adamw}}
	for _, v := range vars {
		g := 1
		if (project == nil && v.t.Dim() == 2) || (project != nil && project(v.name)) {
			g = 0
		}
		groups[g].Params = append(groups[g].Params, v.t)
		groups[g].Names = append(groups[g].Names, v.name)
	}
	return New(groups...)
}

// Step updates every parameter that has a gradient (as PyTorch skips
// parameters whose grad is None). All parameters and gradients are checked
// first, gradient finiteness included: on error nothing has changed.
func (o *Optimizer) Step() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer o.freeGrads()
	o.items, o.owner = o.items[:0], o.owner[:0]
	for i := range o.params {
		p := &o.params[i]
		w, g, ok, err := o.tensors(p)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		o.items = append(o.items, core.Item{Param: w, Grad: g, State: p.state, Config: o.configs[p.group], Step: p.step + 1})
		o.owner = append(o.owner, i)
	}
	// A parameter's first step initialises its state from its values. The
	// step counter moves only once the batch succeeds; a refused batch
	// returns fresh state to its zeros, as it was.
	for k, i := range o.owner {
		if p := &o.params[i]; p.step == 0 {
			if err := core.Init(backend, o.items[k].Param, p.state, o.configs[p.group]); err != nil {
				o.clearFresh()
				return core.Errorf(core.CodeOf(err), "%s: %w", p.what, err)
			}
		}
	}
	if err := backend.StepBatch(o.items); err != nil {
		o.clearFresh()
		return o.locate(err)
	}
	for _, i := range o.owner {
		o.params[i].step++
	}
	return nil
}

// clearFresh zeroes the state of the parameters of this step that had
// none yet.
func (o *Optimizer) clearFresh() {
	for _, i := range o.owner {
		if p := &o.params[i]; p.step == 0 {
			for _, b := range p.bufs {
				clear(b)
			}
		}
	}
}

// locate names the parameter of a batch error where core says which item
// failed.
func (o *Optimizer) locate(err error) error {
	k := -1
	var ie *core.ItemError
	if errors.As(err, &ie) {
		k, err = ie.Index, ie.Err
	} else if len(o.items) == 1 {
		k = 0
	}
	if k < 0 {
		return err
	}
	return core.Errorf(core.CodeOf(err), "%s: %w", o.params[o.owner[k]].what, err)
}

// handle is p's C tensor; a dropped tensor (MustDrop) has none.
func (p *param) handle() (lib.Ctensor, error) {
	c := lib.Ctensor(p.t.Ctensor())
	if c == nil {
		return nil, core.Errorf(core.CodeNullPointer, "%s was dropped (its tensor freed)", p.what)
	}
	return c, nil
}

// tensors reads p's parameter and gradient; ok is false when the
// parameter has no gradient. The gradient's handle is freed after the step.
func (o *Optimizer) tensors(p *param) (w, g core.Tensor, ok bool, err error) {
	c, err := p.handle()
	if err != nil {
		return w, g, false, err
	}
	what := p.what
	pv, err := inspect(c, what, false, o.dims)
	if err != nil {
		return w, g, false, err
	}
	if pv.dtype != p.dtype {
		return w, g, false, core.Errorf(core.CodeDType, "%s is %v now but was %v when the optimizer was built: its state is laid out for %v", what, pv.dtype, p.dtype, p.dtype)
	}
	if !pv.sameShape(p.shape) {
		return w, g, false, core.Errorf(core.CodeShape, "%s has shape %v now but %v when the optimizer was built: its state is laid out for %v", what, pv.shape(), p.shape, p.shape)
	}
	lib.AtgGrad(o.out, c)
	gc := *o.out
	if err := libtorchError(); err != nil {
		return w, g, false, core.Errorf(core.CodeInvalidArgument, "%s: %w", what, err)
	}
	o.grads = append(o.grads, gc)
	if !lib.AtDefined(gc) {
		return w, g, false, nil
	}
	gv, err := inspect(gc, what, true, o.dims)
	if err != nil {
		return w, g, false, err
	}
	if !gv.sameShape(p.shape) {
		return w, g, false, core.Errorf(core.CodeShape, "gradient of %s has shape %v, the parameter %v", what, gv.shape(), p.shape)
	}
	w = core.Tensor{Data: pv.data, DType: pv.dtype, Shape: p.shape}
	g = core.Tensor{Data: gv.data, DType: gv.dtype, Shape: p.shape}
	return w, g, true, nil
}

func (o *Optimizer) freeGrads() {
	for _, c := range o.grads {
		lib.AtFree(c)
	}
	clear(o.grads)
	o.grads = o.grads[:0]
}

// BackwardStep zeroes the gradients, backpropagates loss and steps, as
// gotch's nn.Optimizer.BackwardStep does.
func (o *Optimizer) BackwardStep(loss *ts.Tensor) error {
	if err := o.ZeroGrad(); err != nil {
		return err
	}
	if err := loss.Backward(); err != nil {
		return core.Errorf(core.CodeInvalidArgument, "backward: %v", libtorchMessage(err))
	}
	return o.Step()
}

// ZeroGrad sets every defined gradient to zero in place: the next
// backward accumulates into the same memory.
func (o *Optimizer) ZeroGrad() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer o.freeGrads()
	for i := range o.params {
		p := &o.params[i]
		c, err := p.handle()
		if err != nil {
			return err
		}
		lib.AtgGrad(o.out, c)
		gc := *o.out
		o.grads = append(o.grads, gc)
		if !lib.AtDefined(gc) {
			continue
		}
		lib.AtgZero_(o.out, gc)
		o.grads = append(o.grads, *o.out)
		if err := libtorchError(); err != nil {
			return core.Errorf(core.CodeInvalidArgument, "zeroing the gradient of %s: %w", p.what, err)
		}
	}
	return nil
}

// SetLR sets the learning rate of every group, for schedules. An invalid
// rate is refused and nothing changes.
func (o *Optimizer) SetLR(lr float64) error {
	lrs := make([]float64, len(o.configs))
	for i := range lrs {
		lrs[i] = lr
	}
	return o.SetLRs(lrs)
}

// SetLRs sets each group's learning rate.
func (o *Optimizer) SetLRs(lrs []float64) error {
	if len(lrs) != len(o.configs) {
		return core.Errorf(core.CodeInvalidArgument, "got %d learning rates for %d groups", len(lrs), len(o.configs))
	}
	for g, lr := range lrs {
		c := o.configs[g]
		c.LR = lr
		if err := c.Validate(); err != nil {
			return core.Errorf(core.CodeOf(err), "group %d: %w", g, err)
		}
	}
	for g, lr := range lrs {
		o.configs[g].LR = lr
	}
	return nil
}

// LRs returns each group's learning rate.
func (o *Optimizer) LRs() []float64 {
	lrs := make([]float64, len(o.configs))
	for g, c := range o.configs {
		lrs[g] = c.LR
	}
	return lrs
}

// StateBytes is the size of the optimizer's state: every buffer of every
// parameter, as laid out by core.
func (o *Optimizer) StateBytes() int64 {
	var n int64
	for _, p := range o.params {
		for _, s := range p.specs {
			n += int64(s.Bytes())
		}
	}
	return n
}

// AdamWStateBytes is what AdamW's state would take for the same
// parameters: two float32 moments per element.
func (o *Optimizer) AdamWStateBytes() int64 {
	var n int64
	for _, p := range o.params {
		n += 8 * int64(p.shape.Numel())
	}
	return n
}
