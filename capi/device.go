package main

/*
#include <stdint.h>
#include <string.h>
#include "gradnormlorp.h"
*/
import "C"

import (
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/cuda"
	"github.com/gradnormlorp/gradnormlorp/cuda/devinfo"
)

// copyCString writes s, truncated and NUL-terminated, into a C char array.
func copyCString(dst []C.char, s string) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(dst))
	n := copy(b[:len(b)-1], s)
	b[n] = 0
}

//export gnlp_device_info
func gnlp_device_info(index C.int32_t, out *C.gnlp_gpu_info) C.gnlp_status {
	return run(func() error {
		if out == nil {
			return nullError("out")
		}
		info, err := devinfo.Query(int(index))
		if err != nil {
			return err
		}
		var c C.gnlp_gpu_info
		copyCString(c.name[:], info.Name)
		copyCString(c.uuid[:], info.UUID)
		copyCString(c.driver_version[:], info.DriverVersion)
		c.cuda_driver_version = C.int32_t(info.CUDADriverVersion)
		c.device_count = C.int32_t(info.DeviceCount)
		c.compute_major = C.int32_t(info.ComputeMajor)
		c.compute_minor = C.int32_t(info.ComputeMinor)
		c.memory_total = C.int64_t(info.MemoryTotal)
		c.memory_used = C.int64_t(info.MemoryUsed)
		c.memory_free = C.int64_t(info.MemoryFree)
		*out = c
		return nil
	})
}

//export gnlp_cuda_scratch
func gnlp_cuda_scratch(index C.int32_t, release C.int32_t, reserved, inUse, peak *C.int64_t) C.gnlp_status {
	return run(func() error {
		if reserved == nil || inUse == nil || peak == nil {
			return nullError("reserved, in_use or peak")
		}
		if index < 0 {
			return core.Errorf(core.CodeDevice, "CUDA device index %d (must be >= 0)", int32(index))
		}
		b, err := cuda.New(int(index), nil)
		if err != nil {
			return err
		}
		r, u, p, err := b.ScratchPool(release != 0)
		if err != nil {
			return err
		}
		*reserved, *inUse, *peak = C.int64_t(r), C.int64_t(u), C.int64_t(p)
		return nil
	})
}
