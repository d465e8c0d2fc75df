package proto

import "fmt"

// InputError says what is wrong with a message or an input and where. Its
// text is meant for the person who sent it.
type InputError struct {
	Msg string
}

func (e *InputError) Error() string { return e.Msg }

func errorf(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}
