// Package devinfo reports what the NVIDIA driver says about a GPU (name,
// memory, driver and CUDA driver versions) through NVML, using go-nvml.
//
// go-nvml leaves NVML's functions as undefined symbols for the dynamic
// loader; nvml_forwarders.c (generated, see gen/) defines them inside the
// library so that libgradnormlorp.so loads with RTLD_NOW on machines
// without a driver, where Query reports "no NVIDIA driver".
package devinfo

//go:generate go run ./gen

/*
#cgo LDFLAGS: -ldl -lpthread
*/
import "C"

import (
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Info describes one GPU.
type Info struct {
	Name, UUID                          string
	DriverVersion                       string
	CUDADriverVersion                   int // 1000*major + 10*minor
	DeviceCount                         int
	ComputeMajor, ComputeMinor          int
	MemoryTotal, MemoryUsed, MemoryFree int64
}

// Query asks NVML about GPU index (NVML's numbering).
func Query(index int) (Info, error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED {
			return Info{}, core.Errorf(core.CodeNoDriver, "no NVIDIA driver: NVML (libnvidia-ml.so.1) is not available (%s)", nvmlError(ret))
		}
		return Info{}, core.Errorf(core.CodeNoDriver, "no NVIDIA driver: NVML initialisation failed (%s)", nvmlError(ret))
	}
	defer nvml.Shutdown()
	var info Info
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return Info{}, core.Errorf(core.CodeNoDriver, "NVML cannot count GPUs (%s)", nvmlError(ret))
	}
	info.DeviceCount = count
	if index < 0 || index >= count {
		return Info{}, core.Errorf(core.CodeDevice, "GPU %d does not exist (NVML sees %d)", index, count)
	}
	dev, ret := nvml.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return Info{}, core.Errorf(core.CodeDevice, "NVML cannot open GPU %d (%s)", index, nvmlError(ret))
	}
	if info.Name, ret = dev.GetName(); ret != nvml.SUCCESS {
		return Info{}, core.Errorf(core.CodeDevice, "NVML: name of GPU %d: %s", index, nvmlError(ret))
	}
	info.UUID, _ = dev.GetUUID()
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return Info{}, core.Errorf(core.CodeDevice, "NVML: memory of GPU %d: %s", index, nvmlError(ret))
	}
	info.MemoryTotal, info.MemoryUsed, info.MemoryFree = int64(mem.Total), int64(mem.Used), int64(mem.Free)
	info.DriverVersion, _ = nvml.SystemGetDriverVersion()
	info.CUDADriverVersion, _ = nvml.SystemGetCudaDriverVersion_v2()
	info.ComputeMajor, info.ComputeMinor, _ = dev.GetCudaComputeCapability()
	return info, nil
}

func nvmlError(r nvml.Return) string { return strings.TrimSpace(r.Error()) }
