package core

import "fmt"

// Code classifies an error. The values equal the gnlp_status codes of
// include/gradnormlorp.h so the C API can pass them through unchanged.
type Code int32

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
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the Code carried by err, or CodeInternal for foreign errors.
func CodeOf(err error) Code {
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return CodeInternal
}
