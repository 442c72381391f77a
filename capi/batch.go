package main

import (
	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// stepAll steps CPU items: cpu.Backend.StepBatch validates every item
// (gradients included) before changing any, then applies them in parallel,
// largest first, with pooled workspaces; the steady state allocates
// nothing.
func stepAll(items []core.Item) error {
	if i, err := (cpu.Backend{}).StepBatch(items); err != nil {
		return atItem(items, i, err)
	}
	return nil
}

// atItem locates an error in a batch of more than one item.
func atItem(items []core.Item, i int, err error) error {
	if len(items) == 1 {
		return err
	}
	return core.Errorf(core.CodeOf(err), "items[%d]: %s", i, err.Error())
}
