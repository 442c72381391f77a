package cpu

import (
	"runtime"
	"sync"
)

// minParallelElems is the work below which a pass stays on one goroutine:
// spawning costs more than it saves.
const minParallelElems = 1 << 15

// parallelRows runs fn over [0, n) rows split into contiguous chunks, one per
// core, when n*cols elements make it worth it.
func parallelRows(n, cols int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 || n*cols < minParallelElems {
		fn(0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
