package main

/*
#include <stdint.h>
#include "gradnormlorp.h"
*/
import "C"

import (
	"fmt"
	"os"
	"strconv"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// NumThreadsEnv sets the CPU worker pool's size when the library loads.
const NumThreadsEnv = "GNLP_NUM_THREADS"

func init() {
	if v, ok := os.LookupEnv(NumThreadsEnv); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "gradnormlorp: ignoring %s=%q (want an integer >= 0; 0 = one thread per core)\n", NumThreadsEnv, v)
			return
		}
		cpu.SetThreads(n)
	}
}

//export gnlp_abi_minor
func gnlp_abi_minor() C.int32_t { return C.GNLP_ABI_MINOR }

//export gnlp_set_num_threads
func gnlp_set_num_threads(n C.int32_t) C.gnlp_status {
	return run(func() error {
		if n < 0 {
			return core.Errorf(core.CodeInvalidArgument, "invalid number of threads: %d (must be >= 0; 0 = one per core)", int32(n))
		}
		cpu.SetThreads(int(n))
		return nil
	})
}

//export gnlp_num_threads
func gnlp_num_threads() C.int32_t { return C.int32_t(cpu.Threads()) }

//export gnlp_config_validate
func gnlp_config_validate(config *C.gnlp_config) C.gnlp_status {
	return run(func() error {
		_, err := configFromC(config)
		return err
	})
}
