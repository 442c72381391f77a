package core

import (
	"errors"
	"fmt"
)

// Code classifies an error. The values equal the gnlp_status codes of
// include/gradnormlorp.h so the C API can pass them through unchanged.
type Code int32

// Code values, mirrored from include/gradnormlorp.h (abi_mirrors_test.go
// keeps them equal).
const (
	CodeInvalidArgument    Code = 1
	CodeNullPointer        Code = 2
	CodeMisaligned         Code = 3
	CodeShape              Code = 4
	CodeDType              Code = 5
	CodeNotContiguous      Code = 6
	CodeNonFinite          Code = 7
	CodeUnknownOption      Code = 8
	CodeDevice             Code = 9
	CodeBackendUnavailable Code = 10
	CodeBufferTooSmall     Code = 11
	CodeNumerical          Code = 12
	CodeInternal           Code = 13
)

// Error is an error with a Code. Its message names the offending input.
// Err, when set, is the error it wraps.
type Error struct {
	Code Code
	Msg  string
	Err  error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error with a formatted message; a %w verb wraps its
// operand as fmt.Errorf does.
func Errorf(code Code, format string, args ...any) error {
	wrapped := fmt.Errorf(format, args...)
	return &Error{Code: code, Msg: wrapped.Error(), Err: errors.Unwrap(wrapped)}
}

// CodeOf returns the Code of the first *Error in err's chain, or
// CodeInternal for foreign errors.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
