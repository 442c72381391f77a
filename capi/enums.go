package main

/*
#include "gradnormlorp.h"
*/
import "C"

import "github.com/gradnormlorp/gradnormlorp/core"

// enumPairs lists each header constant beside the core value it must equal,
// so a test catches the header and core drifting apart (values are passed
// through by plain conversion).
func enumPairs() map[string][2]int64 {
	return map[string][2]int64{
		"GNLP_ERR_INVALID_ARGUMENT":    {C.GNLP_ERR_INVALID_ARGUMENT, int64(core.CodeInvalidArgument)},
		"GNLP_ERR_NULL_POINTER":        {C.GNLP_ERR_NULL_POINTER, int64(core.CodeNullPointer)},
		"GNLP_ERR_MISALIGNED":          {C.GNLP_ERR_MISALIGNED, int64(core.CodeMisaligned)},
		"GNLP_ERR_SHAPE":               {C.GNLP_ERR_SHAPE, int64(core.CodeShape)},
		"GNLP_ERR_DTYPE":               {C.GNLP_ERR_DTYPE, int64(core.CodeDType)},
		"GNLP_ERR_NOT_CONTIGUOUS":      {C.GNLP_ERR_NOT_CONTIGUOUS, int64(core.CodeNotContiguous)},
		"GNLP_ERR_NONFINITE":           {C.GNLP_ERR_NONFINITE, int64(core.CodeNonFinite)},
		"GNLP_ERR_UNKNOWN_OPTION":      {C.GNLP_ERR_UNKNOWN_OPTION, int64(core.CodeUnknownOption)},
		"GNLP_ERR_DEVICE":              {C.GNLP_ERR_DEVICE, int64(core.CodeDevice)},
		"GNLP_ERR_BACKEND_UNAVAILABLE": {C.GNLP_ERR_BACKEND_UNAVAILABLE, int64(core.CodeBackendUnavailable)},
		"GNLP_ERR_BUFFER_TOO_SMALL":    {C.GNLP_ERR_BUFFER_TOO_SMALL, int64(core.CodeBufferTooSmall)},
		"GNLP_ERR_NUMERICAL":           {C.GNLP_ERR_NUMERICAL, int64(core.CodeNumerical)},
		"GNLP_ERR_INTERNAL":            {C.GNLP_ERR_INTERNAL, int64(core.CodeInternal)},
		"GNLP_FLOAT32":                 {C.GNLP_FLOAT32, int64(core.Float32)},
		"GNLP_BFLOAT16":                {C.GNLP_BFLOAT16, int64(core.BFloat16)},
		"GNLP_FLOAT16":                 {C.GNLP_FLOAT16, int64(core.Float16)},
		"GNLP_UINT8":                   {C.GNLP_UINT8, int64(core.Uint8)},
		"GNLP_PROJ_STD":                {C.GNLP_PROJ_STD, int64(core.ProjStd)},
		"GNLP_PROJ_REVERSE_STD":        {C.GNLP_PROJ_REVERSE_STD, int64(core.ProjReverseStd)},
		"GNLP_PROJ_RIGHT":              {C.GNLP_PROJ_RIGHT, int64(core.ProjRight)},
		"GNLP_PROJ_LEFT":               {C.GNLP_PROJ_LEFT, int64(core.ProjLeft)},
		"GNLP_PROJ_FULL":               {C.GNLP_PROJ_FULL, int64(core.ProjFull)},
	}
}
