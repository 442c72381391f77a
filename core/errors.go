package core

import (
	"errors"
	"fmt"
)

// Code classifies an error. The values are the gnlp_status codes of
// include/gradnormlorp.h, so the C API passes them through unchanged.
type Code int32

// The Code values (CodeInvalidArgument, ...) are generated from
// include/gradnormlorp.h into abi_gen.go.

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
