package cpu

import (
	"fmt"
	"math/bits"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Parallel loops run on a fixed set of helper goroutines shared by every
// caller, and the calling goroutine takes part itself. A loop wakes only
// helpers that are idle at that moment, so nested loops (a batch of items
// whose items run parallel GEMMs) never oversubscribe the cores: when all
// helpers are busy the caller simply runs every unit itself, and as helpers
// fall idle towards the end of a batch, inner loops pick them up.
//
// Nothing here allocates in the steady state: a loop's description is a
// pointer to a pooled struct implementing units, and waiting uses a
// WaitGroup embedded in a pooled loop.

// units is a piece of parallel work: Run(i) processes unit i of n. Units are
// independent and claimed dynamically, in order. (core.Work is one.)
type units interface {
	Run(i int)
}

// loop is one parallel loop in flight.
type loop struct {
	work units
	n    int64
	next atomic.Int64
	wg   sync.WaitGroup
	// panicked is the first unit's panic, caught on whichever goroutine ran
	// it and raised again on the caller's: a panic on a helper goroutine
	// cannot be recovered by anyone and would kill the host process.
	panicked atomic.Pointer[unitPanic]
}

// unitPanic is a panic of one unit with the stack where it happened.
type unitPanic struct {
	value any
	stack []byte
}

func (p *unitPanic) String() string { return fmt.Sprintf("%v\n%s", p.value, p.stack) }

// drain claims and runs units until none are left (or one has panicked).
func (l *loop) drain() {
	for l.panicked.Load() == nil {
		i := l.next.Add(1) - 1
		if i >= l.n {
			return
		}
		l.runUnit(int(i))
	}
}

func (l *loop) runUnit(i int) {
	defer func() {
		if r := recover(); r != nil {
			l.panicked.CompareAndSwap(nil, &unitPanic{value: r, stack: debug.Stack()})
		}
	}()
	l.work.Run(i)
}

var (
	idle      = make(chan *loop) // unbuffered: a send succeeds only into an idle helper
	loops     = sync.Pool{New: func() any { return new(loop) }}
	helpersMu sync.Mutex
	helpers   atomic.Int32 // helper goroutines started
)

// ensureHelpers starts helpers until there are n of them.
func ensureHelpers(n int) {
	helpersMu.Lock()
	for int(helpers.Load()) < n {
		helpers.Add(1)
		go func() {
			for l := range idle {
				l.drain()
				l.wg.Done()
			}
		}()
	}
	helpersMu.Unlock()
}

// threads is the limit SetThreads set (0: none).
var threads atomic.Int32

// SetThreads limits every parallel loop to n goroutines, the caller
// included (n <= 0: GOMAXPROCS, the default). Loops already running keep
// their helpers; the next loop follows the new limit.
func SetThreads(n int) {
	threads.Store(int32(max(n, 0)))
}

// Threads is how many goroutines a parallel loop may use now.
func Threads() int { return workers() }

// workers is how many goroutines (the caller included) a loop may use.
func workers() int {
	if n := int(threads.Load()); n > 0 {
		return min(n, runtime.GOMAXPROCS(0))
	}
	return runtime.GOMAXPROCS(0)
}

// parallelFor runs w.Run(i) for i in [0, n), on the caller and on the
// helpers that are idle, and returns when all units are done. A panic in a
// unit stops the loop from claiming more units and is raised again on the
// calling goroutine once the units in flight have finished.
func parallelFor(n int, w units) {
	if n <= 0 {
		return
	}
	want := min(workers(), n) - 1
	if want <= 0 {
		for i := 0; i < n; i++ {
			w.Run(i) // a panic here is already on the caller's goroutine
		}
		return
	}
	if int(helpers.Load()) < want {
		ensureHelpers(want)
	}
	l := loops.Get().(*loop)
	l.work, l.n = w, int64(n)
	l.next.Store(0)
	for range want {
		l.wg.Add(1)
		select {
		case idle <- l:
			continue
		default:
			l.wg.Done()
		}
		break // no helper idle now; the others are busy too
	}
	l.drain()
	l.wg.Wait()
	l.work = nil
	p := l.panicked.Swap(nil)
	loops.Put(l)
	if p != nil {
		panic(p) // on the caller's goroutine, where capi and core recover it
	}
}

// chunked adapts a row pass to units: unit i covers rows
// [i*chunk, min((i+1)*chunk, rows)).
type chunked struct {
	rows, chunk int
}

// split chooses a chunk of rows for a pass over rows x cols elements:
// about 64 Ki elements per unit, at least one row, and a single unit for
// small passes.
func split(rows, cols int) chunked {
	const target = 1 << 16
	if rows*cols <= target || workers() == 1 {
		return chunked{rows, rows}
	}
	chunk := max(1, target/max(cols, 1))
	return chunked{rows, chunk}
}

func (c chunked) count() int { return (c.rows + c.chunk - 1) / c.chunk }

func (c chunked) bounds(i int) (lo, hi int) {
	lo = i * c.chunk
	return lo, min(lo+c.chunk, c.rows)
}

// pooled takes a *T from p, or a new one.
func pooled[T any](p *sync.Pool) *T {
	if v, ok := p.Get().(*T); ok {
		return v
	}
	return new(T)
}

// Scratch buffers are pooled by size class (powers of two), so requests of
// very different sizes (GEMM packing, step workspaces) do not evict each
// other and the steady state allocates nothing.
var scratchPools [48]sync.Pool

// getScratch returns a buffer of n float32s; give it back with putScratch.
func getScratch(n int) *[]float32 {
	class := bits.Len(uint(max(n, 1) - 1))
	if p, ok := scratchPools[class].Get().(*[]float32); ok {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n, 1<<class)
	return &s
}

func putScratch(p *[]float32) {
	scratchPools[bits.Len(uint(cap(*p)-1))].Put(p)
}
