package cpu

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// concurrency records how many units run at once.
type concurrency struct {
	active, peak atomic.Int32
}

func (c *concurrency) Run(int) {
	n := c.active.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	runtime.Gosched() // give other workers the chance to overlap
	c.active.Add(-1)
}

// TestSetThreadsOneMakesLoopsSerial: under SetThreads(1) no two units of
// any loop, nested loops included, ever run at once.
func TestSetThreadsOneMakesLoopsSerial(t *testing.T) {
	defer SetThreads(0)
	SetThreads(1)
	assert.Equal(t, 1, Threads())
	c := &concurrency{}
	parallelFor(64, c)
	assert.Equal(t, int32(1), c.peak.Load(), "units ran concurrently under SetThreads(1)")
	// Every loop of a step is bounded the same way, nested ones included.
	outer := &nested{inner: c}
	parallelFor(8, outer)
	assert.Equal(t, int32(1), c.peak.Load())
}

type nested struct{ inner *concurrency }

func (n *nested) Run(int) { parallelFor(8, n.inner) }

// TestParallelForRaisesUnitPanicOnCaller: a panic on a helper goroutine is
// raised again on the caller, where it can be recovered. (With one worker the
// caller runs unit 37 itself and the panic arrives unwrapped.)
func TestParallelForRaisesUnitPanicOnCaller(t *testing.T) {
	var got any
	func() {
		defer func() { got = recover() }()
		parallelFor(64, panicky{})
	}()
	require.NotNil(t, got)
	assert.Contains(t, fmt.Sprint(got), "unit 37")
}

type panicky struct{}

func (panicky) Run(i int) {
	if i == 37 {
		panic("unit 37")
	}
}
